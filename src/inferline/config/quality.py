"""The quality loop: payload capture, drift monitors and the evaluation gate's defaults."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _check_patterns(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {error}") from None
    return patterns


class CaptureConfig(BaseModel):
    """Which requests' prompts and answers are kept (redacted) for review, export and fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False, description="Capture at all; off by default (no prompt or answer is ever stored then)."
    )
    sample_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of requests captured on routes without a rate of their own.",
    )
    route_sample_rates: dict[str, float] = Field(
        default_factory=dict, description="Route -> share of its requests captured, overriding sample_rate."
    )
    min_mean_logprob: float | None = Field(
        -1.5,
        le=0,
        description="Always capture an answer whose mean token log-probability is below this (flag "
        "low_confidence); known only when computed (telemetry.record_mean_logprob, logprobs, cascades).",
    )
    capture_escalations: bool = Field(True, description="Always capture cascade answers from stage 2 on.")
    capture_errors: bool = Field(True, description="Always capture requests that failed.")
    capture_thumbs_down: bool = Field(
        True,
        description="Capture a request rated down through POST /v1/feedback while it is still among the "
        "last max_recent requests held in memory (already redacted).",
    )
    refusal_patterns: list[str] = Field(
        default_factory=lambda: [r"^\s*(I'?m sorry|I (can(no|')t|am unable|won'?t))\b", r"\bas an AI\b"],
        description="Regular expressions (case-insensitive) that make an answer a refusal (flag refusal; "
        "the drift monitors' refusal rate).",
    )
    redact_patterns: list[str] = Field(
        default_factory=list,
        description="Regular expressions redacted besides the built-in e-mail, phone, card and key patterns "
        "(e.g. an employee id 'EMP-\\d{6}').",
    )
    max_records: int = Field(100_000, ge=1, description="Captured requests kept; beyond it the oldest go.")
    max_age_s: float | None = Field(
        30 * 86400, gt=0, description="Seconds a captured request is kept (default 30 days); none: no limit."
    )
    max_recent: int = Field(
        1000, ge=0, le=1_000_000, description="Recent requests held in memory for feedback to reach."
    )

    _patterns = field_validator("refusal_patterns", "redact_patterns")(_check_patterns)


class DriftConfig(BaseModel):
    """Reference window against current window, per route and model version, judged by effect sizes."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Keep the windows and publish /v1/drift and the gauges; off by default, as it has every "
        "request's bodies copied for reading once the response has gone.",
    )
    window: int = Field(
        500, ge=20, le=100_000, description="Requests in each window; the first `window` are the reference."
    )
    min_samples: int = Field(50, ge=10, description="Requests the current window needs before it is judged.")
    embedding_deployment: str | None = Field(
        None,
        description="An embedding deployment whose vectors of the prompts feed the embedding drift (MMD² "
        "and a domain classifier's AUC; all-minilm-l6-v2); none: no embedding drift.",
    )
    max_length_shift: float = Field(
        0.5, gt=0, description="Alert when |Cohen's d| of prompt or completion tokens is above this."
    )
    max_rate_shift: float = Field(
        0.1, gt=0, le=1, description="Alert when a rate (refusal, cache hit) moves by more than this."
    )
    max_mix_distance: float = Field(
        0.2, gt=0, le=1, description="Alert when the finish-reason mix moves by more (total variation)."
    )
    max_logprob_shift: float = Field(
        0.5, gt=0, description="Alert when |Cohen's d| of the mean token log-probability is above this."
    )
    max_mmd: float = Field(0.05, gt=0, description="Alert when the prompts' embedding MMD² is above this.")
    max_classifier_auc: float = Field(
        0.7,
        gt=0.5,
        le=1,
        description="Alert when a logistic regression tells current prompts' embeddings from the reference's "
        "with a cross-validated ROC AUC above this (0.5: indistinguishable, 1: every new prompt recognised). "
        "0.7 sits over 3 standard errors above chance already at 40 prompts a side.",
    )
    max_psi: float = Field(0.2, gt=0, description="OIP inputs: alert when a feature's PSI is above this.")
    max_wasserstein_sd: float = Field(
        0.5, gt=0, description="OIP inputs: alert when a feature moves more (Wasserstein, reference SDs)."
    )
    max_embedded_prompts: int = Field(
        200,
        ge=20,
        le=10_000,
        description="Most prompts of each window embedded for the MMD and the classifier (the latest); the "
        "MMD's time and memory at each scrape grow with the square of this.",
    )


class QualityConfig(BaseModel):
    """Capture, drift and the quality signals the canary may judge."""

    model_config = ConfigDict(extra="forbid")

    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
