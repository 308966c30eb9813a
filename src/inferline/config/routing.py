"""Routes: public model names and the policies (cascade, canary, rollout) that pick a deployment."""

from __future__ import annotations

import itertools
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inferline.config.retrieval import CacheConfig, RagConfig


class CascadeConfig(BaseModel):
    """When a cascade stage's answer is good enough to return rather than escalate."""

    model_config = ConfigDict(extra="forbid")

    min_mean_logprob: float | None = Field(
        -1.0, le=0, description="Escalate when the answer's mean token log-probability is below this."
    )
    escalate_on_empty: bool = Field(True, description="Escalate when the answer is empty or only whitespace.")
    escalate_on_invalid_tool_call: bool = Field(
        True,
        description="Escalate when a request that offers tools gets a call naming an unknown function, "
        "arguments that are not JSON or do not match the function's parameters, or no call where "
        "tool_choice requires one.",
    )
    escalate_patterns: list[str] = Field(
        default_factory=list,
        description="Regular expressions (case-insensitive); escalate when the answer matches one, "
        'e.g. refusals such as "^I (can\'t|cannot)".',
    )

    @field_validator("escalate_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {error}") from None
        return patterns


class RolloutPlanConfig(BaseModel):
    """A staged rollout: the canary's share climbs step by step while the candidate holds up."""

    model_config = ConfigDict(extra="forbid")

    steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 100.0],
        min_length=1,
        max_length=20,
        description="Candidate shares in percent, increasing, the last 100 (e.g. [5, 25, 100]).",
    )
    dwell_s: float = Field(300.0, ge=0, le=30 * 86400, description="Least time spent at each step, in s.")
    min_samples: int = Field(
        100, ge=1, le=1_000_000, description="Requests each arm must serve at a step before it advances."
    )
    min_score_ratio: float | None = Field(
        None,
        gt=0,
        le=10,
        description="Registry versions only: refuse the candidate when an evaluation score it shares with "
        "the baseline is below the baseline's × this (e.g. 0.98).",
    )

    @field_validator("steps")
    @classmethod
    def _increasing_to_100(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s <= 100 for s in steps) or any(a >= b for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps {steps} must be percents in (0, 100] that increase, e.g. [5, 25, 100]")
        if steps[-1] != 100:
            raise ValueError(f"steps {steps} must end at 100 so the rollout completes: append 100")
        return steps


class CanaryConfig(BaseModel):
    """A share of traffic to a new version, rolled back automatically when it does worse."""

    model_config = ConfigDict(extra="forbid")

    baseline: str = Field(..., description="The deployment serving most traffic.")
    candidate: str = Field(..., description="The new deployment under test.")
    percent: float = Field(5.0, ge=0, le=100, description="Share of requests sent to the candidate.")
    min_samples: int = Field(
        20, ge=1, le=1_000_000, description="Requests each arm must have served before a verdict."
    )
    window: int = Field(200, ge=1, le=1_000_000, description="Recent requests per arm that are judged.")
    max_error_rate_increase: float = Field(
        0.05, ge=0, le=1, description="Roll back when candidate error rate > baseline's + this."
    )
    max_p95_latency_ratio: float = Field(
        1.5, ge=1, description="Roll back when candidate p95 latency > baseline's × this."
    )
    max_refusal_rate_increase: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Roll back when the candidate's refusal rate (quality.capture.refusal_patterns) > "
        "baseline's + this, over min_samples answers of each arm; none: refusals are not judged.",
    )
    max_feedback_drop: float | None = Field(
        None,
        ge=0,
        le=2,
        description="Roll back when the candidate's mean feedback score (POST /v1/feedback, in [-1, 1]) < "
        "baseline's - this, once each arm has min_feedback ratings; none: feedback is not judged.",
    )
    min_feedback: int = Field(10, ge=1, le=1_000_000, description="Ratings each arm needs for a verdict.")
    rollout: RolloutPlanConfig | None = Field(
        None, description="Advance `percent` through these steps on live metrics (overrides `percent`)."
    )


class SloConfig(BaseModel):
    """A route's service-level objectives, judged over a rolling window of its requests."""

    model_config = ConfigDict(extra="forbid")

    availability: float | None = Field(
        None, gt=0, lt=1, description="Share of requests that must not fail, e.g. 0.999."
    )
    ttft_p95_ms: float | None = Field(None, gt=0, description="95th-percentile time to first token, in ms.")
    latency_p95_ms: float | None = Field(None, gt=0, description="95th-percentile end-to-end latency, in ms.")
    window_days: float = Field(30.0, gt=0, le=365, description="The window the error budget spans.")


RoutePolicy = Literal["fixed", "weighted", "cheapest", "fastest", "best_quality", "cascade", "canary", "rag"]


class RouteConfig(BaseModel):
    """A public model name and the policy that picks which deployment answers it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=128, description="The name clients send as `model`.")
    policy: RoutePolicy = Field("fixed", description="How a deployment is chosen (see the README).")
    deployments: list[str] = Field(
        default_factory=list,
        description="Candidates: one for fixed; stages in order for cascade; in order for rag; the set for "
        "weighted, cheapest, fastest and best_quality. Canary takes its two from `canary`.",
    )
    weights: dict[str, float] = Field(
        default_factory=dict, description="weighted: deployment -> relative share (missing ones get 0)."
    )
    sticky_by: Literal["user", "tenant", "none"] = Field(
        "user",
        description="weighted/canary: keep a caller on one arm, by the body's `user` field (falling back "
        "to the tenant), by tenant, or not at all.",
    )
    max_price_per_1m: float | None = Field(
        None, ge=0, description="best_quality: ignore deployments whose output price per 1M is above this."
    )
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    canary: CanaryConfig | None = None
    fallbacks: list[str] = Field(
        default_factory=list, description="Tried in order when the chosen deployment fails or times out."
    )
    max_attempts: int = Field(3, ge=1, le=10, description="Most deployments one request is tried on.")
    degrade_to: str | None = Field(
        None, description="A smaller, faster deployment used when the chosen one's wait is over budget."
    )
    slo: SloConfig | None = Field(None, description="Objectives this route is held to (GET /v1/slo).")
    rag: RagConfig | None = Field(None, description="policy rag: the store and prompt (README, RAG routes).")
    cache: CacheConfig | None = Field(None, description="A response cache for this route; None: no caching.")

    def members(self) -> list[str]:
        """Every deployment this route may send a request to."""
        names = [*self.deployments, *self.weights, *self.fallbacks]
        if self.canary is not None:
            names += [self.canary.baseline, self.canary.candidate]
        if self.degrade_to is not None:
            names.append(self.degrade_to)
        return list(dict.fromkeys(names))
