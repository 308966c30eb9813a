"""The dashboard's recent series from hand-built UsageRecords and samples, on a clock the test moves."""

from __future__ import annotations

import random

import pytest

from inferline.telemetry.timeseries import BackendSample, RecentSeries, Reservoir
from inferline.types import UsageRecord
from tests.telemetry.records import usage_record


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def usage(
    finished_at: float,
    tenant: str = "alpha",
    route: str = "chat",
    deployment: str = "small",
    outcome: str = "ok",
    ttft_s: float | None = 0.1,
    latency_s: float = 0.5,
    completion_tokens: int = 5,
    cost: float = 0.01,
    policy: str = "weighted",
) -> UsageRecord:
    return usage_record(
        tenant=tenant,
        route=route,
        deployment=deployment,
        completion_tokens=completion_tokens,
        ttft_s=ttft_s,
        latency_s=latency_s,
        outcome=outcome,
        cost=cost,
        policy=policy,
        finished_at=finished_at,
    )


def test_buckets_count_rates_tokens_and_latency_percentiles() -> None:
    clock = Clock(1000.0)
    series = RecentSeries(interval_s=2, window_s=60, clock=clock)
    for i in range(10):
        series.record(usage(1000.5, ttft_s=(i + 1) / 100, latency_s=(i + 1) / 100 + 0.4))
    series.record(usage(1001.0, outcome="error", ttft_s=None, completion_tokens=0))
    series.record(usage(1003.0, tenant="beta", cost=0.5))

    clock.now = 1002.5  # the first bucket [1000, 1002) has ended; [1002, 1004) is still open
    body = series.snapshot()
    assert body["t"] == [1000]
    assert body["requests_per_s"] == [11 / 2]
    assert body["errors_per_s"] == [1 / 2]
    assert body["completion_tokens_per_s"] == [50 / 2]
    assert body["prompt_tokens_per_s"] == [33 / 2]
    # Interpolated (stats.percentile) over the ten answered requests, 10..100 ms: ranks 4.5 and 8.55.
    assert body["ttft_ms"]["p50"] == [pytest.approx(55)]
    assert body["ttft_ms"]["p95"] == [pytest.approx(95.5)]
    # TPOT: (latency - ttft) / (tokens - 1) = 0.4 / 4 s for every one of them.
    assert body["tpot_ms"]["p50"] == [pytest.approx(100)]

    clock.now = 1004.0
    body = series.snapshot()
    assert body["t"] == [1000, 1002]
    assert body["tenants"]["beta"]["cost_usd"] == [0, 0.5]
    assert body["tenants"]["alpha"]["requests_per_s"] == [11 / 2, 0]
    assert body["totals"]["requests"] == 12
    assert body["totals"]["errors"] == 1
    assert body["totals"]["cost_usd"] == pytest.approx(11 * 0.01 + 0.5)
    assert body["totals"]["tenants"]["beta"] == {"requests": 1, "cost_usd": 0.5}


def test_a_quiet_stretch_reads_as_zero_and_old_buckets_leave_the_window() -> None:
    clock = Clock(0.0)
    series = RecentSeries(interval_s=1, window_s=10, clock=clock)
    series.record(usage(0.5))
    series.record(usage(5.5))
    clock.now = 6.0
    body = series.snapshot()
    assert body["t"] == [0, 1, 2, 3, 4, 5]
    assert body["requests_per_s"] == [1, 0, 0, 0, 0, 1]
    assert body["ttft_ms"]["p50"][1:5] == [None] * 4

    series.record(usage(30.5))
    clock.now = 31.0
    body = series.snapshot()
    assert body["t"] == list(range(21, 31))
    assert body["totals"]["requests"] == 1
    assert len(series.buckets) == 10  # bounded whatever the gap


def test_backend_samples_line_up_with_the_buckets() -> None:
    clock = Clock(10.2)
    series = RecentSeries(interval_s=2, window_s=60, clock=clock)
    series.sample({"llm": BackendSample(queue_depth=3, running=2, kv_usage=0.25)})
    clock.now = 11.9
    series.sample({"llm": BackendSample(queue_depth=1, running=4, kv_usage=0.5)})  # the newest wins
    clock.now = 14.1  # no sample for [12, 14)
    series.sample({"llm": BackendSample(queue_depth=0, running=0, kv_usage=0.0)})
    clock.now = 16.0
    llm = series.snapshot()["deployments"]["llm"]
    assert llm == {"queue_depth": [1, None, 0], "running": [4, None, 0], "kv_usage": [0.5, None, 0.0]}


def test_splits_are_shares_per_arm_of_routes_that_choose() -> None:
    clock = Clock(0.0)
    series = RecentSeries(interval_s=1, window_s=10, clock=clock)
    for deployment in ("small", "small", "small", "large"):
        series.record(usage(0.1, deployment=deployment))
    series.record(usage(1.1, deployment="large"))
    series.record(usage(2.1, route="other", deployment="small"))
    series.record(usage(1.2, route="solo", deployment="only", policy="fixed"))
    series.record(usage(1.3, outcome="rejected", deployment=""))  # answered by none: no arm
    clock.now = 3.0
    body = series.snapshot()
    assert body["splits"]["chat"] == {"large": [0.25, 1.0, None], "small": [0.75, 0.0, None]}
    assert body["totals"]["splits"]["chat"] == {"large": 2, "small": 3}
    assert "solo" not in body["splits"]  # a fixed route with one deployment splits nothing


def test_the_reservoir_keeps_a_bounded_uniform_sample() -> None:
    reservoir = Reservoir(100, random.Random(0))
    for value in range(10_000):
        reservoir.add(float(value))
    assert len(reservoir.values) == 100
    assert reservoir.num_seen == 10_000
    p50, p95 = reservoir.percentiles((50, 95))
    assert p50 is not None
    assert p95 is not None
    assert 3_500 < p50 < 6_500
    assert p95 > 8_000
    assert Reservoir(4, random.Random(0)).percentiles((50,)) == [None]


def test_an_interval_longer_than_the_window_is_refused() -> None:
    with pytest.raises(ValueError, match="interval_s must be > 0 and <= window_s"):
        RecentSeries(interval_s=30, window_s=10)
