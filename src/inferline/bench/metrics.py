"""Serving metrics from recorded timings: pure functions, no I/O, the definitions of `vllm bench serve`.

Per request (successful ones only; failures are counted, never averaged in):
- TTFT = first text chunk's arrival − send (tokenization and queueing included).
- TPOT = (E2E − TTFT) / (output tokens − 1); a request with one output token has no TPOT.
- ITL = every gap between consecutive text chunks of a request, pooled over all requests.
- E2E = end of stream − send.
Over a load point lasting `duration_s` (first send to last completion):
- request throughput = successes / duration; output token throughput = output tokens / duration;
  total token throughput = (prompt + output tokens) / duration.
- goodput = successful requests meeting every SLO target / duration (None when no target is set).

One difference from vLLM's client, on purpose: a chunk counts as a token only when it carries text.
vLLM's chat client also starts the clock on the role-only first chunk, which adds a near-zero gap to
ITL; for the completions endpoint the two definitions are the same.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from inferline.bench.record import RequestRecord
from inferline.errors import InvalidRequestError
from inferline.stats import percentile


@dataclass(frozen=True)
class Distribution:
    """Summary of one latency's values over a load point, in seconds."""

    count: int
    mean: float
    median: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution | None:
        """None when there are no values (e.g. TPOT when every request produced one token)."""
        if not values:
            return None
        return cls(
            count=len(values),
            mean=statistics.fmean(values),
            median=percentile(values, 50),
            p95=percentile(values, 95),
            p99=percentile(values, 99),
            max=max(values),
        )


@dataclass(frozen=True)
class SLO:
    """Latency targets in seconds; a request is good when it meets every target that is set."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    KEYS = ("ttft", "tpot", "e2e")

    @classmethod
    def parse(cls, text: str) -> SLO:
        """`ttft=1.0,tpot=0.1,e2e=20` in seconds; a value may end in `ms` or `s`."""
        targets: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip().lower()
            if not sep or key not in cls.KEYS:
                raise InvalidRequestError(
                    f"--slo: {item!r} is not a target; write key=seconds with keys {', '.join(cls.KEYS)}, "
                    "e.g. ttft=1.0,tpot=0.1",
                    "slo",
                )
            targets[f"{key}_s"] = _seconds(key, value.strip())
        if not targets:
            raise InvalidRequestError("--slo is empty; e.g. --slo ttft=1.0,tpot=0.1", "slo")
        return cls(**targets)

    def met_by(self, record: RequestRecord) -> bool:
        """Whether a successful request met every target; a request with no TPOT meets the TPOT target."""
        ttft, tpot = record.ttft_s, request_tpot_s(record)
        return (
            (self.ttft_s is None or (ttft is not None and ttft <= self.ttft_s))
            and (self.tpot_s is None or tpot is None or tpot <= self.tpot_s)
            and (self.e2e_s is None or record.e2e_s <= self.e2e_s)
        )


def _seconds(key: str, value: str) -> float:
    scale = 1.0
    if value.endswith("ms"):
        value, scale = value[:-2], 1e-3
    elif value.endswith("s"):
        value = value[:-1]
    try:
        seconds = float(value) * scale
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise InvalidRequestError(f"--slo: {key} must be a positive number of seconds; got {value!r}", "slo")
    return seconds


def request_tpot_s(record: RequestRecord) -> float | None:
    """(E2E − TTFT) / (output tokens − 1); None for one output token or no text at all."""
    ttft = record.ttft_s
    if ttft is None or record.output_tokens < 2:
        return None
    return (record.e2e_s - ttft) / (record.output_tokens - 1)


def pooled_itl_s(records: Sequence[RequestRecord]) -> list[float]:
    """Every gap between consecutive text chunks, over all the given requests."""
    return [
        later - earlier
        for record in records
        for earlier, later in zip(record.token_times_s, record.token_times_s[1:], strict=False)
    ]


@dataclass(frozen=True)
class PointMetrics:
    """Every figure of one load point."""

    num_requests: int
    num_succeeded: int
    num_failed: int
    duration_s: float
    input_tokens: int
    """Prompt tokens of the successful requests, as the server reported them."""
    output_tokens: int
    request_throughput_rps: float
    output_throughput_tps: float
    total_token_throughput_tps: float
    goodput_rps: float | None
    """Requests/s that met every SLO target; None when no target was set."""
    ttft_s: Distribution | None
    tpot_s: Distribution | None
    itl_s: Distribution | None
    e2e_s: Distribution | None
    errors: dict[str, int]
    """Each distinct error message and how many requests failed with it, most frequent first."""


def compute_metrics(
    records: Sequence[RequestRecord], duration_s: float, slo: SLO | None = None
) -> PointMetrics:
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive; got {duration_s}")
    good = [r for r in records if r.ok]
    input_tokens = sum(r.prompt_tokens or 0 for r in good)
    output_tokens = sum(r.output_tokens for r in good)
    ttfts = [t for t in (r.ttft_s for r in good) if t is not None]
    tpots = [t for t in (request_tpot_s(r) for r in good) if t is not None]
    errors = Counter(r.error for r in records if r.error is not None)
    return PointMetrics(
        num_requests=len(records),
        num_succeeded=len(good),
        num_failed=len(records) - len(good),
        duration_s=duration_s,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        request_throughput_rps=len(good) / duration_s,
        output_throughput_tps=output_tokens / duration_s,
        total_token_throughput_tps=(input_tokens + output_tokens) / duration_s,
        goodput_rps=None if slo is None else sum(slo.met_by(r) for r in good) / duration_s,
        ttft_s=Distribution.of(ttfts),
        tpot_s=Distribution.of(tpots),
        itl_s=Distribution.of(pooled_itl_s(good)),
        e2e_s=Distribution.of([r.e2e_s for r in good]),
        errors=dict(errors.most_common()),
    )
