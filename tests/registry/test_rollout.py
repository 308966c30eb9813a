"""Staged rollouts: a canary's share climbs 5 → 25 → 100 % on live samples, rolls back when the candidate
errs, refuses a candidate with worse evaluation scores, and resumes at its step after a restart. The router
has stand-in deployments whose answers each test chooses, and the controller a hand-moved clock."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

from inferline.config import RolloutPlanConfig
from inferline.registry.bundle import BundleMetadata, build_bundle
from inferline.registry.catalog import open_catalog
from inferline.registry.rollout import RolloutController, RolloutError, RolloutStore
from inferline.registry.signing import generate_key_pair, sign_bundle
from inferline.router.request import WorstCase
from inferline.router.router import Router
from inferline.server.rollout_admin import rollout_controller
from inferline.testing.stub_upstream import start_stub
from tests.router.test_router import answers, caller, deployment, make_router
from tests.server.conftest import API_KEY, start_server

ADMIN_KEY = "sk-rollout-admin"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def config(db: Path, rollout: dict[str, Any], **canary: Any) -> dict[str, Any]:
    return {
        "deployments": [deployment("a"), deployment("b")],
        "routes": [
            {
                "name": "ab",
                "policy": "canary",
                "sticky_by": "none",
                # A verdict needs more samples than these tests send, unless a test asks for one.
                "canary": {
                    "baseline": "a",
                    "candidate": "b",
                    "min_samples": 100_000,
                    **canary,
                    "rollout": rollout,
                },
            }
        ],
        "telemetry": {"database_url": f"sqlite:///{db}", "metering": False},
    }


def controlled(server: dict[str, Any], clock: Clock, seed: int = 0) -> tuple[Router, RolloutController]:
    router, _ = make_router(server, seed)
    controller = rollout_controller(router.config, router, server["telemetry"]["database_url"])
    controller.clock = clock
    controller.start()
    return router, controller


def serve(router: Router, num_requests: int, failing: frozenset[str] = frozenset()) -> list[str]:
    """Route requests through the canary; the names of the deployments that answered."""

    async def go() -> list[str]:
        names = []
        for _ in range(num_requests):
            routed = await router.run("ab", caller(), answers(set(failing)), WorstCase(10, 10))
            await routed.complete(10, 10)
            names.append(routed.value)
        return names

    return asyncio.run(go())


def percent(router: Router) -> float:
    canary = router.routes["ab"].canary
    assert canary is not None
    return canary.percent


@pytest.mark.parametrize(
    ("steps", "message"), [([5, 5, 100], "increase"), ([0, 100], "increase"), ([5, 50], "end at 100")]
)
def test_plan_steps_must_increase_to_100(steps: list[float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RolloutPlanConfig(steps=steps)


def test_steps_advance_only_after_dwell_and_samples_then_complete(tmp_path: Path) -> None:
    clock = Clock()
    router, controller = controlled(
        config(tmp_path / "db.sqlite", {"steps": [5, 25, 100], "dwell_s": 60, "min_samples": 5}), clock
    )
    assert (percent(router), controller.plans["ab"].state.status) == (5, "running")
    served = serve(router, 400)
    assert 5 <= served.count("b") < 60  # about 5 %
    controller.tick()
    assert percent(router) == 5  # samples, but the step has not lasted 60 s
    clock.now += 61
    controller.tick()
    assert percent(router) == 25
    clock.now += 61
    controller.tick()
    assert percent(router) == 25  # dwell passed, but no sample at this step yet
    serve(router, 100)
    controller.tick()
    assert percent(router) == 100
    assert set(serve(router, 20)) == {"b"}
    controller.tick()
    assert controller.plans["ab"].state.status == "running"  # 100 % must dwell too
    clock.now += 61
    controller.tick()
    stored = RolloutStore(f"sqlite:///{tmp_path / 'db.sqlite'}").load("ab")
    assert stored is not None
    assert (stored.status, stored.percent, stored.step_index) == ("completed", 100, 2)
    with pytest.raises(RolloutError, match="completed"):
        controller.act("ab", "pause")


def test_candidate_errors_roll_the_plan_back_and_a_restart_keeps_it_back(tmp_path: Path) -> None:
    server = config(
        tmp_path / "db.sqlite", {"steps": [50, 100], "dwell_s": 0, "min_samples": 100_000}, min_samples=4
    )
    clock = Clock()
    router, controller = controlled(server, clock)
    served = serve(router, 40, failing=frozenset({"b"}))
    assert set(served) == {"a"}  # the candidate's failures fell back to the baseline
    controller.tick()
    state = controller.plans["ab"].state
    assert (state.status, state.percent) == ("rolled_back", 0)
    assert "error rate" in state.reason
    router, controller = controlled(server, clock)  # a restarted server over the same database
    assert (controller.plans["ab"].state.status, percent(router)) == ("rolled_back", 0)
    assert set(serve(router, 50)) == {"a"}


def test_restart_resumes_at_the_stored_step_and_pause_resume_abort(tmp_path: Path) -> None:
    server = config(tmp_path / "db.sqlite", {"steps": [5, 25, 100], "dwell_s": 30, "min_samples": 2})
    clock = Clock()
    router, controller = controlled(server, clock)
    serve(router, 200)
    clock.now += 31
    controller.tick()
    assert percent(router) == 25
    started = controller.plans["ab"].state.step_started_at
    router, controller = controlled(server, clock, seed=1)
    assert percent(router) == 25  # not 5 % again
    assert controller.plans["ab"].state.step_started_at == started
    controller.act("ab", "pause")
    serve(router, 100)
    clock.now += 31
    controller.tick()
    assert percent(router) == 25  # paused: holds its step
    controller.act("ab", "resume")
    serve(router, 100)
    controller.tick()
    assert percent(router) == 25  # the dwell counts again from the resume
    controller.act("ab", "abort")
    assert percent(router) == 0
    assert set(serve(router, 50)) == {"a"}
    router, controller = controlled(server, clock)
    assert (controller.plans["ab"].state.status, percent(router)) == ("aborted", 0)


def push(tmp_path: Path, keys: Any, version: str, accuracy: float) -> None:
    model = tmp_path / f"model-{version}"
    model.mkdir()
    (model / "weights.bin").write_bytes(version.encode() * 64)
    bundle = build_bundle(
        model,
        tmp_path / f"bundle-{version}",
        BundleMetadata(name="bot", version=version, scores={"acc": accuracy}),
    )
    sign_bundle(bundle.path, keys.private_key)
    with open_catalog(f"sqlite:///{tmp_path / 'db.sqlite'}") as catalog:
        catalog.push(bundle.path, keys.public_key)


def registry_config(tmp_path: Path, candidate: str) -> dict[str, Any]:
    server = config(
        tmp_path / "db.sqlite", {"steps": [100], "dwell_s": 0, "min_samples": 1, "min_score_ratio": 0.95}
    )
    server["deployments"] = [
        {"name": "a", "kind": "llm", "source": "registry:bot:prod"},
        {"name": "b", "kind": "llm", "source": f"registry:bot:{candidate}"},
    ]
    return server


def test_scores_refuse_a_worse_candidate_and_completion_promotes_a_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERLINE_HOME", str(tmp_path / "home"))
    keys = generate_key_pair(tmp_path)
    for version, accuracy in (("1", 0.80), ("2", 0.70), ("3", 0.79)):
        push(tmp_path, keys, version, accuracy)
    with open_catalog(f"sqlite:///{tmp_path / 'db.sqlite'}") as catalog:
        catalog.promote("bot", "1", "prod")
    clock = Clock()
    router, controller = controlled(registry_config(tmp_path, "2"), clock)
    state = controller.plans["ab"].state
    assert (state.status, percent(router)) == ("rejected", 0)
    assert "acc=0.7, below bot:1's 0.8" in state.reason
    assert set(serve(router, 30)) == {"a"}

    router, controller = controlled(registry_config(tmp_path, "3"), clock)  # 0.79 ≥ 0.8 × 0.95
    assert (controller.plans["ab"].state.status, percent(router)) == ("running", 100)
    serve(router, 3)
    controller.tick()
    assert controller.plans["ab"].state.status == "completed"
    with open_catalog(f"sqlite:///{tmp_path / 'db.sqlite'}") as catalog:
        prod = catalog.alias("bot", "prod")
    assert prod is not None
    assert prod.version == "3"


def test_a_real_server_advances_under_traffic_keeps_its_step_across_a_restart(tmp_path: Path) -> None:
    stubs = {name: start_stub("--reply", f"answer from {name}", "--tokens", "4") for name in ("old", "new")}
    try:
        server = {
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
                        "min_samples": 1000,  # two like stubs: no latency verdict from loopback noise
                        "rollout": {"steps": [50, 100], "dwell_s": 1, "min_samples": 3},
                    },
                }
            ],
            "telemetry": {"database_url": f"sqlite:///{tmp_path / 'db.sqlite'}", "metering": False},
        }
        process = start_server(server, tmp_path)
        try:
            deadline = time.monotonic() + 20
            while rollouts(process.url)["bot"]["percent"] < 100 and time.monotonic() < deadline:
                chat(process.url)
            assert rollouts(process.url)["bot"]["step_index"] == 1
        finally:
            process.stop()
        process = start_server(server, tmp_path)
        try:
            state = rollouts(process.url)["bot"]
            assert (state["percent"], state["step_index"]) == (100, 1)
            admin = {"authorization": f"Bearer {ADMIN_KEY}"}
            aborted = httpx.post(f"{process.url}/admin/rollouts/bot", json={"action": "abort"}, headers=admin)
            assert (aborted.json()["status"], aborted.json()["percent"]) == ("aborted", 0)
            again = httpx.post(f"{process.url}/admin/rollouts/bot", json={"action": "resume"}, headers=admin)
            assert again.status_code == 409
            assert "aborted" in again.json()["error"]["message"]
            missing = httpx.post(
                f"{process.url}/admin/rollouts/nope", json={"action": "pause"}, headers=admin
            )
            assert missing.status_code == 404
            assert chat(process.url).headers["x-inferline-model"] == "old"
        finally:
            process.stop()
    finally:
        for stub in stubs.values():
            stub.stop()


def rollouts(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/admin/rollouts", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    response.raise_for_status()
    return dict(response.json()["rollouts"])


def chat(url: str) -> httpx.Response:
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "bot", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    response.raise_for_status()
    return response


class FailingWrites:
    """The next `times` writes of the rollouts table fail, as a database that drops a connection would."""

    def __init__(self, times: int) -> None:
        self.times = times

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.times and statement.lstrip().upper().startswith("DELETE FROM ROLLOUTS"):
            self.times -= 1
            raise OperationalError(statement, None, Exception("disk I/O error"))

    def __enter__(self) -> FailingWrites:
        event.listen(Engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        event.remove(Engine, "before_cursor_execute", self)


def stored(tmp_path: Path) -> str:
    state = RolloutStore(f"sqlite:///{tmp_path / 'db.sqlite'}").load("ab")
    assert state is not None
    return state.status


def test_a_transient_database_error_is_retried_and_the_transition_is_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = config(tmp_path / "db.sqlite", {"steps": [5, 25, 100], "dwell_s": 30, "min_samples": 2})
    _, controller = controlled(server, Clock())
    with FailingWrites(times=1) as failing:
        assert controller.act("ab", "pause").status == "paused"
    assert failing.times == 0  # the fault did happen
    assert (
        "storing its state (paused) failed: Exception: disk I/O error; trying again (2 of 3)" in caplog.text
    )
    assert stored(tmp_path) == "paused"  # a restart resumes paused


def test_a_transition_the_database_refuses_for_longer_is_stored_at_a_later_tick(tmp_path: Path) -> None:
    server = config(tmp_path / "db.sqlite", {"steps": [5, 25, 100], "dwell_s": 30, "min_samples": 2})
    router, controller = controlled(server, Clock())
    with FailingWrites(times=3), pytest.raises(RolloutError, match="cannot write the rollouts table"):
        controller.act("ab", "abort")
    assert percent(router) == 0  # the router acts on it at once
    assert stored(tmp_path) == "running"
    controller.tick()  # the database is back
    assert stored(tmp_path) == "aborted"
