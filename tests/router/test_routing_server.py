"""The router inside a real `inferline serve` process, in front of stub upstreams and of a second
inferline server: degradation, canary rollback, circuit breaking, quotas, budgets and the admin API,
as a client sees them over HTTP."""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from inferline.testing.stub_upstream import StubProcess
from tests.server.conftest import API_KEY, ServerProcess, start_server

ADMIN_KEY = "sk-admin"
KEYS = {"limited": "sk-limited", "capped": "sk-capped", "budgeted": "sk-budgeted", "streamer": "sk-streamer"}


def remote(name: str, stub: StubProcess, **fields: Any) -> dict[str, Any]:
    return {"name": name, "kind": "remote", "base_url": f"{stub.url}/v1", **fields}


@pytest.fixture(scope="module")
def front(
    stubs: dict[str, StubProcess], server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    os.environ["INFERLINE_TEST_UPSTREAM_KEY"] = API_KEY
    config = {
        "admin_api_keys": [ADMIN_KEY],
        "deployments": [
            remote("fast", stubs["fast"]),
            remote("slow", stubs["slow"], max_concurrency=1),
            # Once open, stays open for the rest of the module however slow the machine: the requests
            # sent while it is open are then sure to come before its probe.
            remote("flaky", stubs["flaky"], circuit_breaker={"failure_threshold": 2, "cooldown_s": 3600}),
            # The same upstream behind a breaker that lets its probe through quickly.
            remote("recovering", stubs["flaky"], circuit_breaker={"failure_threshold": 2, "cooldown_s": 0.5}),
            remote("bad", stubs["bad"]),
            remote("priced", stubs["fast"], price_input_per_1m=0, price_output_per_1m=200_000),
            remote(
                "far",
                server,
                upstream_model="smollm2-135m-instruct",
                api_key_env="INFERLINE_TEST_UPSTREAM_KEY",
                timeout_s=30,
            ),
        ],
        "routes": [
            {"name": "degrading", "deployments": ["slow"], "degrade_to": "fast"},
            {"name": "slow-only", "deployments": ["slow"]},
            {"name": "guarded", "deployments": ["flaky"], "fallbacks": ["fast"]},
            {"name": "probed", "deployments": ["recovering"], "fallbacks": ["fast"]},
            {
                "name": "canaried",
                "policy": "canary",
                "sticky_by": "none",
                "canary": {"baseline": "fast", "candidate": "bad", "percent": 50, "min_samples": 4},
            },
            {"name": "split", "policy": "weighted", "weights": {"fast": 1, "flaky": 1}},
            {
                "name": "cascading",
                "policy": "cascade",
                "deployments": ["fast", "slow"],
                "cascade": {"escalate_patterns": ["from fast"]},
            },
            {"name": "confident", "policy": "cascade", "deployments": ["fast", "slow"]},
        ],
        "tenants": [
            {"name": "alpha", "api_keys": [API_KEY], "priority": "interactive"},
            {"name": "limited", "api_keys": [KEYS["limited"]], "quotas": {"requests_per_minute": 3}},
            {"name": "capped", "api_keys": [KEYS["capped"]], "quotas": {"max_concurrent": 2}},
            {"name": "budgeted", "api_keys": [KEYS["budgeted"]], "team": "ml"},
            {"name": "streamer", "api_keys": [KEYS["streamer"]], "team": "ml"},
        ],
        "teams": [{"name": "ml", "budget": {"limit_usd": 3, "period": "day"}}],
    }
    process = start_server(config, tmp_path_factory.mktemp("front"))
    yield process
    process.stop()


def chat(front: ServerProcess, model: str, key: str = API_KEY, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{front.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **body},
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )


def admin_routes(front: ServerProcess) -> dict[str, Any]:
    response = httpx.get(f"{front.url}/admin/routes", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    response.raise_for_status()
    return dict(response.json()["routes"])


def test_a_remote_deployment_can_be_another_inferline_server(
    front: ServerProcess, server: ServerProcess
) -> None:
    body = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 12, "temperature": 0}
    direct = chat(server, "smollm2-135m-instruct", **body)
    routed = chat(front, "far", **body)
    assert routed.status_code == 200, routed.text
    assert (
        routed.json()["choices"][0]["message"]["content"] == direct.json()["choices"][0]["message"]["content"]
    )
    counts = ("prompt_tokens", "completion_tokens")
    assert [routed.json()["usage"][k] for k in counts] == [direct.json()["usage"][k] for k in counts]
    assert routed.headers["x-inferline-deployment"] == "far@1"
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key=API_KEY, max_retries=0)
    stream = client.chat.completions.create(model="far", stream=True, **body)  # type: ignore[call-overload]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == direct.json()["choices"][0]["message"]["content"]


def test_every_response_says_what_inferline_added(front: ServerProcess) -> None:
    for stream in (False, True):
        response = chat(front, "fast", stream=stream)
        assert response.status_code == 200
        assert 0 <= float(response.headers["x-inferline-overhead-ms"]) < 100


def test_overload_degrades_to_the_smaller_deployment_then_refuses_without_one(
    front: ServerProcess, stubs: dict[str, StubProcess]
) -> None:
    stubs["slow"].set_faults(delay_s=1.0)
    try:
        assert chat(front, "degrading").headers["x-inferline-model"] == "slow"  # learns it takes ~1 s
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            first = pool.submit(chat, front, "degrading")
            time.sleep(0.3)  # the first now holds slow's only slot
            later = [pool.submit(chat, front, "degrading") for _ in range(2)]
            assert first.result().headers["x-inferline-model"] == "slow"
            for response in (f.result() for f in later):
                assert response.status_code == 200
                assert response.headers["x-inferline-model"] == "fast"
                assert response.headers["x-inferline-degraded"] == "true"
            first = pool.submit(chat, front, "slow-only")
            time.sleep(0.3)
            refused = chat(front, "slow-only")
            assert first.result().status_code == 200
        assert refused.status_code == 429
        assert "interactive_max_wait_s" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
    finally:
        stubs["slow"].set_faults()


def test_canary_rolls_back_on_injected_errors(front: ServerProcess, stubs: dict[str, StubProcess]) -> None:
    stubs["bad"].set_faults(error_rate=1.0, status=500)
    statuses = [chat(front, "canaried").status_code for _ in range(30)]
    assert statuses == [200] * 30  # the candidate's failures fell back to the baseline
    canary = admin_routes(front)["canaried"]["canary"]
    assert canary["status"] == "rolled_back"
    assert canary["decisions"][-1]["action"] == "rollback"
    seen = stubs["bad"].stats()["requests"]
    for _ in range(10):
        assert chat(front, "canaried").headers["x-inferline-model"] == "fast"
    assert stubs["bad"].stats()["requests"] == seen  # rolled back: no more traffic to it


def test_circuit_opens_on_failures_and_recovers_after_a_probe(
    front: ServerProcess, stubs: dict[str, StubProcess]
) -> None:
    stubs["flaky"].set_faults(error_rate=1.0, status=503)
    try:
        for _ in range(2):
            assert chat(front, "guarded").headers["x-inferline-model"] == "fast"
        assert admin_routes(front)["guarded"]["arms"]["flaky"]["circuit"] == "open"
        seen = stubs["flaky"].stats()["requests"]
        for _ in range(5):
            assert chat(front, "guarded").headers["x-inferline-model"] == "fast"
            assert chat(front, "split").status_code == 200  # the weighted route skips it too
        assert stubs["flaky"].stats()["requests"] == seen
        for _ in range(2):
            assert chat(front, "probed").headers["x-inferline-model"] == "fast"
        assert admin_routes(front)["probed"]["arms"]["recovering"]["circuit"] != "closed"
    finally:
        stubs["flaky"].set_faults()
    # Once the cooldown is over the next request is the probe; until then each falls back.
    deadline = time.monotonic() + 30
    while (answered := chat(front, "probed").headers["x-inferline-model"]) != "recovering":
        assert answered == "fast"
        assert time.monotonic() < deadline, "no probe within 30 s of a 0.5 s cooldown"
        time.sleep(0.05)
    assert admin_routes(front)["probed"]["arms"]["recovering"]["circuit"] == "closed"


def test_requests_per_minute_quota_says_which_limit_and_when(front: ServerProcess) -> None:
    statuses = [chat(front, "fast", KEYS["limited"]).status_code for _ in range(3)]
    refused = chat(front, "fast", KEYS["limited"])
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    assert "requests_per_minute" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 20


def test_concurrent_clients_never_exceed_the_tenant_cap(
    front: ServerProcess, stubs: dict[str, StubProcess]
) -> None:
    stubs["slow"].set_faults(delay_s=0.5)
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            # Batch class: a long wait is within its budget, so only the tenant's cap refuses.
            responses = list(
                pool.map(lambda _: chat(front, "slow-only", KEYS["capped"], priority="batch"), range(6))
            )
    finally:
        stubs["slow"].set_faults()
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 429, 429, 429, 429], codes
    assert all("max_concurrent" in r.json()["error"]["message"] for r in responses if r.status_code == 429)


def test_team_budget_holds_across_its_tenants_and_every_path(front: ServerProcess) -> None:
    # Each answer may use 5 output tokens at $0.20 each: $1 held, $1 spent. The team has $3 a day.
    assert chat(front, "priced", KEYS["budgeted"]).status_code == 200
    assert chat(front, "priced", KEYS["streamer"]).status_code == 200
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key=KEYS["streamer"], max_retries=0)
    stream = client.chat.completions.create(
        model="priced", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    refused = chat(front, "priced", KEYS["budgeted"])  # exactly $3 spent: nothing more fits
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "insufficient_quota"
    assert "team 'ml'" in error["message"]
    assert "$3.00" in error["message"]
    embed = httpx.post(
        f"{front.url}/v1/embeddings",
        json={"model": "priced", "input": "x"},
        headers={"authorization": f"Bearer {KEYS['streamer']}"},
    )
    assert embed.status_code in (200, 429)  # input is free on this deployment: it fits at $0
    limits = httpx.get(f"{front.url}/admin/limits", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert "team:ml" in str(limits)


def test_admin_api_needs_an_admin_key_and_changes_weights(front: ServerProcess) -> None:
    url = f"{front.url}/admin/routes"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": f"Bearer {API_KEY}"}).status_code == 403
    routes = admin_routes(front)
    assert routes["split"]["policy"] == "weighted"
    assert {"circuit", "estimated_wait_s", "weight", "requests"} <= set(routes["split"]["arms"]["fast"])
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    changed = httpx.post(f"{url}/split/weights", json={"weights": {"fast": 1, "flaky": 0}}, headers=headers)
    assert changed.status_code == 200, changed.text
    for i in range(10):
        assert chat(front, "split", user=f"u{i}").headers["x-inferline-model"] == "fast"
    bad = httpx.post(f"{url}/split/weights", json={"weights": {"nope": 1}}, headers=headers)
    assert bad.status_code == 400
    assert "nope" in bad.json()["error"]["message"]
    paused = httpx.post(f"{url}/canaried/canary", json={"action": "pause"}, headers=headers)
    assert paused.json()["canary"]["status"] == "paused"


@pytest.mark.parametrize("stream", [False, True])
def test_cascade_escalates_and_says_which_stage_answered(front: ServerProcess, stream: bool) -> None:
    escalated = chat(front, "cascading", stream=stream)
    assert escalated.status_code == 200
    assert escalated.headers["x-inferline-cascade-stage"] == "2"
    # Only the escalated stage's answer reaches the client.
    assert content(escalated, stream).startswith("answer from slow")
    kept = chat(front, "confident", stream=stream)
    assert kept.headers["x-inferline-cascade-stage"] == "1"
    assert content(kept, stream).startswith("answer from fast")


def content(response: httpx.Response, stream: bool) -> str:
    if not stream:
        return str(response.json()["choices"][0]["message"]["content"])
    chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


def test_a_client_leaving_mid_stream_frees_the_deployments_slot(
    front: ServerProcess, stubs: dict[str, StubProcess]
) -> None:
    stubs["slow"].set_faults(token_delay_s=0.3)
    try:
        body = {"model": "slow-only", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream(
            "POST",
            f"{front.url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {API_KEY}"},
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: a dropped line iterator closes the response
            assert "chat.completion.chunk" in next(lines)
            assert admin_routes(front)["slow-only"]["arms"]["slow"]["in_flight"] == 1
        deadline = time.monotonic() + 10
        while admin_routes(front)["slow-only"]["arms"]["slow"]["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert admin_routes(front)["slow-only"]["arms"]["slow"]["in_flight"] == 0
    finally:
        stubs["slow"].set_faults()
    assert chat(front, "slow-only").status_code == 200  # its one slot (max_concurrency 1) is free again
