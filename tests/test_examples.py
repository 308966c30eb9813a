"""Every worked example in examples/ starts as its header says on a fresh install, and each of its routes
answers: the example runs as a real `inferline serve` on loopback beside the stub upstreams its header
tells the reader to start first, and a client sends a request through every route it defines."""

from __future__ import annotations

import concurrent.futures
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from inferline.server.serve import load_server_config
from inferline.testing.stub_upstream import StubProcess, start_stub
from tests.server.conftest import ServerProcess, start_server

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
STUB_COMMAND = "python -m inferline.testing.stub_upstream "
ADMIN_KEY = "sk-admin-example"
"""The admin key the examples' headers give (the files hold its sha256)."""


def header_commands(path: Path) -> list[str]:
    """The commands in the example's opening comment: its lines indented as `#   COMMAND`."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("#   ") and not line.startswith("#     "):
            commands.append(line.removeprefix("#   ").strip())
    return commands


def stub_ports(path: Path) -> dict[int, list[str]]:
    """Port -> the other arguments, of every stub upstream the header starts."""
    stubs = {}
    for command in header_commands(path):
        if command.startswith(STUB_COMMAND):
            args = shlex.split(command.removeprefix(STUB_COMMAND))
            at = args.index("--port")
            stubs[int(args[at + 1])] = args[:at] + args[at + 2 :]
    return stubs


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_its_header_says_how_to_start_it(path: Path) -> None:
    config = load_server_config(str(path))
    assert config.routes
    commands = header_commands(path)
    serve = f"inferline serve --config examples/{path.name}"
    assert serve in commands
    assert not any(c.startswith(STUB_COMMAND) for c in commands[commands.index(serve) :]), "stubs go first"
    started = stub_ports(path)
    for deployment in config.deployments:
        if deployment.kind == "remote":
            url = urlsplit(deployment.base_url)
            assert url.hostname == "127.0.0.1", f"{deployment.name}: {deployment.base_url} is not loopback"
            assert url.port in started, f"{deployment.name}: nothing in the header starts {url.netloc}"


@dataclass
class RunningExample:
    server: ServerProcess
    stubs: dict[int, StubProcess]
    """By the port the example names."""

    def chat(self, route: str, key: str | None = None, **body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        question = [{"role": "user", "content": "What is the capital of France?"}]
        return httpx.post(
            f"{self.server.url}/v1/chat/completions",
            json={"model": route, "messages": question, "max_tokens": 8, "temperature": 0, **body},
            headers=headers,
            timeout=60,
        )

    def admin(self, method: str, path: str, **body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        return httpx.request(
            method, f"{self.server.url}/admin{path}", json=body or None, headers=headers, timeout=10
        )


@contextmanager
def run_example(name: str, tmp_path: Path) -> Iterator[RunningExample]:
    """The example as its header says, except that each stub listens on a free port (the tests run beside
    other servers) and the example's base_urls are pointed there."""
    path = EXAMPLES_DIR / name
    text = path.read_text()
    stubs: dict[int, StubProcess] = {}
    try:
        for port, args in stub_ports(path).items():
            stubs[port] = start_stub(*args)
            text = text.replace(f"http://127.0.0.1:{port}/", f"{stubs[port].url}/")
        server = start_server(yaml.safe_load(text), tmp_path)
        try:
            yield RunningExample(server, stubs)
        finally:
            server.stop()
    finally:
        for stub in stubs.values():
            stub.stop()


def answered_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-inferline-deployment"]


def reply(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


# ---- canary-and-ab.yaml ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def canary_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningExample]:
    with run_example("canary-and-ab.yaml", tmp_path_factory.mktemp("canary")) as example:
        yield example


@pytest.mark.slow
def test_canary_and_ab(canary_example: RunningExample) -> None:
    example = canary_example
    versions = {"chat-v1@1", "chat-v2@2"}
    response = example.chat("chat", user="alice")
    assert answered_by(response) in versions
    assert response.headers["x-inferline-route"] == "chat"

    steer = example.admin("POST", "/routes/chat/canary", percent=100)
    assert steer.status_code == 200, steer.text
    assert answered_by(example.chat("chat", user="alice")) == "chat-v2@2"
    canary = example.admin("GET", "/routes").json()["routes"]["chat"]["canary"]
    assert canary["percent"] == 100

    arms = {user: answered_by(example.chat("compare", user=user, max_tokens=1)) for user in "abcdefgh"}
    assert set(arms.values()) == versions  # the A/B split uses both
    assert answered_by(example.chat("compare", user="a", max_tokens=1)) == arms["a"]  # sticky per user


# ---- cascade-and-fallback.yaml --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cascade_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningExample]:
    with run_example("cascade-and-fallback.yaml", tmp_path_factory.mktemp("cascade")) as example:
        yield example


@pytest.mark.slow
def test_cascade_answers_locally_and_escalates_when_unsure(cascade_example: RunningExample) -> None:
    confident = cascade_example.chat("assistant")
    assert answered_by(confident) == "smollm2@1"
    assert confident.headers["x-inferline-cascade-stage"] == "1"
    assert "Paris" in reply(confident)

    unsure = cascade_example.chat("assistant", temperature=2, seed=1, max_tokens=16)
    assert answered_by(unsure) == "hosted@1"
    assert unsure.headers["x-inferline-cascade-stage"] == "2"
    assert reply(unsure) == "Answer from the hosted model."


@pytest.mark.slow
def test_premium_falls_back_when_the_hosted_model_is_down(cascade_example: RunningExample) -> None:
    assert answered_by(cascade_example.chat("premium")) == "hosted@1"
    hosted = cascade_example.stubs[9101]
    hosted.set_faults(error_rate=1)
    try:
        fallen_back = cascade_example.chat("premium")
    finally:
        hosted.set_faults()
    assert answered_by(fallen_back) == "backup@1"
    assert reply(fallen_back) == "Answer from the backup upstream."


@pytest.mark.slow
def test_cascade_falls_back_when_the_hosted_model_is_down(cascade_example: RunningExample) -> None:
    hosted = cascade_example.stubs[9101]
    hosted.set_faults(error_rate=1)
    try:
        escalated = cascade_example.chat("assistant", temperature=2, seed=1, max_tokens=16)
    finally:
        hosted.set_faults()
    assert answered_by(escalated) == "backup@1"
    assert "x-inferline-cascade-stage" not in escalated.headers  # a fallback is not a cascade stage


# ---- quotas-budgets-degradation.yaml --------------------------------------------------------------


@pytest.fixture(scope="module")
def quotas_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningExample]:
    with run_example("quotas-budgets-degradation.yaml", tmp_path_factory.mktemp("quotas")) as example:
        yield example


@pytest.mark.slow
def test_quotas_budgets_and_degradation(quotas_example: RunningExample) -> None:
    example = quotas_example
    large = example.stubs[9101]
    # First, before the large model has a latency on record: its estimated wait when full is then its
    # timeout, far over the interactive class's 0.5 s.
    large.set_faults(delay_s=2)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(example.chat, "chat", "sk-frontend") for _ in range(2)]
            wait_until_in_flight(example, "large", 2)
            degraded = example.chat("chat", "sk-frontend")
            assert all(answered_by(f.result()) == "large@1" for f in busy)
    finally:
        large.set_faults()
    assert answered_by(degraded) == "small@1"
    assert degraded.headers["x-inferline-degraded"] == "true"

    batch = example.chat("chat", "sk-reindex")
    assert answered_by(batch) == "large@1"
    assert reply(batch) == "Answer from the large model."
    assert example.chat("chat", "sk-unknown").status_code == 401

    limits = example.admin("GET", "/limits").json()["limits"]
    spent = {scope: entry["budget"]["spent_usd"] for scope, entry in limits.items() if "budget" in entry}
    assert set(spent) == {"key:frontend-prod", "tenant:nightly-reindex", "team:search", "organisation:acme"}
    assert spent["key:frontend-prod"] > 0
    assert spent["tenant:nightly-reindex"] > 0
    both = spent["key:frontend-prod"] + spent["tenant:nightly-reindex"]
    assert spent["team:search"] == spent["organisation:acme"] == pytest.approx(both)  # up the ladder


def wait_until_in_flight(example: RunningExample, deployment: str, count: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    in_flight = None
    while time.monotonic() < deadline:
        in_flight = example.admin("GET", "/routes").json()["routes"]["chat"]["arms"][deployment]["in_flight"]
        if in_flight == count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{deployment} had {in_flight} requests in flight, not {count}, after {timeout_s} s")
