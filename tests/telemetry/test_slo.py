"""SLO attainment, burn rates, multi-window alerts and the error budget, on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from inferline.config import RouteConfig, SloConfig
from inferline.telemetry.slo import ObjectiveStatus, SloCollector, SloTracker
from inferline.types import UsageRecord
from tests.telemetry.records import usage_record

T0 = 1_699_999_200.0
"""A Unix time on a whole hour, so slots line up with the test's minutes."""
MINUTE = 60.0
HOUR = 3_600.0
DAY = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def record(outcome: str = "ok", route: str = "chat", **fields: Any) -> UsageRecord:
    return usage_record(**{"completion_tokens": 4, "outcome": outcome, "route": route, **fields})


def tracker(clock: Clock, **slo: Any) -> SloTracker:
    routes = [RouteConfig(name="chat", deployments=["small"], slo=SloConfig(**slo))]
    return SloTracker(routes, clock)


def feed(slo: SloTracker, count: int, outcome: str = "ok", **fields: Any) -> None:
    for _ in range(count):
        slo.record(record(outcome, **fields))


def status(slo: SloTracker, objective: str = "availability") -> ObjectiveStatus:
    (route,) = slo.status()
    return next(o for o in route.objectives if o.objective == objective)


def firing(status: ObjectiveStatus) -> set[str]:
    return {f"{a.long_window}&{a.short_window}" for a in status.alerts if a.firing}


def test_burn_rate_is_the_error_rate_over_the_error_budget() -> None:
    clock = Clock()
    slo = tracker(clock, availability=0.99)
    feed(slo, 90)
    feed(slo, 10, "error")
    clock.now += 30
    availability = status(slo)
    assert availability.events == 100
    assert availability.bad_events == 10
    assert availability.attainment == pytest.approx(0.9)
    assert set(availability.burn_rates) == {"5m", "30m", "1h", "2h", "6h", "1d", "3d"}
    for rate in availability.burn_rates.values():
        assert rate == pytest.approx(0.1 / (1 - 0.99))
    # 10 bad events where the target allows 1: the budget is overspent nine times over.
    assert availability.error_budget_remaining == pytest.approx(1 - 10)


def test_rejected_and_aborted_requests_do_not_count_against_availability() -> None:
    clock = Clock()
    slo = tracker(clock, availability=0.9)
    feed(slo, 4)
    feed(slo, 1, "error")
    feed(slo, 7, "rejected", error_type="LimitExceededError")
    feed(slo, 5, "aborted")
    availability = status(slo)
    assert (availability.events, availability.bad_events) == (5, 1)
    assert availability.burn_rates["5m"] == pytest.approx(0.2 / 0.1)


def test_latency_objectives_judge_the_share_under_the_threshold_against_95_percent() -> None:
    clock = Clock()
    slo = tracker(clock, ttft_p95_ms=500, latency_p95_ms=1000)
    feed(slo, 6, ttft_s=0.4, latency_s=0.9)
    feed(slo, 2, ttft_s=0.5, latency_s=1.0)  # at the threshold is within it
    feed(slo, 2, ttft_s=0.6, latency_s=2.0)
    feed(slo, 3, "error", ttft_s=None)  # failures are availability's business
    feed(slo, 1, "aborted", ttft_s=5.0, latency_s=9.0)
    ttft, latency = status(slo, "ttft_p95"), status(slo, "latency_p95")
    for objective in (ttft, latency):
        assert objective.target == 0.95
        assert (objective.events, objective.bad_events) == (10, 2)
        assert objective.attainment == pytest.approx(0.8)
        assert objective.burn_rates["1h"] == pytest.approx(0.2 / 0.05)
    assert (ttft.threshold_ms, latency.threshold_ms) == (500, 1000)


def test_a_burn_window_forgets_what_happened_before_it() -> None:
    clock = Clock()
    slo = tracker(clock, availability=0.99)
    feed(slo, 1, "error")
    feed(slo, 1)
    clock.now += 10 * MINUTE
    feed(slo, 3)
    rates = status(slo).burn_rates
    assert rates["5m"] == 0
    assert rates["30m"] == pytest.approx((1 / 5) / 0.01)
    clock.now += 3 * DAY
    assert all(rate == 0 for rate in status(slo).burn_rates.values())


def test_an_alert_fires_only_while_both_of_its_windows_burn_too_fast() -> None:
    clock = Clock()
    slo = tracker(clock, availability=0.999)
    # Errors 50 minutes ago, all well now: the hour burns fast, the last 5 minutes do not.
    feed(slo, 90)
    feed(slo, 10, "error")
    clock.now += 50 * MINUTE
    feed(slo, 100)
    clock.now += 30
    past = status(slo)
    assert past.burn_rates["1h"] == pytest.approx(0.05 / 0.001)
    assert past.burn_rates["5m"] == 0
    assert "1h&5m" not in firing(past)

    # A fresh burst after a long good stretch: the last 5 minutes burn fast, the hour does not.
    clock = Clock()
    slo = tracker(clock, availability=0.999)
    feed(slo, 10_000)
    clock.now += 50 * MINUTE
    feed(slo, 90)
    feed(slo, 10, "error")
    burst = status(slo)
    assert burst.burn_rates["5m"] == pytest.approx(0.1 / 0.001)
    assert burst.burn_rates["1h"] < 14.4
    assert "1h&5m" not in firing(burst)

    # Failing now and for the last hour: every pair fires.
    clock = Clock()
    slo = tracker(clock, availability=0.999)
    feed(slo, 90)
    feed(slo, 10, "error")
    assert firing(status(slo)) == {"1h&5m", "6h&30m", "1d&2h", "3d&6h"}


def test_the_slow_burn_alerts_need_their_own_thresholds() -> None:
    clock = Clock()
    slo = tracker(clock, availability=0.99)
    feed(slo, 95)
    feed(slo, 5, "error")  # burn rate 5: over the 3 and the 1 of the ticket alerts, under 6 and 14.4
    assert firing(status(slo)) == {"1d&2h", "3d&6h"}


def test_the_error_budget_spans_window_days_and_then_comes_back() -> None:
    clock = Clock()
    slo = tracker(clock, availability=0.99, window_days=1)
    feed(slo, 995)
    feed(slo, 5, "error")  # 1000 events allow 10 bad ones: half the budget is spent
    assert status(slo).error_budget_remaining == pytest.approx(0.5)
    clock.now += 12 * HOUR
    feed(slo, 1000)  # 2000 events allow 20 bad ones
    assert status(slo).error_budget_remaining == pytest.approx(1 - 5 / 20)
    assert status(slo).attainment == pytest.approx(1995 / 2000)
    clock.now += 13 * HOUR  # the first 1000 have left the one-day window
    later = status(slo)
    assert (later.events, later.error_budget_remaining, later.attainment) == (1000, 1.0, 1.0)


def test_memory_stays_bounded_however_long_it_runs() -> None:
    clock = Clock()
    slo = tracker(clock, availability=0.99, window_days=2)
    for _ in range(5 * 24 * 60):  # one request a minute for five days
        slo.record(record())
        clock.now += MINUTE
    route = slo.routes["chat"]
    assert len(route.minutes.slots) <= 3 * 24 * 60 + 1
    assert len(route.hours.slots) <= 2 * 24 + 1
    assert status(slo).events == 2 * 24 * 60


def test_routes_without_objectives_are_not_tracked() -> None:
    routes = [
        RouteConfig(name="plain", deployments=["small"]),
        RouteConfig(name="empty", deployments=["small"], slo=SloConfig()),
        RouteConfig(name="chat", deployments=["small"], slo=SloConfig(availability=0.9)),
    ]
    slo = SloTracker(routes, Clock())
    slo.record(record(route="plain"))
    assert list(slo.routes) == ["chat"]
    assert list(slo.snapshot()) == ["chat"]


def test_snapshot_and_prometheus_gauges_say_the_same() -> None:
    clock = Clock()
    slo = tracker(clock, availability=0.99, ttft_p95_ms=250)
    feed(slo, 8)
    feed(slo, 2, "error")
    snapshot = slo.snapshot()["chat"]
    availability = snapshot["objectives"]["availability"]
    assert snapshot["window_days"] == 30
    assert availability["burn_rates"]["1h"] == pytest.approx(20.0)
    assert [a["firing"] for a in availability["alerts"]] == [True, True, True, True]
    assert snapshot["objectives"]["ttft_p95"]["alerts"][0]["firing"] is False

    registry = CollectorRegistry()
    registry.register(SloCollector(slo))
    labels = {"route": "chat", "objective": "availability"}

    def gauge(name: str, **more: str) -> float | None:
        return registry.get_sample_value(name, {**labels, **more})

    assert gauge("inferline_slo_burn_rate", window="1h") == pytest.approx(20.0)
    assert gauge("inferline_slo_attainment") == pytest.approx(0.8)
    assert gauge("inferline_slo_error_budget_remaining") == pytest.approx(1 - 20.0)
    assert gauge("inferline_slo_target") == 0.99
    assert gauge("inferline_slo_alert_firing", severity="page", long_window="1h", short_window="5m") == 1
    ttft = {"objective": "ttft_p95"}
    assert (
        gauge("inferline_slo_alert_firing", **ttft, severity="page", long_window="1h", short_window="5m") == 0
    )
