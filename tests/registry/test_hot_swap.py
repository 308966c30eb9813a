"""Hot swap under load: 8 clients keep sending (half of them streaming) while the deployment moves from
registry version 1 to version 2; not one request fails, and the old version is drained and unloaded."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.registry.conftest import (
    ServedRegistry,
    admin_get,
    registry_deployment,
    set_version,
    start_until_loaded,
)
from tests.server.conftest import API_KEY, ServerProcess

NUM_CLIENTS = 8


@dataclass(frozen=True)
class Outcome:
    started: float
    """time.monotonic() when the request was sent."""
    status: int
    version: str | None
    complete: bool
    """Non-streaming: a choice came back; streaming: the stream ended with [DONE] and no error frame."""


def one_request(client: httpx.Client, server: ServerProcess, stream: bool) -> Outcome:
    body = {
        "model": "bot",
        "messages": [{"role": "user", "content": "Count to ten."}],
        "max_tokens": 8,
        "stream": stream,
    }
    started = time.monotonic()
    with client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as reply:
        text = reply.read().decode()
        version = reply.headers.get("x-inferline-version")
    if reply.status_code != 200:
        return Outcome(started, reply.status_code, version, False)
    if not stream:
        return Outcome(started, 200, version, bool(json.loads(text)["choices"]))
    frames = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    complete = frames[-1] == "[DONE]" and not any('"error"' in frame for frame in frames)
    return Outcome(started, 200, version, complete)


def test_swap_under_load_drops_no_request(served_registry: ServedRegistry, tmp_path: Path) -> None:
    server = start_until_loaded(
        served_registry.server_config([registry_deployment("bot", "registry:bot:1")]), tmp_path
    )
    outcomes: list[list[Outcome]] = [[] for _ in range(NUM_CLIENTS)]
    stop = threading.Event()

    def client_loop(index: int) -> None:
        headers = {"authorization": f"Bearer {API_KEY}"}
        with httpx.Client(headers=headers, timeout=60) as client:
            while not stop.is_set():
                outcomes[index].append(one_request(client, server, stream=index % 2 == 1))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(NUM_CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: all(len(o) >= 2 for o in outcomes))
        swapped = set_version(server, "bot", "2")
        swap_done = time.monotonic()
        wait_until(lambda: all(sum(r.started > swap_done for r in o) >= 2 for o in outcomes))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        log = server.log()
        server.stop()

    assert swapped.status_code == 200, swapped.text
    state = swapped.json()
    assert (state["version"], state["state"], state["draining"]) == ("2", "ready", None)
    assert state["source"].endswith("/bot/2")
    everything = [r for o in outcomes for r in o]
    failed = [r for r in everything if r.status != 200 or not r.complete]
    assert failed == []
    assert {r.version for r in everything if r.started < swap_done} >= {"1"}
    assert {r.version for r in everything if r.started > swap_done} == {"2"}
    # 8 clients that never pause leave requests on version 1 at the switch: the drain is exercised.
    draining = re.search(r"model bot now serves version 2; draining (\d+) requests from version 1", log)
    assert draining is not None, log
    assert int(draining.group(1)) > 0
    assert "model bot: version 1 drained and unloaded" in log


def test_the_admin_api_lists_versions_and_states(served_registry: ServedRegistry, tmp_path: Path) -> None:
    server = start_until_loaded(
        served_registry.server_config([registry_deployment("bot", "registry:bot:prod")]), tmp_path
    )
    try:
        (state,) = admin_get(server, "/admin/deployments")["deployments"]
        assert (state["name"], state["version"], state["state"]) == ("bot", "1", "ready")
        no_key = httpx.get(f"{server.url}/admin/deployments", timeout=5)
        assert no_key.status_code == 401
    finally:
        server.stop()


def wait_until(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the clients made no progress in time"
        time.sleep(0.05)
