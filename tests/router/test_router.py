"""The router's policies and failure handling, with stand-in deployments whose behaviour each test sets.

The router only asks a backend for its queue estimate; what a deployment answers is the `attempt`
each test passes, so every outcome (an answer, a failure, a slow queue) is chosen here.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from inferline.backends.base import BackendStats, ModelMetadata
from inferline.config import ServerConfig
from inferline.errors import (
    BackendUnavailableError,
    InvalidRequestError,
    LimitExceededError,
    ModelNotReadyError,
    QueueFullError,
)
from inferline.router.attempt import Routed
from inferline.router.deployments import Deployment, DeploymentPool
from inferline.router.limits import Limiter, Principal
from inferline.router.request import Answer, Caller, WorstCase
from inferline.router.router import Router
from inferline.types import Priority, UsageRecord


class StandIn:
    """A backend with a settable queue estimate; the router never calls it for answers."""

    def __init__(self, name: str) -> None:
        self.metadata = ModelMetadata(name=name, kind="llm", max_model_len=100)
        self.wait_s = 0.0

    def stats(self) -> BackendStats:
        return BackendStats(queue_depth=0, running=0, estimated_wait_s=self.wait_s)


def deployment(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "kind": "remote", "base_url": "http://127.0.0.1:9/v1", **fields}


def make_router(config: dict[str, Any], seed: int = 0) -> tuple[Router, list[UsageRecord]]:
    server = ServerConfig.model_validate(config)
    pool = DeploymentPool(server.deployments, [StandIn(d.name) for d in server.deployments])  # type: ignore[misc]
    for d in pool.deployments:
        d.ready = True
    router = Router(server, pool, Limiter.from_config(server), seed=seed)
    records: list[UsageRecord] = []
    router.listeners.append(records.append)
    return router, records


def caller(
    user: str | None = None, tenant: str = "t", priority: Priority = Priority.CONVERSATIONAL
) -> Caller:
    return Caller("req", Principal(tenant), priority, user)


Behaviour = Callable[[Deployment, bool], Awaitable[str]]


def answers(failing: set[str] = frozenset(), calls: list[str] | None = None) -> Behaviour:  # type: ignore[assignment]
    """Each deployment answers with its own name, except the failing ones."""

    async def attempt(deployment: Deployment, final: bool) -> str:
        if calls is not None:
            calls.append(deployment.name)
        if deployment.name in failing:
            raise BackendUnavailableError(f"{deployment.name} is down")
        return deployment.name

    return attempt


def route(router: Router, name: str, attempt: Behaviour, who: Caller | None = None, **kw: Any) -> Routed[str]:
    async def go() -> Routed[str]:
        routed = await router.run(name, who or caller(), attempt, WorstCase(10, 10), **kw)
        await routed.complete(10, 10)
        return routed

    return asyncio.run(go())


def test_every_deployment_name_is_a_fixed_route() -> None:
    router, records = make_router({"deployments": [deployment("a", aliases=["alias-a"])]})
    routed = route(router, "alias-a", answers())
    assert routed.value == "a"
    assert routed.headers["x-inferline-deployment"] == "a@1"
    assert routed.headers["x-inferline-route"] == "alias-a"
    assert [(r.route, r.deployment, r.outcome) for r in records] == [("alias-a", "a", "ok")]


WEIGHTED = {
    "deployments": [deployment("a"), deployment("b")],
    "routes": [{"name": "ab", "policy": "weighted", "weights": {"a": 3, "b": 1}}],
}


def test_weighted_split_follows_the_weights_and_sticks_to_each_user() -> None:
    router, _ = make_router(WEIGHTED)
    arms = {f"user-{i}": route(router, "ab", answers(), caller(f"user-{i}")).value for i in range(800)}
    share_a = Counter(arms.values())["a"] / len(arms)
    assert 0.70 < share_a < 0.80
    for user in list(arms)[:50]:  # the same user lands on the same arm every time
        assert route(router, "ab", answers(), caller(user)).value == arms[user]
    snapshot = router.snapshot()["ab"]["arms"]
    assert snapshot["a"]["requests"] + snapshot["b"]["requests"] == 850  # per-arm figures


def test_unsticky_split_is_reproducible_with_a_seed() -> None:
    config = {**WEIGHTED, "routes": [{**WEIGHTED["routes"][0], "sticky_by": "none"}]}
    runs = []
    for _ in range(2):
        router, _ = make_router(config, seed=7)
        runs.append([route(router, "ab", answers(), caller("same-user")).value for _ in range(40)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {"a", "b"}  # one user is spread over both arms


PRICED = {
    "deployments": [
        deployment(
            "cheap", price_input_per_1m=0.1, price_output_per_1m=0.2, quality=1, latency_objective_ms=500
        ),
        deployment("mid", price_input_per_1m=1, price_output_per_1m=2, quality=2, latency_objective_ms=500),
        deployment("premium", price_input_per_1m=5, price_output_per_1m=15, quality=3),
    ],
    "routes": [
        {"name": "cheapest", "policy": "cheapest", "deployments": ["premium", "mid", "cheap"]},
        {"name": "fastest", "policy": "fastest", "deployments": ["premium", "mid", "cheap"]},
        {
            "name": "best",
            "policy": "best_quality",
            "deployments": ["cheap", "mid", "premium"],
            "max_price_per_1m": 5,
        },
    ],
}


def test_cheapest_skips_a_deployment_whose_live_estimate_misses_its_objective() -> None:
    router, _ = make_router(PRICED)
    assert route(router, "cheapest", answers()).value == "cheap"
    router.pool.by_name["cheap"].backend.wait_s = 2.0  # type: ignore[attr-defined]
    assert route(router, "cheapest", answers()).value == "mid"
    router.pool.by_name["mid"].backend.wait_s = 3.0  # type: ignore[attr-defined]
    # Neither meets its objective: the fastest answers rather than nobody.
    assert route(router, "cheapest", answers()).value == "premium"


def test_fastest_follows_the_live_estimates() -> None:
    router, _ = make_router(PRICED)
    for name, seconds in [("premium", 0.3), ("mid", 0.1), ("cheap", 0.2)]:
        router.pool.by_name[name].stats.record_first_result(seconds)
    assert route(router, "fastest", answers()).value == "mid"
    router.pool.by_name["mid"].backend.wait_s = 1.0  # type: ignore[attr-defined]
    assert route(router, "fastest", answers()).value == "cheap"


def test_best_quality_respects_the_price_cap() -> None:
    router, _ = make_router(PRICED)
    assert route(router, "best", answers()).value == "mid"  # premium's output price 15 > cap 5


CASCADE = {
    "deployments": [
        deployment("small", price_output_per_1m=1_000_000),
        deployment("large", price_output_per_1m=2_000_000),
    ],
    "routes": [
        {
            "name": "auto",
            "policy": "cascade",
            "deployments": ["small", "large"],
            "cascade": {"min_mean_logprob": -1.0, "escalate_patterns": ["^I can(no|')t"]},
        }
    ],
}


def cascade_run(router: Router, small_answer: Answer) -> tuple[Routed[str], list[tuple[str, bool]]]:
    seen: list[tuple[str, bool]] = []

    async def attempt(deployment: Deployment, final: bool) -> str:
        seen.append((deployment.name, final))
        return deployment.name

    def judge(value: str) -> Answer:
        return small_answer if value == "small" else Answer("fine", -0.1, 10, 10)

    async def go() -> Routed[str]:
        routed = await router.run("auto", caller(), attempt, WorstCase(10, 10), judge)
        await routed.complete(10, 10)
        return routed

    return asyncio.run(go()), seen


@pytest.mark.parametrize(
    ("answer", "stage"),
    [
        (Answer("Paris.", -0.2, 10, 5), 1),
        (Answer("Paris?", -2.5, 10, 5), 2),  # not confident
        (Answer("   ", -0.1, 10, 5), 2),  # empty
        (Answer("I can't help with that.", -0.1, 10, 5), 2),  # refused
        (Answer("<tool_call>...", -0.1, 10, 5, "a call names function 'x'"), 2),  # an invalid tool call
    ],
)
def test_cascade_escalates_when_the_cheap_answer_is_not_good_enough(answer: Answer, stage: int) -> None:
    router, records = make_router(CASCADE)
    routed, seen = cascade_run(router, answer)
    assert routed.stage == stage
    assert routed.headers["x-inferline-cascade-stage"] == str(stage)
    assert seen[0] == ("small", False)  # the cheap stage runs to the end so it can be judged
    if stage == 2:
        assert seen[1] == ("large", True)
        # Both stages are billed: 5 small tokens at $1/token plus 10 large ones at $2.
        assert records[-1].cost == pytest.approx(5 * 1.0 + 10 * 2.0)


def test_a_cascade_answered_by_its_fallback_has_no_stage() -> None:
    config = {
        "deployments": [*CASCADE["deployments"], deployment("backup")],
        "routes": [{**CASCADE["routes"][0], "fallbacks": ["backup"]}],
    }
    router, records = make_router(config)
    judge = lambda value: Answer("fine", -0.1, 10, 10)  # noqa: E731

    async def go() -> Routed[str]:
        routed = await router.run("auto", caller(), answers({"small", "large"}), WorstCase(10, 10), judge)
        await routed.complete(10, 10)
        return routed

    routed = asyncio.run(go())
    assert routed.value == "backup"
    assert routed.stage is None
    assert "x-inferline-cascade-stage" not in routed.headers
    assert (records[-1].deployment, records[-1].cascade_stage, records[-1].outcome) == ("backup", None, "ok")


def test_fallback_on_failure_is_bounded_by_max_attempts() -> None:
    config = {
        "deployments": [deployment(n) for n in "abcd"],
        "routes": [
            {
                "name": "r",
                "policy": "fixed",
                "deployments": ["a"],
                "fallbacks": ["b", "c", "d"],
                "max_attempts": 3,
            }
        ],
    }
    router, records = make_router(config)
    calls: list[str] = []
    assert route(router, "r", answers({"a"}, calls)).value == "b"
    calls.clear()
    with pytest.raises(BackendUnavailableError, match="every deployment tried failed"):
        route(router, "r", answers({"a", "b", "c"}, calls))
    assert calls == ["a", "b", "c"]  # d would answer, but three attempts is the limit
    assert records[-1].outcome == "error"


def test_a_bad_request_is_not_retried_elsewhere() -> None:
    config = {
        "deployments": [deployment("a"), deployment("b")],
        "routes": [{"name": "r", "deployments": ["a"], "fallbacks": ["b"]}],
    }
    router, _ = make_router(config)
    calls: list[str] = []

    async def attempt(deployment: Deployment, final: bool) -> str:
        calls.append(deployment.name)
        raise InvalidRequestError("max_tokens is too large", "max_tokens")

    with pytest.raises(InvalidRequestError):
        route(router, "r", attempt)
    assert calls == ["a"]


def test_circuit_opens_after_failures_and_a_probe_closes_it() -> None:
    config = {
        "deployments": [
            deployment("a", circuit_breaker={"failure_threshold": 3, "window_s": 60, "cooldown_s": 5}),
            deployment("b"),
        ],
        "routes": [{"name": "r", "deployments": ["a"], "fallbacks": ["b"]}],
    }
    router, _ = make_router(config)
    now = [1000.0]
    breaker = router.pool.by_name["a"].breaker
    breaker.clock = lambda: now[0]
    calls: list[str] = []
    for _ in range(3):
        assert route(router, "r", answers({"a"}, calls)).value == "b"
    assert breaker.state == "open"
    calls.clear()
    for _ in range(5):  # open: a is not even called, by the policy's pick or any fallback path
        assert route(router, "r", answers(set(), calls)).value == "b"
    assert calls == ["b"] * 5
    now[0] += 5.0
    assert breaker.state == "half_open"
    calls.clear()
    assert route(router, "r", answers({"a"}, calls)).value == "b"  # the probe fails: open again
    assert calls == ["a", "b"]
    assert breaker.state == "open"
    now[0] += 5.0
    assert route(router, "r", answers(set())).value == "a"  # the probe succeeds: closed
    assert breaker.state == "closed"


def test_all_circuits_open_is_503_with_retry_after() -> None:
    config = {"deployments": [deployment("a", circuit_breaker={"failure_threshold": 1, "cooldown_s": 30})]}
    router, _ = make_router(config)
    with pytest.raises(BackendUnavailableError):
        route(router, "a", answers({"a"}))
    with pytest.raises(ModelNotReadyError, match="circuit open") as error:
        route(router, "a", answers())
    assert 25 < error.value.retry_after_s <= 30


def test_canary_rolls_back_when_the_candidate_errs_more() -> None:
    config = {
        "deployments": [deployment("v1"), deployment("v2")],
        "routes": [
            {
                "name": "chat",
                "policy": "canary",
                "sticky_by": "none",
                "canary": {"baseline": "v1", "candidate": "v2", "percent": 30, "min_samples": 10},
            }
        ],
    }
    router, _ = make_router(config, seed=3)
    served = [route(router, "chat", answers({"v2"})).value for _ in range(80)]
    state = router.resolve("chat")
    assert state.canary is not None
    assert state.canary.status == "rolled_back"
    assert "error rate" in state.canary.decisions[-1].reason
    assert set(served) == {"v1"}  # the candidate's failures fell back to the baseline
    calls: list[str] = []
    for _ in range(20):
        route(router, "chat", answers(set(), calls))
    assert set(calls) == {"v1"}  # after the rollback the candidate gets nothing
    assert router.snapshot()["chat"]["canary"]["status"] == "rolled_back"


def test_canary_rolls_back_on_slower_p95_but_not_on_equal_figures() -> None:
    config = {
        "deployments": [deployment("v1"), deployment("v2")],
        "routes": [
            {
                "name": "chat",
                "policy": "canary",
                "canary": {"baseline": "v1", "candidate": "v2", "min_samples": 5},
            }
        ],
    }
    router, _ = make_router(config)
    state = router.resolve("chat")
    assert state.canary is not None
    for _ in range(10):
        state.arms["v1"].record(0.1, False)
        state.arms["v2"].record(0.1, False)
    state.judge_canary()
    assert state.canary.status == "active"
    for _ in range(10):
        state.arms["v2"].record(0.5, False)
    state.judge_canary()
    assert state.canary.status == "rolled_back"
    assert "p95 latency" in state.canary.decisions[-1].reason


OVERLOAD = {
    "deployments": [deployment("big"), deployment("small")],
    "admission": {"interactive_max_wait_s": 0.5},
    "routes": [
        {"name": "with-target", "deployments": ["big"], "degrade_to": "small"},
        {"name": "without", "deployments": ["big"]},
    ],
}


def test_overload_degrades_to_the_smaller_target_or_is_refused_at_once() -> None:
    router, _ = make_router(OVERLOAD)
    interactive = caller(priority=Priority.INTERACTIVE)
    assert route(router, "with-target", answers(), interactive).value == "big"
    router.pool.by_name["big"].backend.wait_s = 2.0  # type: ignore[attr-defined]
    routed = route(router, "with-target", answers(), interactive)
    assert (routed.value, routed.headers["x-inferline-degraded"]) == ("small", "true")
    with pytest.raises(QueueFullError, match="interactive_max_wait_s") as error:
        route(router, "without", answers(), interactive)
    assert error.value.retry_after_s == pytest.approx(1.5)
    # A batch request's budget is larger: the same queue is fine for it.
    assert route(router, "without", answers(), caller(priority=Priority.BATCH)).value == "big"


def test_a_full_deployment_estimates_its_queue_from_what_it_has_seen() -> None:
    router, _ = make_router({"deployments": [deployment("a", max_concurrency=2, timeout_s=9)]})
    a = router.pool.by_name["a"]
    assert a.estimated_wait_s() == 0.0
    a.in_flight = 2
    assert a.estimated_wait_s() == 9.0  # nothing seen yet: assume the worst
    a.stats.record(0.4, False)
    a.waiting = 3
    assert a.estimated_wait_s() == pytest.approx(2 * 0.4)  # 4 ahead, 2 at a time, 0.4 s each


def test_budget_holds_stop_spend_at_the_exact_boundary() -> None:
    config = {
        "deployments": [deployment("a", price_output_per_1m=1_000_000)],  # $1 per output token
        "tenants": [{"name": "t", "api_keys": ["k"], "budget": {"limit_usd": 30, "period": "day"}}],
    }
    router, _ = make_router(config)
    for _ in range(3):  # each request may use 10 tokens ($10): three fit in $30 exactly
        route(router, "a", answers())
    with pytest.raises(LimitExceededError, match=r"spent \$30.00 of its \$30.00") as error:
        route(router, "a", answers())
    assert (error.value.scope, error.value.limit) == ("tenant:t", "budget")
    budget = asyncio.run(router.limiter.snapshot())["tenant:t"]["budget"]
    assert (budget["spent_usd"], budget["held_usd"]) == (30.0, 0.0)


def test_quota_refusals_are_metered_as_rejections() -> None:
    config = {
        "deployments": [deployment("a")],
        "tenants": [{"name": "t", "api_keys": ["k"], "quotas": {"requests_per_minute": 1}}],
    }
    router, records = make_router(config)
    route(router, "a", answers())
    with pytest.raises(LimitExceededError, match="requests_per_minute"):
        route(router, "a", answers())
    assert [(r.outcome, r.tenant, r.route, r.error_type) for r in records] == [
        ("ok", "t", "a", ""),
        ("rejected", "t", "a", "LimitExceededError"),
    ]
