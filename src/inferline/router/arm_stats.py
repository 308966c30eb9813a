"""Live figures of one deployment as the router sees it: recent outcomes and latency estimates."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from inferline.stats import percentile


@dataclass
class Outcome:
    latency_s: float
    error: bool


class ArmStats:
    """A window of recent outcomes (for canary verdicts and per-arm metrics) plus EWMA latencies
    (for the policies' live estimates, which must follow change faster than a window's mean)."""

    EWMA_ALPHA = 0.2

    def __init__(self, window: int = 200) -> None:
        self.recent: deque[Outcome] = deque(maxlen=window)
        self.num_requests = 0
        self.num_errors = 0
        self.first_result_s: float | None = None
        """EWMA of the time to the first token (whole answer for non-LLMs)."""
        self.latency_s: float | None = None
        """EWMA of the end-to-end latency of successful requests."""
        self.refusals: deque[bool] = deque(maxlen=window)
        """Whether each recent answer was a refusal (the quality loop judges answers it reads)."""
        self.feedback_scores: deque[float] = deque(maxlen=window)
        """Recent feedback scores in [-1, 1] (POST /v1/feedback) on this arm's answers."""

    def record(self, latency_s: float, error: bool) -> None:
        self.recent.append(Outcome(latency_s, error))
        self.num_requests += 1
        self.num_errors += error
        if not error:
            self.latency_s = _ewma(self.latency_s, latency_s, self.EWMA_ALPHA)

    def record_first_result(self, seconds: float) -> None:
        self.first_result_s = _ewma(self.first_result_s, seconds, self.EWMA_ALPHA)

    def record_refusal(self, refused: bool) -> None:
        self.refusals.append(refused)

    def record_feedback(self, score: float) -> None:
        self.feedback_scores.append(score)

    def resize(self, window: int) -> None:
        self.recent = deque(self.recent, maxlen=window)
        self.refusals = deque(self.refusals, maxlen=window)
        self.feedback_scores = deque(self.feedback_scores, maxlen=window)

    @property
    def refusal_rate(self) -> float:
        return sum(self.refusals) / len(self.refusals) if self.refusals else 0.0

    @property
    def mean_feedback(self) -> float:
        return sum(self.feedback_scores) / len(self.feedback_scores) if self.feedback_scores else 0.0

    @property
    def num_recent(self) -> int:
        return len(self.recent)

    @property
    def error_rate(self) -> float:
        return sum(o.error for o in self.recent) / len(self.recent) if self.recent else 0.0

    @property
    def p95_latency_s(self) -> float:
        """95th percentile (stats.percentile) of recent successful requests' latency; 0 with none."""
        latencies = [o.latency_s for o in self.recent if not o.error]
        return percentile(latencies, 95) if latencies else 0.0

    def snapshot(self) -> dict[str, float | int | None]:
        return {
            "requests": self.num_requests,
            "errors": self.num_errors,
            "recent_error_rate": round(self.error_rate, 4),
            "recent_p95_latency_s": round(self.p95_latency_s, 4),
            "first_result_ewma_s": None if self.first_result_s is None else round(self.first_result_s, 4),
            "latency_ewma_s": None if self.latency_s is None else round(self.latency_s, 4),
        }


def _ewma(current: float | None, sample: float, alpha: float) -> float:
    return sample if current is None else (1 - alpha) * current + alpha * sample
