"""`inferline rollout` against a real `inferline serve` on loopback whose canary route has a plan: status as a
table and as JSON, pause, resume and abort changing what the server does, and errors that say what to fix."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from inferline.cli import main
from inferline.testing.stub_upstream import start_stub
from tests.server.conftest import API_KEY, ServerProcess, free_port, start_server

ADMIN_KEY = "sk-rollout-cli-admin"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: the refusals below change nothing, whatever the plan's state."""
    tmp_path = tmp_path_factory.mktemp("rollout-cli")
    stubs = {name: start_stub("--reply", f"answer from {name}", "--tokens", "2") for name in ("old", "new")}
    config = {
        "api_keys": [API_KEY],
        "admin_api_keys": [ADMIN_KEY],
        "deployments": [
            {"name": name, "kind": "remote", "base_url": f"{stub.url}/v1"} for name, stub in stubs.items()
        ],
        "routes": [
            {
                "name": "bot",
                "policy": "canary",
                "sticky_by": "none",
                "canary": {
                    "baseline": "old",
                    "candidate": "new",
                    "min_samples": 1000,
                    # Held at its first step for the whole test.
                    "rollout": {"steps": [50, 100], "dwell_s": 3600, "min_samples": 1},
                },
            }
        ],
        "telemetry": {"database_url": f"sqlite:///{tmp_path / 'db.sqlite'}", "metering": False},
    }
    try:
        process = start_server(config, tmp_path)
        try:
            yield process
        finally:
            process.stop()
    finally:
        for stub in stubs.values():
            stub.stop()


def rollout(server: ServerProcess, *args: str, key: str = ADMIN_KEY) -> int:
    return main(["rollout", *args, "--url", server.url, "--admin-key", key])


def answered_by(server: ServerProcess, num_requests: int) -> set[str]:
    names = set()
    for _ in range(num_requests):
        response = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "bot", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            headers={"authorization": f"Bearer {API_KEY}"},
            timeout=30,
        )
        response.raise_for_status()
        names.add(response.headers["x-inferline-model"])
    return names


def test_status_pause_resume_and_abort_steer_the_servers_rollout(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert answered_by(server, 40) == {"old", "new"}  # 50 % each
    assert rollout(server, "status") == 0
    table = capsys.readouterr().out
    assert "bot" in table
    assert "running" in table
    assert "50%" in table
    assert "1/2" in table  # the first of two steps

    assert rollout(server, "pause", "bot") == 0
    assert "rollout on route bot: paused at 50%" in capsys.readouterr().out
    assert rollout(server, "status", "bot", "--json") == 0
    plan = json.loads(capsys.readouterr().out)["bot"]
    assert (plan["status"], plan["percent"], plan["reason"]) == ("paused", 50, "paused by an operator")

    assert rollout(server, "resume", "bot") == 0
    assert "running at 50%" in capsys.readouterr().out

    assert rollout(server, "abort", "bot") == 0
    assert "aborted at 0%" in capsys.readouterr().out
    assert answered_by(server, 20) == {"old"}  # every request back on the baseline

    assert rollout(server, "resume", "bot") == 2  # a finished plan cannot be resumed
    assert "refused with HTTP 409: the rollout on route 'bot' is aborted" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "key", "message"),
    [
        (("pause", "nope"), ADMIN_KEY, "route 'nope' has no rollout plan (routes with one: bot)"),
        (("status", "nope"), ADMIN_KEY, "route 'nope' has no rollout plan (routes with one: bot)"),
        (("status",), API_KEY, "not an admin key (admin_api_keys); pass --admin-key"),
    ],
    ids=["unknown-route", "status-of-unknown-route", "tenant-key"],
)
def test_refusals_say_what_to_fix(
    server: ServerProcess,
    args: tuple[str, ...],
    key: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert rollout(server, *args, key=key) == 2
    assert message in capsys.readouterr().err


def test_a_server_that_is_not_there_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["rollout", "status", "--url", url, "--admin-key", ADMIN_KEY]) == 2
    assert f"cannot reach the server at {url}" in capsys.readouterr().err


def test_no_admin_key_is_asked_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("INFERLINE_ADMIN_KEY", raising=False)
    assert main(["rollout", "status", "--url", "http://127.0.0.1:9"]) == 2
    assert "needs an admin key: pass --admin-key" in capsys.readouterr().err
