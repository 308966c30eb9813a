"""`inferline serve --ray ADDRESS` end to end, on the tests' Ray instance: one replica of the default model
(registry version 1), real requests; a rolling update to version 2 under load; the replica scaled to two
by token load; one replica killed under load. The tests run in this order on one server."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.ray_cluster import RayCluster
from tests.registry.conftest import ADMIN_KEY, ServedRegistry, served_registry  # noqa: F401  (fixture)
from tests.server.conftest import ServerProcess, llm_deployment, start_server

pytestmark = pytest.mark.slow

DEPLOYMENT = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def ray_server(
    tmp_path_factory: pytest.TempPathFactory,
    served_registry: ServedRegistry,  # noqa: F811  (the fixture imported above)
    ray_cluster: RayCluster,
) -> Iterator[ServerProcess]:
    tmp_path: Path = tmp_path_factory.mktemp("ray-server")
    deployment = {
        **llm_deployment(kv_cache_bytes=32 << 20),
        "source": "registry:bot:1",
        # A low token target: a handful of concurrent requests is enough load for a second replica.
        "replicas": {
            "min": 1,
            "max": 2,
            "target_tokens": 100,
            "upscale_delay_s": 1,
            "downscale_delay_s": 600,
        },
        "resources": {"num_cpus": 0.5},
    }
    config = {
        "deployments": [deployment],
        "admin_api_keys": [ADMIN_KEY],
        "registry": {
            "trusted_public_keys": [str(served_registry.public_key)],
            "database_url": served_registry.database_url,
        },
    }
    server = start_server(config, tmp_path, ready_timeout_s=180, args=("--ray", ray_cluster.address))
    try:
        yield server
    finally:
        replicas = ray_cluster.replica_processes()
        assert server.stop() == 0, server.log()[-3000:]
        # On a cluster it did not start, the server deletes its own Serve application: no replica is left.
        _, alive = psutil.wait_procs(replicas, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], server.log()[-3000:]


def _cluster(server: ServerProcess) -> dict[str, Any]:
    response = httpx.get(
        f"{server.url}/admin/cluster", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )
    response.raise_for_status()
    view: dict[str, Any] = response.json()["deployments"][DEPLOYMENT]
    return view


def _chat(content: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {
        "model": "default",
        "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def test_chat_completions_are_served_by_ray_replicas_routed_by_prefix(ray_server: ServerProcess) -> None:
    answer = httpx.post(f"{ray_server.url}/v1/chat/completions", json=_chat("Say hello.", 8), timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    assert answer.headers["x-inferline-deployment"] == f"{DEPLOYMENT}@1"

    with httpx.stream(
        "POST", f"{ray_server.url}/v1/chat/completions", json=_chat("Say hello.", 6, stream=True), timeout=60
    ) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-1]), (
        "the stream carried no text"
    )

    before = _cluster(ray_server)["routing"]["decisions"].get("affinity", 0)
    for _ in range(3):  # the same prompt: its prefix lives on one replica, which gets it every time
        httpx.post(f"{ray_server.url}/v1/chat/completions", json=_chat("Say hello.", 2), timeout=60)
    view = _cluster(ray_server)
    assert view["status"] == "HEALTHY"
    assert view["replica_states"] == {"RUNNING": 1}
    assert view["routing"]["decisions"]["affinity"] == before + 3
    assert view["autoscaling"]["replicas_needed"] == 1
    assert view["autoscaling"]["reason"].endswith("tokens in flight, target 100")
    metrics = httpx.get(f"{ray_server.url}/metrics").text
    assert f'inferline_cluster_replicas{{deployment="{DEPLOYMENT}"}} 1.0' in metrics


def test_a_rolling_update_under_load_fails_no_request(ray_server: ServerProcess) -> None:
    async def client(client: httpx.AsyncClient, i: int, stop: asyncio.Event) -> list[tuple[int, str, bool]]:
        outcomes = []
        while not stop.is_set():
            body = _chat(f"Count to {i}.", 4, stream=i % 2 == 1)
            async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
                text = (await reply.aread()).decode()
            complete = "[DONE]" in text and '"error"' not in text if i % 2 else '"choices"' in text
            outcomes.append((reply.status_code, reply.headers.get("x-inferline-version", ""), complete))
        return outcomes

    async def update_under_load() -> tuple[httpx.Response, list[list[tuple[int, str, bool]]]]:
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=ray_server.url, timeout=120) as http:
            # Two clients: under the token target, so that the update alone changes the replicas.
            clients = [asyncio.create_task(client(http, i, stop)) for i in range(2)]
            await asyncio.sleep(1)
            swapped = await http.post(
                f"/admin/deployments/{DEPLOYMENT}/version",
                json={"version": "2"},
                headers={"authorization": f"Bearer {ADMIN_KEY}"},
            )
            await asyncio.sleep(2)  # requests after the update
            stop.set()
            return swapped, await asyncio.gather(*clients)

    swapped, outcomes = asyncio.run(update_under_load())
    assert swapped.status_code == 200, swapped.text
    every = [o for per_client in outcomes for o in per_client]
    assert all(status == 200 and complete for status, _, complete in every), (every, ray_server.log()[-3000:])
    assert {version for _, version, _ in every} == {"1", "2"}
    assert all(per_client[-1][1] == "2" for per_client in outcomes)


def test_token_load_adds_a_replica(ray_server: ServerProcess) -> None:
    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=ray_server.url, timeout=90) as client:
            return await asyncio.gather(*(_whole(client, i) for i in range(8)))

    started = time.monotonic()
    assert all(r.status_code == 200 for r in asyncio.run(load()))
    _wait_for_replicas(ray_server, 2)
    print(f"second replica serving {time.monotonic() - started:.1f} s after the load began")
    view = _cluster(ray_server)
    assert view["status"] == "HEALTHY"
    metrics = httpx.get(f"{ray_server.url}/metrics").text
    assert f'inferline_cluster_replicas{{deployment="{DEPLOYMENT}"}} 2.0' in metrics
    # The route's view shows the replicas and the autoscaler's reading too, beside its other figures.
    routes = httpx.get(f"{ray_server.url}/admin/routes", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    scaling = routes.json()["routes"][DEPLOYMENT]["arms"][DEPLOYMENT]["replicas"]
    assert scaling["num_replicas_routed"] == 2
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 2)
    assert scaling["reason"].endswith("tokens in flight, target 100")


def _wait_for_replicas(server: ServerProcess, num_replicas: int, replaced: set[str] | None = None) -> None:
    """Until Serve runs `num_replicas` replicas and the router sends to as many; with `replaced` (the ids
    before a replica died), until a new one is among them."""
    deadline = time.monotonic() + 120
    while True:
        view = _cluster(server)
        ids = set(view["routing"]["replicas"])
        running = view["replica_states"] == {"RUNNING": num_replicas} and len(ids) == num_replicas
        if running and (replaced is None or ids - replaced):
            return
        assert time.monotonic() < deadline, view
        time.sleep(0.5)


async def _whole(client: httpx.AsyncClient, i: int) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=_chat(f"Count to {i}.", 24))


async def _streamed(client: httpx.AsyncClient, i: int, started: asyncio.Event) -> list[str]:
    events = []
    body = {**_chat(f"Name {i} colours.", 24, True), "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line)
                started.set()
    return events


def test_a_replica_killed_under_load_fails_no_request_and_breaks_no_stream(
    ray_server: ServerProcess, ray_cluster: RayCluster
) -> None:
    _wait_for_replicas(ray_server, 2)

    async def load_and_kill() -> tuple[list[httpx.Response], list[list[str]]]:
        started = asyncio.Event()
        async with httpx.AsyncClient(base_url=ray_server.url, timeout=90) as client:
            whole = [asyncio.create_task(_whole(client, i)) for i in range(8)]
            streams = [asyncio.create_task(_streamed(client, i, started)) for i in range(4)]
            await asyncio.wait_for(started.wait(), 60)  # tokens are flowing: requests are mid-generation
            ray_cluster.replica_processes()[0].send_signal(signal.SIGKILL)
            return await asyncio.gather(*whole), await asyncio.gather(*streams)

    before = set(_cluster(ray_server)["routing"]["replicas"])
    killed_at = time.monotonic()
    whole, streams = asyncio.run(load_and_kill())
    # Every non-streamed request is answered: one that was on the dead replica ran again on the other.
    assert [r.status_code for r in whole] == [200] * 8, [r.text for r in whole if r.status_code != 200]
    assert all(r.json()["choices"][0]["message"]["content"] for r in whole)
    # Every stream ended whole (none hangs, none breaks): one cut off by the kill went on on the other
    # replica, which was given the tokens already sent; the client saw one stream and its usage.
    for events in streams:
        assert events[-1] == "data: [DONE]"
        frames = [json.loads(e[6:]) for e in events[:-1]]
        assert not [f for f in frames if "error" in f], frames
        text = "".join(f["choices"][0]["delta"].get("content", "") for f in frames if f["choices"])
        num_tokens = frames[-1]["usage"]["completion_tokens"]
        assert text
        assert 0 < num_tokens <= 24
        reasons = [c["finish_reason"] for f in frames for c in f["choices"] if c.get("finish_reason")]
        assert reasons in (["stop"], ["length"])  # one end: the resumed part did not end it twice
    # The kill landed on requests in flight (else this test would prove nothing).
    assert "trying another" in ray_server.log(), ray_server.log()[-3000:]
    print(f"{ray_server.log().count('resuming a stream')} of 4 streams resumed on the other replica")

    # The dead replica is replaced, and the deployment serves on two replicas again, a new one among them.
    _wait_for_replicas(ray_server, 2, replaced=before)
    replaced_s = time.monotonic() - killed_at
    print(f"replica replaced {replaced_s:.1f} s after the kill")
    answer = httpx.post(f"{ray_server.url}/v1/chat/completions", json=_chat("Say hello.", 4), timeout=60)
    assert answer.status_code == 200, answer.text
