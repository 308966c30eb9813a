"""A canary split with automatic rollback.

A share of a route's traffic goes to the candidate. Once both arms have `min_samples` recent
requests, the candidate is rolled back (share 0) when its error rate exceeds the baseline's by more
than the margin, or its p95 latency exceeds the baseline's by more than the ratio; and, when configured,
when the quality loop's live signals say so (a higher refusal rate, a lower mean feedback score). The
decision is logged and kept for the admin API; an operator can pause, resume, or change the share.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from inferline.config import CanaryConfig
from inferline.router.arm_stats import ArmStats

logger = logging.getLogger(__name__)

CanaryStatus = Literal["active", "paused", "rolled_back"]


@dataclass
class CanaryDecision:
    at: float
    """Unix seconds."""
    action: str
    reason: str


class Canary:
    def __init__(self, route: str, config: CanaryConfig) -> None:
        self.route = route
        self.config = config
        self.percent = config.percent
        self.status: CanaryStatus = "active"
        self.decisions: list[CanaryDecision] = []

    def choose(self, draw: float) -> str:
        if self.status == "active" and draw * 100 < self.percent:
            return self.config.candidate
        return self.config.baseline

    def judge(self, baseline: ArmStats, candidate: ArmStats) -> None:
        """Roll back when the candidate is worse than the baseline by more than the margins."""
        if self.status != "active":
            return
        needed = self.config.min_samples
        sampled = baseline.num_recent >= needed and candidate.num_recent >= needed
        # Refusals and feedback count their own samples: ratings come long after the requests.
        reason = (self._regression(baseline, candidate) if sampled else None) or self._quality_regression(
            baseline, candidate
        )
        if reason is not None:
            self.status = "rolled_back"
            self._decide("rollback", reason)
            logger.warning(
                "canary %s -> %s on route %s rolled back: %s",
                self.config.baseline,
                self.config.candidate,
                self.route,
                reason,
            )

    def _regression(self, baseline: ArmStats, candidate: ArmStats) -> str | None:
        margin = self.config.max_error_rate_increase
        if candidate.error_rate > baseline.error_rate + margin:
            return (
                f"error rate {candidate.error_rate:.1%} over {candidate.num_recent} requests vs baseline "
                f"{baseline.error_rate:.1%} (allowed +{margin:.1%})"
            )
        ratio = self.config.max_p95_latency_ratio
        if baseline.p95_latency_s > 0 and candidate.p95_latency_s > baseline.p95_latency_s * ratio:
            return (
                f"p95 latency {candidate.p95_latency_s * 1000:.0f} ms vs baseline "
                f"{baseline.p95_latency_s * 1000:.0f} ms (allowed ×{ratio:g})"
            )
        return None

    def _quality_regression(self, baseline: ArmStats, candidate: ArmStats) -> str | None:
        """The live quality signals the quality loop feeds the arms: refusals and feedback."""
        config = self.config
        margin = config.max_refusal_rate_increase
        judged = min(len(baseline.refusals), len(candidate.refusals)) >= config.min_samples
        if margin is not None and judged and candidate.refusal_rate > baseline.refusal_rate + margin:
            return (
                f"refusal rate {candidate.refusal_rate:.1%} vs baseline {baseline.refusal_rate:.1%} "
                f"(allowed +{margin:.1%})"
            )
        drop = config.max_feedback_drop
        rated = min(len(baseline.feedback_scores), len(candidate.feedback_scores)) >= config.min_feedback
        if drop is not None and rated and candidate.mean_feedback < baseline.mean_feedback - drop:
            return (
                f"mean feedback {candidate.mean_feedback:+.2f} over {len(candidate.feedback_scores)} ratings "
                f"vs baseline {baseline.mean_feedback:+.2f} (allowed -{drop:g})"
            )
        return None

    def pause(self) -> None:
        self.status = "paused"
        self._decide("pause", "by an operator")

    def resume(self) -> None:
        self.status = "active"
        self._decide("resume", "by an operator")

    def set_percent(self, percent: float, by: str = "an operator") -> None:
        self.percent = percent
        self._decide("set_percent", f"{percent:g}% by {by}")

    def _decide(self, action: str, reason: str) -> None:
        self.decisions.append(CanaryDecision(time.time(), action, reason))

    def snapshot(self) -> dict[str, Any]:
        return {
            "baseline": self.config.baseline,
            "candidate": self.config.candidate,
            "percent": self.percent,
            "status": self.status,
            "decisions": [vars(d) for d in self.decisions],
        }
