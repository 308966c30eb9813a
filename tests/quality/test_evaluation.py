"""`inferline eval` and the gates that use quality: scores stored against registry versions refuse a worse
candidate before it gets any traffic, and a canary rolls back on live refusals or feedback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from inferline.cli import main
from inferline.quality.capture_store import FeedbackRow
from inferline.quality.evaluation import Case, evaluate, remote_answerer
from inferline.quality.loop import QualityLoop
from inferline.registry.catalog import open_catalog
from inferline.registry.signing import generate_key_pair
from inferline.router.arm_stats import ArmStats
from inferline.testing.stub_upstream import StubProcess, start_stub
from tests.registry.test_rollout import Clock, controlled, percent, push, registry_config, serve
from tests.router.test_router import deployment, make_router

CASES = [
    {"prompt": "Capital of France? One word.", "expected": "Paris"},
    {"prompt": "Where is the Eiffel tower?", "contains": ["paris"], "pattern": r"(?i)\bparis\b"},
]


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, StubProcess]]:
    started = {
        "good": start_stub("--reply", "Paris", "--tokens", "1"),
        "bad": start_stub("--reply", "unsure", "--tokens", "1"),
        "judge": start_stub("--reply", "4", "--tokens", "1"),
    }
    yield started
    for stub in started.values():
        stub.stop()


def test_rule_metrics_and_the_judge(stubs: dict[str, StubProcess]) -> None:
    cases = [
        Case(
            [{"role": "user", "content": c["prompt"]}],
            c.get("expected"),
            tuple(c.get("contains", ())),
            c.get("pattern"),
        )
        for c in CASES
    ]
    judge = remote_answerer(f"{stubs['judge'].url}/v1", "judge", None, 4)
    result = evaluate(
        cases,
        lambda conversations: ["paris.", "It is in Paris"],
        ["exact_match", "contains", "regex", "judge"],
        judge,
    )
    # exact_match: case 1 only ("paris." normalises to "paris"); regex: case 2 only; the judge said 4 of 5.
    assert result.scores == {"exact_match": 1.0, "contains": 1.0, "regex": 1.0, "judge": 0.75}
    worse = evaluate(cases, lambda conversations: ["Lyon", "no idea"], ["exact_match", "contains", "regex"])
    assert worse.scores == {"exact_match": 0.0, "contains": 0.0, "regex": 0.0}


def test_eval_scores_in_the_registry_make_the_rollout_refuse_a_worse_candidate(
    tmp_path: Path, stubs: dict[str, StubProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERLINE_HOME", str(tmp_path / "home"))
    keys = generate_key_pair(tmp_path)
    for version in ("1", "2"):
        push(tmp_path, keys, version, 0.5)  # the same pushed score: only the evaluation tells them apart
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with open_catalog(url) as catalog:
        catalog.promote("bot", "1", "prod")
    dataset = tmp_path / "cases.jsonl"
    dataset.write_text("".join(json.dumps(case) + "\n" for case in CASES))
    for version, stub in (("1", "good"), ("2", "bad")):
        argv = ["eval", "bot", "--dataset", str(dataset), "--metrics", "exact_match,contains"]
        argv += [
            "--base-url",
            f"{stubs[stub].url}/v1",
            "--store",
            f"registry:bot:{version}",
            "--database-url",
            url,
        ]
        assert main(argv) == 0
    with open_catalog(url) as catalog:
        assert catalog.resolve("bot", "prod").scores == {"acc": 0.5, "contains": 1.0, "exact_match": 1.0}
        assert catalog.resolve("bot", "2").scores == {"acc": 0.5, "contains": 0.0, "exact_match": 0.0}
    router, controller = controlled(registry_config(tmp_path, "2"), Clock())
    state = controller.plans["ab"].state
    assert (state.status, percent(router)) == ("rejected", 0)
    assert "contains=0, below bot:1's 1" in state.reason
    assert set(serve(router, 20)) == {"a"}  # not one request reached the candidate


def canary_router(**canary: object) -> QualityLoop:
    config = {
        "deployments": [deployment("a"), deployment("b")],
        "routes": [
            {
                "name": "ab",
                "policy": "canary",
                "canary": {"baseline": "a", "candidate": "b", "percent": 50, "min_samples": 5, **canary},
            }
        ],
        "quality": {"capture": {"max_recent": 0}},
    }
    router, _ = make_router(config)
    return QualityLoop(router.config.quality, "sqlite://", CollectorRegistry(), router)


def rating(deployment_name: str, score: float | None, label: str | None = None) -> FeedbackRow:
    return FeedbackRow("r", "t", "ab", deployment_name, "1", score, label, None, 0.0)


def test_the_canary_rolls_back_on_worse_feedback() -> None:
    loop = canary_router(max_feedback_drop=0.5, min_feedback=5)
    assert loop.router is not None
    canary = loop.router.routes["ab"].canary
    assert canary is not None
    for _ in range(5):
        loop.record_feedback(rating("a", 0.8))
        loop.record_feedback(rating("b", 0.6))  # within the margin
    assert canary.status == "active"
    for _ in range(5):
        loop.record_feedback(rating("b", None, "thumbs_down"))
    assert canary.status == "rolled_back"
    assert "mean feedback" in canary.decisions[-1].reason


def test_the_canary_judges_refusal_rates() -> None:
    loop = canary_router(max_refusal_rate_increase=0.1)
    assert loop.reads_bodies  # the answers must be read to count refusals
    assert loop.router is not None
    canary = loop.router.routes["ab"].canary
    assert canary is not None
    baseline, candidate = ArmStats(), ArmStats()
    for i in range(10):
        for arm in (baseline, candidate):
            arm.record(0.1, False)
        baseline.record_refusal(False)
        candidate.record_refusal(i % 2 == 0)
    canary.judge(baseline, candidate)
    assert canary.status == "rolled_back"
    assert "refusal rate 50.0%" in canary.decisions[-1].reason


def test_teacher_answers_replace_the_served_ones(stubs: dict[str, StubProcess], tmp_path: Path) -> None:
    exported = tmp_path / "flagged.jsonl"
    row = {
        "source": "server",
        "request_id": "r1",
        "ts": 1.0,
        "prompt": [{"role": "user", "content": "Capital?"}],
    }
    exported.write_text(json.dumps({**row, "completion": ["Lyon"], "lineage": {"policy": "fixed"}}) + "\n")
    out = tmp_path / "taught.jsonl"
    argv = ["data", "teach", str(exported), "-o", str(out), "--base-url", f"{stubs['good'].url}/v1"]
    assert main([*argv, "--model", "big", "--system", "Answer in one word."]) == 0
    [taught] = [json.loads(line) for line in out.read_text().splitlines()]
    assert taught["completion"] == ["Paris"]
    assert taught["lineage"] == {"policy": "fixed", "teacher": "big", "student_completion": ["Lyon"]}
