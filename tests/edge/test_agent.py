"""`inferline edge` as a device runs it: the real CLI in a subprocess, a real TUF repository on loopback,
bundles of the default SmolLM2 GGUF signed with real keys, and requests to the agent's local OpenAI API."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferline.cli import main
from inferline.models.store import resolve
from inferline.registry.bundle import BundleMetadata, write_metadata
from inferline.registry.dataset import Dataset
from inferline.registry.signing import generate_key_pair, sign_bundle
from inferline.registry.tuf_repo import TufRepository, make_bundle_archive
from inferline.registry.tuf_serve import RepositoryServer, start_repository_server

MODEL = "edge-chat"


@dataclass(frozen=True)
class Archives:
    """Bundle archives built once per session, by version; and the publisher's public key."""

    public_key: Path
    by_version: dict[str, Path]


def _bundle_archive(root: Path, version: str, weights: bytes | Path, private_key: Path) -> Path:
    bundle = root / f"bundle-{version}"
    bundle.mkdir()
    if isinstance(weights, Path):
        (bundle / "model.gguf").write_bytes(weights.read_bytes())
    else:
        (bundle / "model.gguf").write_bytes(weights)
    write_metadata(bundle, BundleMetadata(name=MODEL, version=version))
    sign_bundle(bundle, private_key)
    return make_bundle_archive(bundle, root / f"{version}.tar")


@pytest.fixture(scope="session")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Archives:
    root = tmp_path_factory.mktemp("edge-bundles")
    publisher = generate_key_pair(root / "publisher")
    stranger = generate_key_pair(root / "stranger")
    gguf = resolve("default").path
    # The publisher signed a damaged file: the signature holds, loading the model does not.
    corrupt = gguf.read_bytes()[: 1 << 20]
    return Archives(
        publisher.public_key,
        {
            "1.0.0": _bundle_archive(root, "1.0.0", gguf, publisher.private_key),
            "2.0.0": _bundle_archive(root, "2.0.0", gguf, publisher.private_key),
            "3.0.0": _bundle_archive(root, "3.0.0", gguf, stranger.private_key),
            "4.0.0": _bundle_archive(root, "4.0.0", corrupt, publisher.private_key),
        },
    )


@pytest.fixture
def repo(tmp_path: Path, archives: Archives) -> TufRepository:
    repo = TufRepository.create(tmp_path / "repo", tmp_path / "keys", num_root_keys=1, root_threshold=1)
    publish(repo, archives, "1.0.0")
    return repo


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    """Where the registry stores what devices upload."""
    return Dataset(f"sqlite:///{tmp_path / 'registry.db'}")


@pytest.fixture
def registry(repo: TufRepository, dataset: Dataset) -> Iterator[RepositoryServer]:
    server = start_repository_server(repo.repo_dir, dataset=dataset)
    yield server
    server.close()


def wait_for_records(
    dataset: Dataset, condition: Callable[[list[Any]], bool], timeout_s: float = 30
) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    records: list[Any] = []
    while time.monotonic() < deadline:
        records = list(dataset.records(model=MODEL))
        if condition(records):
            return records
        time.sleep(0.2)
    raise AssertionError(f"the registry holds {len(records)} records: {records[:5]}")


def publish(repo: TufRepository, archives: Archives, version: str) -> None:
    repo.add_target(MODEL, version, archives.by_version[version])
    repo.publish()


class Agent:
    """One `inferline edge` process and its local server."""

    def __init__(
        self, home: Path, registry_url: str, repo: TufRepository, public_key: Path, extra: Sequence[str] = ()
    ) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.home = home
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home.parent / f"{home.name}-agent.log"
        command = [
            *(sys.executable, "-m", "inferline.cli", "edge"),
            *("--registry", registry_url, "--device-id", "robot-7", "--labels", "ring=canary,site=lab"),
            *("--model", MODEL, "--trusted-root", str(repo.trusted_root_path), "--pubkey", str(public_key)),
            *("--home", str(home), "--port", str(self.port), "--poll-s", "0.3"),
            *extra,
        ]
        env = {**os.environ, "INFERLINE_HOME": str(home.parent / "inferline-home")}
        with self.log.open("w") as log:  # the child holds its own copy of the descriptor
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def state(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/edge/state", timeout=5).json()  # type: ignore[no-any-return]

    def chat(self, **fields: Any) -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, **fields}
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=30)

    def served_version(self) -> str:
        response = self.chat()
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]
        return response.headers["x-inferline-version"]

    def wait_for(
        self, condition: Callable[[dict[str, Any]], bool], timeout_s: float = 60.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"agent exited:\n{self.log.read_text()}"
            try:
                state = self.state()
            except httpx.TransportError:
                state = {}
            if state and condition(state):
                return state
            time.sleep(0.1)
        raise AssertionError(f"timed out; last state {state}; log:\n{self.log.read_text()}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


class ClientsDuringSwap:
    """Two clients sending requests back to back while the agent swaps versions."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self.num_ok = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send) for _ in range(2)]

    def _send(self) -> None:
        while not self.stop.is_set():
            response = self.agent.chat()
            if response.status_code == 200:
                self.num_ok += 1
                self.versions.add(response.headers["x-inferline-version"])
            else:
                self.failures.append(f"{response.status_code}: {response.text}")

    def __enter__(self) -> "ClientsDuringSwap":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        time.sleep(0.5)  # a few requests to the new version too
        self.stop.set()
        for thread in self.threads:
            thread.join()


@pytest.fixture
def start_agent(
    tmp_path: Path, repo: TufRepository, registry: RepositoryServer, archives: Archives
) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(*extra: str) -> Agent:
        agents.append(Agent(tmp_path / "device", registry.url, repo, archives.public_key, extra))
        return agents[-1]

    yield start
    for agent in agents:
        if agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait()


def _serving(version: str) -> Callable[[dict[str, Any]], bool]:
    return lambda state: state["current_version"] == version


def test_installs_serves_updates_uploads_its_telemetry_and_keeps_serving_offline(
    start_agent: Callable[..., Agent],
    repo: TufRepository,
    registry: RepositoryServer,
    archives: Archives,
    dataset: Dataset,
) -> None:
    agent = start_agent("--low-confidence-mean-logprob", "-100")  # no answer is that unsure
    state = agent.wait_for(_serving("1.0.0"))
    assert state["device_id"] == "robot-7"
    assert state["labels"] == {"ring": "canary", "site": "lab"}
    assert agent.served_version() == "1.0.0"

    with ClientsDuringSwap(agent) as clients:
        publish(repo, archives, "2.0.0")
        state = agent.wait_for(_serving("2.0.0"))
        assert state["last_good"] == "2.0.0"
        assert agent.served_version() == "2.0.0"
    assert clients.failures == []
    assert {"1.0.0", "2.0.0"} <= clients.versions  # requests were answered by both, before and after
    on_disk = json.loads((agent.home / "state.json").read_text())
    assert (on_disk["current_version"], on_disk["last_check"] is not None) == ("2.0.0", True)

    # Every answered request reaches the registry as usage, with the version that produced it.
    answered = clients.num_ok + 2  # the clients' and the two served_version() checks'
    records = wait_for_records(dataset, lambda rs: sum(r.kind == "usage" for r in rs) >= answered)
    assert {r.model_version for r in records if r.kind == "usage"} == {"1.0.0", "2.0.0"}
    usage = [r for r in records if r.kind == "usage"]
    assert all(r.device_id == "robot-7" and r.payload["completion_tokens"] > 0 for r in usage)
    assert all(-100 < r.payload["mean_logprob"] <= 0 for r in usage)  # each answer's confidence
    # So does the device's state, each time it changes.
    states = wait_for_records(
        dataset, lambda rs: any(r.kind == "state" and r.model_version == "2.0.0" for r in rs)
    )
    latest = [r.payload for r in states if r.kind == "state"][-1]
    assert (latest["current_version"], latest["last_good"], latest["labels"]) == (
        "2.0.0",
        "2.0.0",
        {"ring": "canary", "site": "lab"},
    )
    feedback = httpx.post(f"{agent.url}/edge/feedback", json={"request_id": "r-1", "rating": -1})
    assert feedback.status_code == 202
    flagged = wait_for_records(dataset, lambda rs: any(r.kind == "flagged" for r in rs))
    assert [
        (r.model_version, r.payload["reason"], r.payload["rating"]) for r in flagged if r.kind == "flagged"
    ] == [("2.0.0", "feedback", -1)]
    assert httpx.post(f"{agent.url}/edge/feedback", json={"rating": 1}).status_code == 400

    registry.close()
    state = agent.wait_for(lambda state: "unreachable" in (state["last_error"] or ""))
    assert state["current_version"] == "2.0.0"
    assert agent.served_version() == "2.0.0"
    assert agent.stop() == 0


def test_answers_below_the_confidence_threshold_reach_the_dataset_with_prompt_and_answer(
    start_agent: Callable[..., Agent], dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = start_agent("--low-confidence-mean-logprob", "0")  # every answer is less sure than certain
    agent.wait_for(_serving("1.0.0"))
    question = [{"role": "user", "content": "Name a colour."}]
    answer = agent.chat(messages=question, max_tokens=8, temperature=1.0, seed=1)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["logprobs"] is None  # computed for the case, not shown to the user
    with httpx.stream(
        "POST",
        f"{agent.url}/v1/chat/completions",
        json={"model": MODEL, "messages": question, "max_tokens": 8, "stream": True, "temperature": 1.0},
        timeout=30,
    ) as response:
        frames = [line for line in response.iter_lines() if line.startswith("data: {")]
    chunks = [json.loads(frame.removeprefix("data: ")) for frame in frames]
    assert all(choice.get("logprobs") is None for chunk in chunks for choice in chunk["choices"])
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])

    records = wait_for_records(
        dataset, lambda rs: sum(r.payload.get("reason") == "low_confidence" for r in rs) >= 2
    )
    cases = [r for r in records if r.payload.get("reason") == "low_confidence"]
    assert [(r.kind, r.model_version, r.device_id) for r in cases] == [("flagged", "1.0.0", "robot-7")] * 2
    assert [r.payload["prompt"] for r in cases] == [question, question]
    assert [r.payload["completion"] for r in cases] == [
        [answer.json()["choices"][0]["message"]["content"]],
        [streamed],
    ]
    usage = {r.payload["request_id"]: r.payload["mean_logprob"] for r in records if r.kind == "usage"}
    assert [r.payload["mean_logprob"] for r in cases] == [usage[r.payload["request_id"]] for r in cases]
    assert all(r.payload["mean_logprob"] < 0 for r in cases)

    # What `inferline registry dataset export` gives to whoever builds the next training set.
    registry_db = dataset.url
    out = tmp_path / "cases.jsonl"
    assert main(["registry", "dataset", "export", "--database-url", registry_db, "--out", str(out)]) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    flagged = [row for row in exported if row["kind"] == "flagged"]
    assert [(row["payload"]["prompt"], row["model_version"]) for row in flagged] == [
        (question, "1.0.0"),
        (question, "1.0.0"),
    ]
    assert "wrote" in capsys.readouterr().out


def test_bundle_signed_with_another_key_is_refused_and_old_version_keeps_serving(
    start_agent: Callable[..., Agent], repo: TufRepository, archives: Archives
) -> None:
    agent = start_agent()
    agent.wait_for(_serving("1.0.0"))

    publish(repo, archives, "3.0.0")
    state = agent.wait_for(lambda state: "3.0.0" in state["rejected"])
    assert "was not signed by the key" in state["rejected"]["3.0.0"]
    assert state["current_version"] == "1.0.0"
    assert agent.served_version() == "1.0.0"
    assert not (agent.home / "models" / "3.0.0").exists()
    assert [p.name for p in (agent.home / "models").iterdir()] == ["1.0.0"]  # no staging folder left


def test_version_failing_its_health_check_reverts_to_last_good(
    start_agent: Callable[..., Agent], repo: TufRepository, archives: Archives
) -> None:
    agent = start_agent()
    agent.wait_for(_serving("1.0.0"))

    publish(repo, archives, "4.0.0")  # signed correctly, but its GGUF is truncated
    state = agent.wait_for(lambda state: "4.0.0" in state["rejected"])
    assert "failed to load" in state["rejected"]["4.0.0"]
    assert (state["current_version"], state["last_good"]) == ("1.0.0", "1.0.0")
    assert agent.served_version() == "1.0.0"
    assert not (agent.home / "models" / "4.0.0").exists()
    pointer = json.loads((agent.home / "current.json").read_text())
    assert (pointer["current"], pointer["last_good"]) == ("1.0.0", "1.0.0")


def test_restart_in_the_middle_of_an_update_comes_back_on_a_working_version(
    start_agent: Callable[..., Agent], registry: RepositoryServer, tmp_path: Path, archives: Archives
) -> None:
    agent = start_agent()
    agent.wait_for(_serving("1.0.0"))
    agent.process.kill()  # no clean shutdown, as in a power cut
    agent.process.wait()

    # What an update interrupted at each step leaves: a half-unpacked archive, and a version that was
    # switched to but never passed its health check (here a damaged one).
    models = agent.home / "models"
    staging = models / ".staging-2.0.0-x1"
    staging.mkdir()
    (staging / "model.gguf").write_bytes(b"GGUF half written")
    (models / "4.0.0").mkdir()
    (models / "4.0.0" / "model.gguf").write_bytes(b"GGUF half written")
    (agent.home / "current.json").write_text(json.dumps({"current": "4.0.0", "last_good": "1.0.0"}))
    registry.close()  # and the device comes back up offline

    restarted = start_agent()
    state = restarted.wait_for(lambda state: state["current_version"] is not None)
    assert state["current_version"] == "1.0.0"
    assert "4.0.0" in state["rejected"]
    assert restarted.served_version() == "1.0.0"
    assert not staging.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--labels": "ring"}, "'ring' is not KEY=VALUE"),
        ({"--host": "0.0.0.0"}, "loopback only"),
        ({"--pubkey": "missing.pub.pem"}, "missing.pub.pem does not exist"),
        ({"--low-confidence-mean-logprob": "0.5"}, "'0.5': give a mean token log-probability ≤ 0"),
        ({"--low-confidence-mean-logprob": "nan"}, "'nan': give a mean token log-probability ≤ 0"),
    ],
    ids=["malformed-label", "public-host", "missing-pubkey", "positive-threshold", "nan-threshold"],
)
def test_cli_refuses_bad_arguments_before_serving(
    change: dict[str, str],
    message: str,
    tmp_path: Path,
    archives: Archives,
    capsys: pytest.CaptureFixture[str],
) -> None:
    arguments = {
        "--registry": "http://127.0.0.1:9",
        "--device-id": "robot-7",
        "--labels": "ring=canary",
        "--model": MODEL,
        "--trusted-root": str(tmp_path / "root.json"),
        "--pubkey": str(archives.public_key),
        "--home": str(tmp_path / "device"),
    } | change
    (tmp_path / "root.json").write_text("{}")
    assert main(["edge", *(part for pair in arguments.items() for part in pair)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "device" / "models").exists()


def test_installed_version_damaged_on_disk_is_installed_again_from_the_registry(
    start_agent: Callable[..., Agent],
) -> None:
    agent = start_agent()
    agent.wait_for(_serving("1.0.0"))
    assert agent.stop() == 0
    weights = agent.home / "models" / "1.0.0" / "model.gguf"
    with weights.open("r+b") as file:  # one flipped byte deep in the weights
        file.seek(50_000_000)
        byte = file.read(1)
        file.seek(50_000_000)
        file.write(bytes([byte[0] ^ 0xFF]))

    restarted = start_agent()
    state = restarted.wait_for(_serving("1.0.0"))
    assert state["rejected"] == {}
    assert restarted.served_version() == "1.0.0"
    assert weights.read_bytes() == resolve("default").path.read_bytes()  # the verified copy replaced it


def test_agent_killed_while_checking_a_new_version_restarts_on_a_complete_one(
    start_agent: Callable[..., Agent], repo: TufRepository, registry: RepositoryServer, archives: Archives
) -> None:
    agent = start_agent()
    agent.wait_for(_serving("1.0.0"))
    publish(repo, archives, "2.0.0")
    pointer_path = agent.home / "current.json"
    deadline = time.monotonic() + 60
    # Switched to 2.0.0 but not yet health-checked: the model is loading beside 1.0.0.
    while json.loads(pointer_path.read_text()) != {"current": "2.0.0", "last_good": "1.0.0", "rejected": {}}:
        assert time.monotonic() < deadline, agent.log.read_text()
        time.sleep(0.01)
    agent.process.kill()
    agent.process.wait()
    registry.close()

    restarted = start_agent()
    state = restarted.wait_for(lambda state: state["current_version"] is not None)
    assert (state["current_version"], state["last_good"]) == ("2.0.0", "2.0.0")
    assert restarted.served_version() == "2.0.0"
