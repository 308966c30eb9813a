"""The router: from a public model name and a caller to the deployment that answers.

`run()` does, in order: quotas (the tenant's rate and concurrency limits), the policy's order of
deployments, admission (degrade to the route's smaller target, or 429, when the pick's queue wait is
over the caller's class budget), then attempts: skip deployments whose circuit is open, hold the
worst-case cost against every budget above the caller, take a concurrency slot, and call. A failed
attempt (unreachable, timed out, overloaded) falls back to the next deployment, up to the route's
max_attempts; a cascade stage whose answer is not confident escalates to the next stage. The caller
gets a `Routed` whose `complete()` it calls once when the answer has been delivered: that frees the
slot, bills the tokens, feeds the canary and per-arm figures, and emits the UsageRecord.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from opentelemetry.trace import Span

from inferline.config import CascadeConfig, RouteConfig, ServerConfig
from inferline.errors import (
    BackendUnavailableError,
    EngineStoppedError,
    InvalidRequestError,
    LimitExceededError,
    ModelNotFoundError,
    ModelNotReadyError,
    QueueFullError,
)
from inferline.router import policies
from inferline.router.arm_stats import ArmStats
from inferline.router.canary import Canary
from inferline.router.deployments import Deployment, DeploymentPool
from inferline.router.limits import Admission, Limiter, Principal
from inferline.telemetry import tracing
from inferline.types import Priority, UsageRecord

logger = logging.getLogger(__name__)

T = TypeVar("T")

_UNAVAILABLE = (BackendUnavailableError, EngineStoppedError)
"""Failures that say nothing about the request: count against the breaker, fall back."""
_BUSY = (QueueFullError,)
"""The deployment is full: fall back, but it is not broken."""


@dataclass(frozen=True)
class Caller:
    request_id: str
    principal: Principal
    priority: Priority
    user: str | None = None
    """The body's `user` field; sticky splits key on it."""


@dataclass(frozen=True)
class WorstCase:
    """The most tokens a request can use, priced before it runs so budgets can never be overrun."""

    prompt_tokens: int
    completion_tokens: int | None
    """Per completion; None: as many as the deployment allows."""
    completions: int = 1


@dataclass(frozen=True)
class Answer:
    """What a cascade stage produced, for the confidence check."""

    text: str
    mean_logprob: float | None
    prompt_tokens: int
    completion_tokens: int


Attempt = Callable[[Deployment, bool], Awaitable[T]]
"""Run the request on this deployment; the flag is False for a cascade stage that may be escalated
(its answer must be complete, not a stream). Raises to fail over."""


def escalation_reason(config: CascadeConfig, answer: Answer) -> str | None:
    """Why a cascade stage's answer is not good enough to return, or None when it is."""
    if config.escalate_on_empty and not answer.text.strip():
        return "empty answer"
    for pattern in config.escalate_patterns:
        if re.search(pattern, answer.text, re.IGNORECASE):
            return f"answer matches {pattern!r}"
    threshold = config.min_mean_logprob
    if threshold is not None and answer.mean_logprob is not None and answer.mean_logprob < threshold:
        return f"mean token log-probability {answer.mean_logprob:.2f} < {threshold:g}"
    return None


def _decision(run: _Run[Any], routed: Routed[Any] | None) -> dict[str, Any]:
    """The route span's attributes: what the router chose for the request, and what it tried first."""
    attributes: dict[str, Any] = {
        "inferline.route.attempts": len(run.failed) + len(run.escalated) + (routed is not None)
    }
    if run.failed:
        attributes["inferline.route.fallbacks"] = run.failed
    if run.skipped:
        attributes["inferline.route.skipped"] = [d.name for d in run.skipped]
    if routed is not None:
        attributes["inferline.route.deployment"] = routed.deployment.name
        if routed.degraded:
            attributes["inferline.route.degraded"] = True
        if routed.stage is not None:
            attributes["inferline.route.cascade_stage"] = routed.stage
    return attributes


class RouteState:
    def __init__(self, config: RouteConfig, implicit: bool = False) -> None:
        self.config = config
        self.implicit = implicit
        self.weights = dict(config.weights)
        window = config.canary.window if config.canary is not None else 200
        self.arms: dict[str, ArmStats] = {name: ArmStats(window) for name in config.members()}
        self.canary = Canary(config.name, config.canary) if config.canary is not None else None

    def snapshot(self, pool: DeploymentPool) -> dict[str, Any]:
        arms = {}
        for name, stats in self.arms.items():
            deployment = pool.by_name[name]
            arms[name] = {
                **stats.snapshot(),
                "weight": self.weights.get(name),
                "circuit": deployment.breaker.state,
                "ready": deployment.ready,
                "in_flight": deployment.in_flight,
                "waiting": deployment.waiting,
                "estimated_wait_s": round(deployment.estimated_wait_s(), 4),
                "estimated_first_token_s": round(deployment.estimated_first_result_s(), 4),
            }
        return {
            "policy": self.config.policy,
            "arms": arms,
            "canary": self.canary.snapshot() if self.canary is not None else None,
            "degrade_to": self.config.degrade_to,
            "fallbacks": self.config.fallbacks,
        }


class Routed(Generic[T]):
    """A request's answer in progress on the deployment that took it."""

    def __init__(
        self,
        router: Router,
        state: RouteState,
        caller: Caller,
        admission: Admission,
        deployment: Deployment,
        value: T,
        exits: AsyncExitStack,
        attempt_started: float,
        first_result_s: float,
    ) -> None:
        self.router, self.state, self.caller, self.admission = router, state, caller, admission
        self.deployment, self.value, self._exits = deployment, value, exits
        self.attempt_started, self.first_result_s = attempt_started, first_result_s
        self.backend_s = 0.0
        """Time spent waiting on deployments (every attempt, up to each one's answer or first token)."""
        self.stage: int | None = None
        """Cascade: the 1-based stage that answered."""
        self.degraded = False
        self.escalated: list[tuple[Deployment, Answer]] = []
        """Cascade stages that answered but were escalated; their tokens are billed too."""
        self.mean_logprob: float | None = None
        """The answer's mean token log-probability, when computed; set before `complete()`."""
        self.route_span: Span | None = None
        self.backend_span: Span | None = None
        """Traced requests: the spans that end when the answer has been delivered."""
        self._done = False

    @property
    def headers(self) -> dict[str, str]:
        headers = {**self.deployment.headers, "x-inferline-route": self.state.config.name}
        if self.stage is not None:
            headers["x-inferline-cascade-stage"] = str(self.stage)
        if self.degraded:
            headers["x-inferline-degraded"] = "true"
        return headers

    async def complete(self, prompt_tokens: int, completion_tokens: int, outcome: str = "ok") -> None:
        """Once, when the answer has been delivered (or failed, or the client left)."""
        if self._done:
            return
        self._done = True
        latency_s = time.perf_counter() - self.attempt_started
        error = outcome == "error"
        self.state.arms[self.deployment.name].record(latency_s, error)
        self.deployment.stats.record(latency_s, error)
        if error:
            self.deployment.breaker.record_failure()
        await self._exits.aclose()
        if self.backend_span is not None:
            tracing.end_backend_span(self.backend_span, prompt_tokens, completion_tokens, outcome)
            tracing.end_span(self.route_span, error="error" if error else None)
        cost = self.deployment.config.cost_usd(prompt_tokens, completion_tokens)
        tokens = prompt_tokens + completion_tokens
        for stage, answer in self.escalated:
            cost += stage.config.cost_usd(answer.prompt_tokens, answer.completion_tokens)
            tokens += answer.prompt_tokens + answer.completion_tokens
        await self.router.limiter.finish(self.admission, tokens, cost)
        self.router.judge_canary(self.state)
        self.router.emit(
            UsageRecord(
                request_id=self.caller.request_id,
                tenant=self.caller.principal.tenant,
                route=self.state.config.name,
                deployment=self.deployment.name,
                model_version=self.deployment.config.version,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                ttft_s=self.first_result_s,
                latency_s=latency_s,
                outcome=outcome,
                cost=cost,
                policy=self.state.config.policy,
                cascade_stage=self.stage,
                degraded=self.degraded,
                mean_logprob=self.mean_logprob,
            )
        )


@dataclass
class _Run(Generic[T]):
    """One request's way through its candidates."""

    state: RouteState
    caller: Caller
    admission: Admission
    attempt: Attempt[T]
    worst_case: WorstCase
    judge: Callable[[T], Answer] | None
    backend_s: float = 0.0
    escalated: list[tuple[Deployment, Answer]] = field(default_factory=list)
    last_error: Exception | None = None
    skipped: list[Deployment] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Router:
    def __init__(self, config: ServerConfig, pool: DeploymentPool, limiter: Limiter, seed: int = 0) -> None:
        self.config = config
        self.pool = pool
        self.limiter = limiter
        self.rng = random.Random(seed)
        self.routes: dict[str, RouteState] = {r.name: RouteState(r) for r in config.routes}
        for name, deployment in pool.by_name.items():
            if name not in self.routes:
                fixed = RouteConfig(name=name, policy="fixed", deployments=[deployment.name])
                self.routes[name] = RouteState(fixed, implicit=True)
        self.listeners: list[Callable[[UsageRecord], None]] = []

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

    def emit(self, record: UsageRecord) -> None:
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:
                logger.exception("usage listener failed")

    def judge_canary(self, state: RouteState) -> None:
        if state.canary is not None:
            config = state.canary.config
            state.canary.judge(state.arms[config.baseline], state.arms[config.candidate])

    # ---- the request path ---------------------------------------------------------------------

    async def run(
        self,
        name: str,
        caller: Caller,
        attempt: Attempt[T],
        worst_case: WorstCase,
        judge: Callable[[T], Answer] | None = None,
    ) -> Routed[T]:
        state = self.resolve(name)
        try:
            admission = await self.limiter.acquire(caller.principal)
        except LimitExceededError as error:  # a quota: metered as a rejection like every refusal
            self._emit_failure(state, caller, 0.0, error)
            raise
        run = _Run(state, caller, admission, attempt, worst_case, judge)
        route = state.config
        span = tracing.start_span(f"route {route.name}", {"inferline.route.policy": route.policy})
        try:
            with tracing.use_span(span):
                names, degraded = self._plan(state, caller)
                routed = await self._attempts(run, names)
        except BaseException as error:
            await self.limiter.finish(admission, 0, 0.0)
            self._emit_failure(state, caller, run.backend_s, error)
            if span is not None:
                tracing.end_span(span, _decision(run, None), error)
            raise
        routed.degraded = degraded
        if span is not None:
            span.set_attributes(_decision(run, routed))
            routed.route_span = span
        return routed

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

    async def _attempts(self, run: _Run[T], names: list[str]) -> Routed[T]:
        route = run.state.config
        cascade = route.policy == "cascade" and run.judge is not None
        tried = 0
        for index, name in enumerate(names):
            deployment = self.pool.by_name[name]
            if tried >= route.max_attempts:
                break
            if not deployment.ready or not deployment.breaker.allow():
                run.skipped.append(deployment)
                # Counted against the arm: a canary whose circuit is open is failing, not idle.
                run.state.arms[deployment.name].record(0.0, True)
                self.judge_canary(run.state)
                continue
            tried += 1
            final = not cascade or index == len(names) - 1 or names[index + 1] not in route.deployments
            routed = await self._try(run, deployment, final)
            if routed is None:
                continue
            routed.stage = route.deployments.index(name) + 1 if route.policy == "cascade" else None
            return routed
        raise self._exhausted(run)

    async def _try(self, run: _Run[T], deployment: Deployment, final: bool) -> Routed[T] | None:
        """One attempt; None when it failed over or was escalated."""
        exits = AsyncExitStack()
        hold = self._worst_cost(deployment, run.worst_case) + sum(
            d.config.cost_usd(a.prompt_tokens, a.completion_tokens) for d, a in run.escalated
        )
        await self.limiter.hold_budget(run.admission, hold)
        started = time.perf_counter()
        span = tracing.start_backend_span(deployment.config, run.state.config.name)
        try:
            await exits.enter_async_context(deployment.slot())
            with tracing.use_span(span):
                value = await run.attempt(deployment, final)
        except (*_UNAVAILABLE, *_BUSY) as error:
            tracing.end_span(span, error=error)
            elapsed_s = time.perf_counter() - started
            run.backend_s += elapsed_s
            await self._failed(run, deployment, exits, error, elapsed_s)
            return None
        except BaseException as error:
            tracing.end_span(span, error=error)
            deployment.breaker.release_probe()
            await exits.aclose()
            await self.limiter.release_budget(run.admission)
            raise
        first_result_s = time.perf_counter() - started
        run.backend_s += first_result_s
        deployment.breaker.record_success()
        deployment.stats.record_first_result(first_result_s)
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
                tracing.end_span(span, {"inferline.cascade.escalated": reason})
                await exits.aclose()
                await self.limiter.release_budget(run.admission)
                return None
        routed = Routed(
            self, run.state, run.caller, run.admission, deployment, value, exits, started, first_result_s
        )
        routed.backend_s = run.backend_s
        routed.escalated = run.escalated
        routed.backend_span = span
        return routed

    async def _failed(
        self, run: _Run[T], deployment: Deployment, exits: AsyncExitStack, error: Exception, elapsed_s: float
    ) -> None:
        if isinstance(error, _UNAVAILABLE):
            deployment.breaker.record_failure()
        else:
            deployment.breaker.release_probe()
        run.state.arms[deployment.name].record(elapsed_s, True)
        deployment.stats.record(elapsed_s, True)
        self.judge_canary(run.state)
        await exits.aclose()
        await self.limiter.release_budget(run.admission)
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

    def _emit_failure(
        self, state: RouteState, caller: Caller, latency_s: float, error: BaseException
    ) -> None:
        rejected = (QueueFullError, InvalidRequestError, LimitExceededError, ModelNotFoundError)
        outcome = "rejected" if isinstance(error, rejected) else "error"
        self.emit(
            UsageRecord(
                request_id=caller.request_id,
                tenant=caller.principal.tenant,
                route=state.config.name,
                deployment="",
                model_version="",
                prompt_tokens=0,
                completion_tokens=0,
                ttft_s=None,
                latency_s=latency_s,
                outcome=outcome,
                policy=state.config.policy,
                error_type=type(error).__name__,
            )
        )

    # ---- admin --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {name: state.snapshot(self.pool) for name, state in self.routes.items()}
