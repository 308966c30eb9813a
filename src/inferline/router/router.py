"""The router: from a public model name and a caller to the deployment that answers.

`run()` does, in order: quotas (the tenant's rate and concurrency limits), the policy's order of
deployments, admission (degrade to the route's smaller target, or 429, when the pick's queue wait is
over the caller's class budget), then attempts: skip deployments whose circuit is open, hold the
worst-case cost against every budget above the caller, take a concurrency slot, and call. A failed
attempt (unreachable, timed out, overloaded) falls back to the next deployment, up to the route's
max_attempts; a cascade stage whose answer is not confident escalates to the next stage. Each try is
an `Attempt` (attempt.py) that owns its hold, slot, breaker probe and span and gives them back on its
one exit. The caller gets a `Routed` whose `complete()` it calls once when the answer has been
delivered: that closes the answering attempt and hands the outcome to the `UsageRecorder`, which bills
the tokens, feeds the canary and per-arm figures, and emits the UsageRecord.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from opentelemetry.trace import Span

from inferline.config import CascadeConfig, RouteConfig, ServerConfig
from inferline.errors import (
    BackendUnavailableError,
    LimitExceededError,
    ModelNotFoundError,
    ModelNotReadyError,
    QueueFullError,
)
from inferline.router import policies
from inferline.router.attempt import BUSY, UNAVAILABLE, Attempt, Delivered, Routed
from inferline.router.deployments import Deployment, DeploymentPool
from inferline.router.limits import Admission, Limiter
from inferline.router.recorder import UsageRecorder
from inferline.router.request import Answer, Caller, WorstCase
from inferline.router.route_state import RouteState
from inferline.telemetry import tracing
from inferline.types import UsageRecord

logger = logging.getLogger(__name__)

T = TypeVar("T")

Call = Callable[[Deployment, bool], Awaitable[T]]
"""Run the request on this deployment; the flag is False for a cascade stage that may be escalated
(its answer must be complete, not a stream). Raises to fail over."""


def escalation_reason(config: CascadeConfig, answer: Answer) -> str | None:
    """Why a cascade stage's answer is not good enough to return, or None when it is."""
    if config.escalate_on_empty and not answer.text.strip():
        return "empty answer"
    if config.escalate_on_invalid_tool_call and answer.invalid_tool_call is not None:
        return f"invalid tool call: {answer.invalid_tool_call}"
    for pattern in config.escalate_patterns:
        if re.search(pattern, answer.text, re.IGNORECASE):
            return f"answer matches {pattern!r}"
    threshold = config.min_mean_logprob
    if threshold is not None and answer.mean_logprob is not None and answer.mean_logprob < threshold:
        return f"mean token log-probability {answer.mean_logprob:.2f} < {threshold:g}"
    return None


@dataclass
class _Run(Generic[T]):
    """One request's way through its candidates."""

    state: RouteState
    caller: Caller
    admission: Admission
    call: Call[T]
    worst_case: WorstCase
    judge: Callable[[T], Answer] | None
    degraded: bool = False
    backend_s: float = 0.0
    escalated: list[tuple[Deployment, Answer]] = field(default_factory=list)
    last_error: Exception | None = None
    skipped: list[Deployment] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def decision(self, answered: Deployment | None, stage: int | None) -> dict[str, Any]:
        """The route span's attributes: what the router chose for the request, and what it tried first."""
        attributes: dict[str, Any] = {
            "inferline.route.attempts": len(self.failed) + len(self.escalated) + (answered is not None)
        }
        if self.failed:
            attributes["inferline.route.fallbacks"] = self.failed
        if self.skipped:
            attributes["inferline.route.skipped"] = [d.name for d in self.skipped]
        if answered is not None:
            attributes["inferline.route.deployment"] = answered.name
            if self.degraded:
                attributes["inferline.route.degraded"] = True
            if stage is not None:
                attributes["inferline.route.cascade_stage"] = stage
        return attributes


class Router:
    def __init__(self, config: ServerConfig, pool: DeploymentPool, limiter: Limiter, seed: int = 0) -> None:
        self.config = config
        self.pool = pool
        self.limiter = limiter
        self.recorder = UsageRecorder(limiter)
        self.rng = random.Random(seed)
        self.routes: dict[str, RouteState] = {r.name: RouteState(r) for r in config.routes}
        for name, deployment in pool.by_name.items():
            if name not in self.routes:
                fixed = RouteConfig(name=name, policy="fixed", deployments=[deployment.name])
                self.routes[name] = RouteState(fixed, implicit=True)

    @property
    def listeners(self) -> list[Callable[[UsageRecord], None]]:
        """Called with every request's UsageRecord."""
        return self.recorder.listeners

    def resolve(self, name: str) -> RouteState:
        state = self.routes.get(name)
        if state is None:
            known = ", ".join(sorted(self.routes))
            raise ModelNotFoundError(f"model {name!r} does not exist; this server serves: {known}")
        return state

    def check_ready(self, name: str) -> None:
        """ModelNotReadyError when no deployment of this route is loaded."""
        members = [self.pool.by_name[n] for n in self.resolve(name).config.members()]
        if not any(d.ready for d in members):
            states = ", ".join(
                f"{d.name} ({'failed to load: ' + d.error if d.error else 'still loading'})" for d in members
            )
            raise ModelNotReadyError(f"model {name!r} cannot serve yet: {states}")

    # ---- the request path ---------------------------------------------------------------------

    async def run(
        self,
        name: str,
        caller: Caller,
        call: Call[T],
        worst_case: WorstCase,
        judge: Callable[[T], Answer] | None = None,
    ) -> Routed[T]:
        state = self.resolve(name)
        try:
            admission = await self.limiter.acquire(caller.principal)
        except LimitExceededError as error:  # a quota: metered as a rejection like every refusal
            await self.recorder.refused(state, caller, None, 0.0, error)
            raise
        run = _Run(state, caller, admission, call, worst_case, judge)
        route = state.config
        span = tracing.start_span(f"route {route.name}", {"inferline.route.policy": route.policy})
        try:
            with tracing.use_span(span):
                names, run.degraded = self._plan(state, caller)
                return await self._attempts(run, names, span)
        except BaseException as error:
            await self.recorder.refused(state, caller, admission, run.backend_s, error)
            tracing.end_span(span, run.decision(None, None), error)
            raise

    def _plan(self, state: RouteState, caller: Caller) -> tuple[list[str], bool]:
        """The candidates in order, and whether the route degraded to its smaller target."""
        route = state.config
        key = (
            caller.principal.tenant if route.sticky_by == "tenant" else caller.user or caller.principal.tenant
        )
        draw = self.rng.random() if route.sticky_by == "none" else policies.sticky_draw(route.name, key)
        if state.canary is not None:
            pick = state.canary.choose(draw)
            baseline = state.canary.config.baseline
            names = list(dict.fromkeys([pick, baseline, *route.fallbacks]))
        else:
            names = policies.order(route, self.pool.by_name, state.weights, draw)
        return self._admit(state, caller, names)

    def _admit(self, state: RouteState, caller: Caller, names: list[str]) -> tuple[list[str], bool]:
        route = state.config
        budget_s = self.config.admission.max_wait_s(caller.priority.name.lower())  # type: ignore[arg-type]
        first = self.pool.by_name[names[0]]
        wait_s = first.estimated_wait_s()
        if wait_s <= budget_s:
            return names, False
        target = self.pool.by_name.get(route.degrade_to) if route.degrade_to else None
        if target is not None and target is not first and target.estimated_wait_s() <= budget_s:
            logger.info(
                "route %s degraded from %s to %s: wait %.2f s > %.2f s budget",
                route.name,
                first.name,
                target.name,
                wait_s,
                budget_s,
            )
            return [target.name, *(n for n in route.fallbacks if n not in (first.name, target.name))], True
        priority = caller.priority.name.lower()
        raise QueueFullError(
            f"model {route.name!r} is overloaded: a {priority} request would wait about {wait_s:.1f} s, over "
            f"its budget of {budget_s:g} s (admission.{priority}_max_wait_s)"
            + ("" if route.degrade_to else ", and the route has no degrade_to target")
            + f"; retry in {max(1, round(wait_s - budget_s))} s",
            retry_after_s=max(1.0, wait_s - budget_s),
        )

    async def _attempts(self, run: _Run[T], names: list[str], span: Span | None) -> Routed[T]:
        route = run.state.config
        cascade = route.policy == "cascade" and run.judge is not None
        tried = 0
        for index, name in enumerate(names):
            deployment = self.pool.by_name[name]
            if tried >= route.max_attempts:
                break
            probe = deployment.breaker.enter() if deployment.ready else None
            if probe is None:
                run.skipped.append(deployment)
                # Counted against the arm: a canary whose circuit is open is failing, not idle.
                run.state.arms[deployment.name].record(0.0, True)
                run.state.judge_canary()
                continue
            tried += 1
            final = not cascade or index == len(names) - 1 or names[index + 1] not in route.deployments
            stage = (
                route.deployments.index(name) + 1
                if name in route.deployments and route.policy == "cascade"
                else None
            )
            routed = await self._try(run, deployment, probe, final, stage, span)
            if routed is not None:
                return routed
        raise self._exhausted(run)

    async def _try(
        self,
        run: _Run[T],
        deployment: Deployment,
        probe: bool,
        final: bool,
        stage: int | None,
        route_span: Span | None,
    ) -> Routed[T] | None:
        """One attempt; None when it failed over or was escalated."""
        hold = self._worst_cost(deployment, run.worst_case) + sum(
            d.config.cost_usd(a.prompt_tokens, a.completion_tokens) for d, a in run.escalated
        )
        attempt = Attempt(deployment, run.state.config.name, self.limiter, run.admission, hold, probe)
        async with attempt:
            try:
                with tracing.use_span(attempt.span):
                    value = await run.call(deployment, final)
            except (*UNAVAILABLE, *BUSY) as error:
                run.backend_s += attempt.backend_s
                self._failed(run, attempt, error)
                await attempt.close(error)
                return None
            first_result_s = attempt.answered()
            run.backend_s += attempt.backend_s
            if not final and run.judge is not None:
                answer = run.judge(value)
                reason = escalation_reason(run.state.config.cascade, answer)
                if reason is not None:
                    logger.info(
                        "request %s: cascade stage %s escalated: %s",
                        run.caller.request_id,
                        deployment.name,
                        reason,
                    )
                    run.state.arms[deployment.name].record(first_result_s, False)
                    run.escalated.append((deployment, answer))
                    await attempt.close(attributes={"inferline.cascade.escalated": reason})
                    return None
            attempt.keep()
        return self._routed(run, attempt, value, stage, route_span)

    def _routed(
        self, run: _Run[T], attempt: Attempt, value: T, stage: int | None, route_span: Span | None
    ) -> Routed[T]:
        """The answer, with the one way to end it: close the attempt, then bill and record."""
        state, escalated, degraded = run.state, list(run.escalated), run.degraded
        if route_span is not None:
            route_span.set_attributes(run.decision(attempt.deployment, stage))

        async def finish(delivered: Delivered) -> None:
            if attempt.closed:
                return
            outcome = delivered.outcome
            attributes = tracing.delivery_attributes(
                delivered.prompt_tokens, delivered.completion_tokens, outcome
            )
            try:
                await attempt.close("error" if outcome == "error" else None, attributes)
            finally:
                tracing.end_span(route_span, error="error" if outcome == "error" else None)
                await self.recorder.delivered(
                    state, run.caller, run.admission, attempt, delivered, escalated, stage, degraded
                )

        headers = {**attempt.deployment.headers, "x-inferline-route": state.config.name}
        if stage is not None:
            headers["x-inferline-cascade-stage"] = str(stage)
        if degraded:
            headers["x-inferline-degraded"] = "true"
        return Routed(value, attempt.deployment, headers, run.backend_s, stage, degraded, finish)

    def _failed(self, run: _Run[T], attempt: Attempt, error: Exception) -> None:
        deployment = attempt.deployment
        self.recorder.failed_attempt(run.state, deployment, time.perf_counter() - attempt.started)
        run.last_error = error
        run.failed.append(deployment.name)
        logger.warning(
            "request %s: deployment %s failed (%s); trying the next one",
            run.caller.request_id,
            deployment.name,
            error,
        )

    def _exhausted(self, run: _Run[T]) -> Exception:
        route = run.state.config.name
        if run.last_error is None and run.skipped:
            waits = [d.breaker.retry_after_s() for d in run.skipped if d.ready]
            states = ", ".join(
                f"{d.name} ({'circuit ' + d.breaker.state if d.ready else d.error or 'loading'})"
                for d in run.skipped
            )
            return ModelNotReadyError(
                f"model {route!r} has no deployment able to serve now: {states}",
                retry_after_s=max(1.0, min(waits)) if waits else 2.0,
            )
        if isinstance(run.last_error, QueueFullError) and len(run.skipped) == 0:
            return run.last_error
        # The causes (with upstream addresses) are in the server's log, not in what the client reads.
        tried = ", ".join(dict.fromkeys(run.failed))
        return BackendUnavailableError(
            f"model {route!r}: every deployment tried failed ({tried}); retry shortly", retry_after_s=1.0
        )

    def _worst_cost(self, deployment: Deployment, worst: WorstCase) -> float:
        each = worst.completion_tokens
        if each is None:
            each = deployment.max_output_tokens
        return deployment.config.cost_usd(worst.prompt_tokens, each * worst.completions)

    # ---- admin --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {name: state.snapshot(self.pool) for name, state in self.routes.items()}
