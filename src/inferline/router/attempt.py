"""One try of a request on one deployment, and the answer it produced.

An `Attempt` owns everything the router takes for one try: the budget hold, one of the deployment's
concurrency slots, the circuit breaker's half-open probe (when this try is the probe) and the backend
span. However the try ends (an answer delivered, an upstream error, a timeout, a cascade escalation,
a cancellation, or the client leaving mid-stream), `close` is the one exit that gives all of them
back. `async with` calls it on the way out unless the try answered and was handed on (`keep`) to the
`Routed` answer, whose `complete` calls it once the answer has been delivered.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar

from opentelemetry.trace import Span

from inferline.backends.base import WaitMeter, wait_meter
from inferline.errors import BackendUnavailableError, EngineStoppedError, QueueFullError
from inferline.router.deployments import Deployment
from inferline.router.limits import Admission, Limiter
from inferline.telemetry import tracing

T = TypeVar("T")

UNAVAILABLE = (BackendUnavailableError, EngineStoppedError)
"""Failures that say nothing about the request: count against the breaker, fall back."""
BUSY = (QueueFullError,)
"""The deployment is full: fall back, but it is not broken."""


@dataclass(frozen=True)
class Delivered:
    """How the delivery of an answer ended, as the caller saw it."""

    prompt_tokens: int
    completion_tokens: int
    outcome: str = "ok"
    """"ok"; "error": it failed after it started; "aborted": the client left."""
    mean_logprob: float | None = None
    """The answer's mean token log-probability, when it was computed."""


class Attempt:
    """One deployment's try at a request; see the module's note."""

    def __init__(
        self,
        deployment: Deployment,
        route: str,
        limiter: Limiter,
        admission: Admission,
        hold_usd: float,
        probe: bool,
    ) -> None:
        self.deployment, self.route = deployment, route
        self._limiter, self._admission, self._hold_usd = limiter, admission, hold_usd
        self._probe = probe
        self._held = False
        self._slot: AbstractAsyncContextManager[None] | None = None
        self._kept = False
        self._closed = False
        self.span: Span | None = None
        self.started = 0.0
        self.first_result_s: float | None = None
        """Seconds from the start of the try to its answer (or first token); None until then."""
        self.meter = WaitMeter()
        """Time spent waiting on an upstream outside this process, when the backend has one."""

    async def __aenter__(self) -> Attempt:
        try:
            await self._limiter.hold_budget(self._admission, self._hold_usd)
            self._held = True
            self.started = time.perf_counter()
            self.span = tracing.start_backend_span(self.deployment.config, self.route)
            slot = self.deployment.slot()
            await slot.__aenter__()
            self._slot = slot
        except BaseException as error:
            await self.close(error)
            raise
        wait_meter.set(self.meter)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None
    ) -> None:
        if not self._kept:
            await self.close(error)

    def answered(self) -> float:
        """The deployment produced its answer (or first token): the breaker closes, and the time counts."""
        self.first_result_s = time.perf_counter() - self.started
        self.deployment.breaker.record_success()
        self._probe = False
        self.deployment.stats.record_first_result(self.first_result_s)
        return self.first_result_s

    @property
    def backend_s(self) -> float:
        """Time this try spent waiting on the deployment up to its answer: an upstream's own time where
        the backend measures it (our client and decoding are overhead), else everything to the answer."""
        if self.meter.measured:
            return self.meter.upstream_s
        return self.first_result_s if self.first_result_s is not None else time.perf_counter() - self.started

    @property
    def closed(self) -> bool:
        return self._closed

    def keep(self) -> None:
        """Hand the try on to its answer: `close` is then the answer's to call, when it is delivered."""
        self._kept = True

    async def close(
        self, error: BaseException | str | None = None, attributes: dict[str, Any] | None = None
    ) -> None:
        """Give back the probe, the slot and the budget hold (a kept try's hold is settled by the
        limiter's `finish` instead), and end the span; `error` is why the try failed (an answer that
        failed after it started: "error"). Only the first call does anything."""
        if self._closed:
            return
        self._closed = True
        breaker = self.deployment.breaker
        if isinstance(error, UNAVAILABLE) or (error is not None and self.first_result_s is not None):
            breaker.record_failure()
        elif self._probe:
            breaker.release_probe()
        try:
            if self._slot is not None:
                await self._slot.__aexit__(None, None, None)
        finally:
            if self._held and not self._kept:
                await self._limiter.release_budget(self._admission)
            tracing.end_span(self.span, attributes, error)


@dataclass(frozen=True)
class Routed(Generic[T]):
    """A request's answer in progress on the deployment that took it. Built once by the router; the
    caller calls `complete` once the answer has been delivered (or failed, or the client left)."""

    value: T
    deployment: Deployment
    headers: dict[str, str]
    """The response headers that say who answered: model, deployment, version, route, stage."""
    backend_s: float
    """Time spent waiting on deployments, every try up to each one's answer or first token."""
    stage: int | None
    """Cascade: the 1-based stage that answered."""
    degraded: bool
    """The route sent the request to its smaller target because of load."""
    _finish: Callable[[Delivered], Awaitable[None]] = field(repr=False)

    async def complete(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        outcome: str = "ok",
        mean_logprob: float | None = None,
    ) -> None:
        """Free what the answer held, bill it and record it; only the first call does anything."""
        await self._finish(Delivered(prompt_tokens, completion_tokens, outcome, mean_logprob))
