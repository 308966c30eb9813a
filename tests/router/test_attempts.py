"""Every way an attempt can end leaves nothing behind: no concurrency slot, no budget hold, no quota
slot, no half-open probe. Checked on the limiter's and the deployments' own state after each ending."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from inferline.errors import BackendUnavailableError, InvalidRequestError, LimitExceededError
from inferline.router.deployments import Deployment
from inferline.router.request import WorstCase
from inferline.router.router import Router
from tests.router.test_router import caller, deployment, make_router

CONFIG = {
    "deployments": [
        deployment("a", max_concurrency=1, timeout_s=0.2, price_output_per_1m=1000),
        deployment("b", max_concurrency=1, price_output_per_1m=1000),
    ],
    "routes": [{"name": "ab", "policy": "fixed", "deployments": ["a"], "fallbacks": ["b"]}],
    "tenants": [
        {
            "name": "t",
            "api_keys": ["k"],
            "quotas": {"max_concurrent": 5},
            "budget": {"limit_usd": 1000, "period": "total"},
        }
    ],
}


async def leftovers(router: Router) -> dict[str, Any]:
    """What is still held anywhere; empty when every attempt has given everything back."""
    snapshot = await router.limiter.snapshot()
    held: dict[str, Any] = {}
    if snapshot["tenant:t"]["budget"]["held_usd"]:
        held["budget_held_usd"] = snapshot["tenant:t"]["budget"]["held_usd"]
    if snapshot["tenant:t"]["quotas"]["max_concurrent"]["in_flight"]:
        held["quota_in_flight"] = snapshot["tenant:t"]["quotas"]["max_concurrent"]["in_flight"]
    for d in router.pool.deployments:
        if d.in_flight or d.waiting:
            held[f"{d.name}_slots"] = (d.in_flight, d.waiting)
        if d.breaker.probe_in_flight:
            held[f"{d.name}_probe"] = True
    return held


def run(attempt: Any, stream_outcome: str | None = "ok", route: str = "ab") -> tuple[Router, Any]:
    """One request through a fresh router; returns the router and what the request ended with."""
    router, _ = make_router(CONFIG)

    async def go() -> Any:
        try:
            routed = await router.run(route, caller(), attempt, WorstCase(10, 10))
        except BaseException as error:  # noqa: BLE001 - the ending under test, whatever it is
            return error
        if stream_outcome is not None:
            await routed.complete(5, 5, stream_outcome)
        return routed

    return router, asyncio.run(go())


def test_an_answer_delivered_gives_everything_back() -> None:
    async def answer(d: Deployment, final: bool) -> str:
        return d.name

    router, routed = run(answer)
    assert routed.value == "a"
    assert asyncio.run(leftovers(router)) == {}
    budget = asyncio.run(router.limiter.snapshot())["tenant:t"]["budget"]
    assert budget["spent_usd"] == pytest.approx(5 * 1000 / 1e6)  # billed for what was delivered


@pytest.mark.parametrize("outcome", ["error", "aborted"])
def test_a_stream_that_fails_or_loses_its_client_gives_everything_back(outcome: str) -> None:
    async def answer(d: Deployment, final: bool) -> str:
        return d.name

    router, routed = run(answer, outcome)
    assert routed.value == "a"
    assert asyncio.run(leftovers(router)) == {}
    if outcome == "error":  # an answer that broke after it started counts against the deployment
        assert router.pool.by_name["a"].stats.num_errors == 1


def test_upstream_errors_on_every_deployment_give_everything_back() -> None:
    async def down(d: Deployment, final: bool) -> str:
        raise BackendUnavailableError(f"{d.name} is down")

    router, error = run(down)
    assert isinstance(error, BackendUnavailableError)
    assert asyncio.run(leftovers(router)) == {}


def test_a_timeout_falls_back_and_gives_the_first_slot_back() -> None:
    async def slow_a(d: Deployment, final: bool) -> str:
        if d.name == "a":
            return await d.within(asyncio.sleep(5, "late"))
        return d.name

    router, routed = run(slow_a)
    assert routed.value == "b"
    assert asyncio.run(leftovers(router)) == {}


def test_a_bad_request_on_the_half_open_probe_releases_the_probe() -> None:
    router, _ = make_router(CONFIG)
    a = router.pool.by_name["a"]
    a.breaker.opened_at = a.breaker.clock() - a.breaker.config.cooldown_s  # half-open: one probe may go

    async def bad(d: Deployment, final: bool) -> str:
        raise InvalidRequestError("max_tokens is too large", "max_tokens")

    async def go() -> BaseException:
        with pytest.raises(InvalidRequestError) as error:
            await router.run("ab", caller(), bad, WorstCase(10, 10))
        return error.value

    asyncio.run(go())
    assert a.breaker.state == "half_open"  # no verdict on the deployment: the next request may probe
    assert asyncio.run(leftovers(router)) == {}


def test_an_open_circuit_is_skipped_without_taking_anything() -> None:
    router, _ = make_router(CONFIG)
    a = router.pool.by_name["a"]
    a.breaker.opened_at = a.breaker.clock()  # open

    async def answer(d: Deployment, final: bool) -> str:
        return d.name

    async def go() -> str:
        routed = await router.run("ab", caller(), answer, WorstCase(10, 10))
        await routed.complete(1, 1)
        return routed.value

    assert asyncio.run(go()) == "b"
    assert asyncio.run(leftovers(router)) == {}


def test_a_budget_refusal_on_the_probe_releases_the_probe() -> None:
    config = {**CONFIG, "tenants": [{**CONFIG["tenants"][0], "budget": {"limit_usd": 0.001}}]}
    router, _ = make_router(config)
    a = router.pool.by_name["a"]
    a.breaker.opened_at = a.breaker.clock() - a.breaker.config.cooldown_s

    async def answer(d: Deployment, final: bool) -> str:
        return d.name

    async def go() -> None:
        with pytest.raises(LimitExceededError):
            await router.run("ab", caller(), answer, WorstCase(10, 10))

    asyncio.run(go())
    assert asyncio.run(leftovers(router)) == {}


def test_cancellation_in_the_call_or_waiting_for_a_slot_gives_everything_back() -> None:
    router, _ = make_router(CONFIG)
    started = asyncio.Event()

    async def hang(d: Deployment, final: bool) -> str:
        started.set()
        await asyncio.sleep(60)
        return d.name

    async def go() -> dict[str, Any]:
        in_call = asyncio.create_task(router.run("ab", caller(), hang, WorstCase(10, 10)))
        await started.wait()
        waiting = asyncio.create_task(router.run("ab", caller(), hang, WorstCase(10, 10)))
        while not router.pool.by_name["a"].waiting:  # a's one slot is taken: the second request queues
            await asyncio.sleep(0)
        for task in (waiting, in_call):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return await leftovers(router)

    assert asyncio.run(go()) == {}


def test_a_caller_cancelled_as_its_work_finishes_is_cancelled() -> None:
    # asyncio.wait_for (3.11) returned the work's result here and lost the cancellation: a stream worker
    # kept running after its shutdown.
    router, _ = make_router(CONFIG)
    a = router.pool.by_name["a"]

    async def go() -> None:
        work: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        caller_task = asyncio.create_task(a.within(work))
        await asyncio.sleep(0)  # the caller now waits on the work
        work.set_result("done")
        caller_task.cancel()  # in the same loop iteration
        with pytest.raises(asyncio.CancelledError):
            await caller_task

    asyncio.run(go())
