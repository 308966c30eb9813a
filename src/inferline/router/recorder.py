"""What happens once a request is over: bill it, feed the figures that steer routing, record it.

One place turns an ended request into every consequence: the limiter debits its tokens and charges its
cost in place of the budget hold (and frees its quota slot), the route's arm and the deployment's window
get the outcome, the canary re-judges, and one `UsageRecord` goes to the listeners (metering, metrics,
the dashboard, the edge outbox).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from inferline.errors import InvalidRequestError, LimitExceededError, ModelNotFoundError, QueueFullError
from inferline.router.attempt import Attempt, Delivered
from inferline.router.deployments import Deployment
from inferline.router.limits import Admission, Limiter
from inferline.router.request import Answer, Caller
from inferline.router.route_state import RouteState
from inferline.types import UsageRecord

logger = logging.getLogger(__name__)

_REJECTED = (QueueFullError, InvalidRequestError, LimitExceededError, ModelNotFoundError)
"""Refusals, metered as "rejected" rather than "error"."""


class UsageRecorder:
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.listeners: list[Callable[[UsageRecord], None]] = []

    def emit(self, record: UsageRecord) -> None:
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:
                logger.exception("usage listener failed")

    def failed_attempt(self, state: RouteState, deployment: Deployment, elapsed_s: float) -> None:
        """A deployment failed a try (the request may still succeed elsewhere)."""
        state.arms[deployment.name].record(elapsed_s, True)
        deployment.stats.record(elapsed_s, True)
        state.judge_canary()

    async def delivered(
        self,
        state: RouteState,
        caller: Caller,
        admission: Admission,
        attempt: Attempt,
        delivered: Delivered,
        escalated: list[tuple[Deployment, Answer]],
        stage: int | None,
        degraded: bool,
    ) -> None:
        """The request's answer was delivered (or failed after it started, or the client left)."""
        deployment = attempt.deployment
        latency_s = time.perf_counter() - attempt.started
        error = delivered.outcome == "error"
        state.arms[deployment.name].record(latency_s, error)
        deployment.stats.record(latency_s, error)
        prompt, completion = delivered.prompt_tokens, delivered.completion_tokens
        cost = deployment.config.cost_usd(prompt, completion)
        tokens = prompt + completion
        for stage_deployment, answer in escalated:  # escalated cascade stages are billed too
            cost += stage_deployment.config.cost_usd(answer.prompt_tokens, answer.completion_tokens)
            tokens += answer.prompt_tokens + answer.completion_tokens
        await self.limiter.finish(admission, tokens, cost)
        state.judge_canary()
        self.emit(
            UsageRecord(
                request_id=caller.request_id,
                tenant=caller.principal.tenant,
                route=state.config.name,
                deployment=deployment.name,
                model_version=deployment.config.version,
                prompt_tokens=prompt,
                completion_tokens=completion,
                ttft_s=attempt.first_result_s,
                latency_s=latency_s,
                outcome=delivered.outcome,
                cost=cost,
                policy=state.config.policy,
                cascade_stage=stage,
                degraded=degraded,
                mean_logprob=delivered.mean_logprob,
                endpoint=caller.endpoint,
                batch_id=caller.batch_id,
            )
        )

    async def refused(
        self,
        state: RouteState,
        caller: Caller,
        admission: Admission | None,
        latency_s: float,
        error: BaseException,
    ) -> None:
        """The request got no answer: refused, every deployment failed, or it was cancelled."""
        if admission is not None:
            await self.limiter.finish(admission, 0, 0.0)
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
                outcome="rejected" if isinstance(error, _REJECTED) else "error",
                policy=state.config.policy,
                error_type=type(error).__name__,
                endpoint=caller.endpoint,
                batch_id=caller.batch_id,
            )
        )
