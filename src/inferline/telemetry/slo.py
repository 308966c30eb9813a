"""Service-level objectives per route: attainment, error-budget burn rates and burn-rate alerts.

Every objective sorts each finished request into a good event, a bad event, or no event:
- availability: "ok" is good and "error" is bad. "rejected" (the caller's own quota, budget or an
  admission refusal) and "aborted" (the client left) say nothing about the service failing: no event.
- ttft_p95 / latency_p95: an answered request is good when at or under the threshold. The objective is
  that 95 % are, so "p95 <= X" holds exactly while the good share is >= 95 %.

The burn rate over a window is the window's bad share divided by the error budget (1 - target): at 1 the
budget lasts exactly window_days. Alerts follow the multi-window, multi-burn-rate scheme of Google's SRE
workbook: one fires while both its long and its short window burn faster than its threshold (the long
one shows that enough budget has gone, the short one that it is still going, so the alert clears soon
after a fix).

Memory is bounded whatever the traffic: counts per minute over the longest burn window (3 days) and per
hour over window_days (attainment and remaining budget). Everything runs on the server's event loop.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferline.config import RouteConfig, SloConfig
from inferline.types import UsageRecord

BURN_WINDOWS_S: dict[str, int] = {
    "5m": 300,
    "30m": 1_800,
    "1h": 3_600,
    "2h": 7_200,
    "6h": 21_600,
    "1d": 86_400,
    "3d": 259_200,
}


@dataclass(frozen=True)
class BurnAlert:
    severity: str
    """"page" (someone acts now) or "ticket" (someone acts today)."""
    long_window: str
    short_window: str
    burn_rate: float
    """Fires while both windows burn faster than this."""


BURN_ALERTS = (
    BurnAlert("page", "1h", "5m", 14.4),  # 2 % of a 30-day budget in an hour
    BurnAlert("page", "6h", "30m", 6.0),  # 5 % in six hours
    BurnAlert("ticket", "1d", "2h", 3.0),  # 10 % in a day
    BurnAlert("ticket", "3d", "6h", 1.0),  # 10 % in three days
)

LATENCY_TARGET = 0.95
"""Share of answered requests that must be under a p95 objective's threshold."""

_AVAILABILITY_EVENTS = {"ok": True, "cached": True, "error": False}


@dataclass(frozen=True)
class Objective:
    name: str
    """"availability", "ttft_p95" or "latency_p95"."""
    target: float
    """Share of events that must be good."""
    threshold_ms: float | None = None
    """Latency objectives: the most a good request may take."""

    def judge(self, record: UsageRecord) -> bool | None:
        """Good (True), bad (False), or None when the request is no event of this objective."""
        if self.threshold_ms is None:
            return _AVAILABILITY_EVENTS.get(record.outcome)
        if record.outcome != "ok":
            return None
        value_s = record.ttft_s if self.name == "ttft_p95" else record.latency_s
        return None if value_s is None else value_s * 1000 <= self.threshold_ms


def objectives_of(config: SloConfig) -> list[Objective]:
    objectives = []
    if config.availability is not None:
        objectives.append(Objective("availability", config.availability))
    if config.ttft_p95_ms is not None:
        objectives.append(Objective("ttft_p95", LATENCY_TARGET, config.ttft_p95_ms))
    if config.latency_p95_ms is not None:
        objectives.append(Objective("latency_p95", LATENCY_TARGET, config.latency_p95_ms))
    return objectives


class _Slots:
    """Counts in fixed-width time slots, oldest first, kept for `horizon_s`. Each slot holds
    [good, total] for every objective of a route, side by side."""

    def __init__(self, slot_s: int, horizon_s: float, width: int) -> None:
        self.slot_s = slot_s
        self.max_slots = math.ceil(horizon_s / slot_s) + 1  # the open slot besides the full ones
        self.width = width
        self.slots: deque[tuple[int, list[int]]] = deque()

    def current(self, now: float) -> list[int]:
        """The counts of the slot `now` falls in."""
        index = math.floor(now / self.slot_s)
        # A wall clock stepped back lands in the newest slot: slots stay in order.
        if self.slots and self.slots[-1][0] >= index:
            return self.slots[-1][1]
        counts = [0] * self.width
        self.slots.append((index, counts))
        while self.slots[0][0] <= index - self.max_slots:
            self.slots.popleft()
        return counts

    def totals(self, now: float, windows_s: Sequence[float]) -> list[list[int]]:
        """Counts summed over the slots that start within each window (given shortest first) before `now`.
        A window thus spans up to one slot less than its length, never more."""
        firsts = [math.ceil((now - w) / self.slot_s) for w in windows_s]
        results: list[list[int]] = []
        sums = [0] * self.width
        for index, counts in reversed(self.slots):
            while len(results) < len(firsts) and index < firsts[len(results)]:
                results.append(list(sums))
            if len(results) == len(firsts):
                break
            sums = [a + b for a, b in zip(sums, counts, strict=True)]
        results += [list(sums) for _ in range(len(firsts) - len(results))]
        return results


@dataclass(frozen=True)
class AlertStatus:
    severity: str
    long_window: str
    short_window: str
    burn_rate: float
    """The threshold both windows must exceed."""
    firing: bool


@dataclass(frozen=True)
class ObjectiveStatus:
    objective: str
    target: float
    threshold_ms: float | None
    events: int
    """Events over the route's window_days."""
    bad_events: int
    attainment: float | None
    """Good share over window_days; None without events."""
    error_budget_remaining: float
    """1 - bad events / the bad events the target allows, over window_days: 1 untouched, 0 spent,
    below 0 overspent."""
    burn_rates: dict[str, float]
    """Window ("5m" ... "3d") -> bad share / (1 - target); 0 without events."""
    alerts: list[AlertStatus]


@dataclass(frozen=True)
class RouteStatus:
    route: str
    window_days: float
    objectives: list[ObjectiveStatus]


@dataclass
class _RouteSlo:
    window_s: float
    objectives: list[Objective]
    minutes: _Slots
    hours: _Slots


def _burn_rate(good: int, total: int, target: float) -> float:
    return (total - good) / total / (1 - target) if total else 0.0


class SloTracker:
    """A router listener that keeps every route's objectives; `status()` judges them as of now."""

    def __init__(self, routes: Iterable[RouteConfig], clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.routes: dict[str, _RouteSlo] = {}
        longest_burn_s = max(BURN_WINDOWS_S.values())
        for route in routes:
            objectives = objectives_of(route.slo) if route.slo is not None else []
            if route.slo is None or not objectives:
                continue
            window_s = route.slo.window_days * 86_400
            width = 2 * len(objectives)
            self.routes[route.name] = _RouteSlo(
                window_s, objectives, _Slots(60, longest_burn_s, width), _Slots(3_600, window_s, width)
            )

    def record(self, record: UsageRecord) -> None:
        route = self.routes.get(record.route)
        if route is None:
            return
        now = self.clock()
        minute, hour = route.minutes.current(now), route.hours.current(now)
        for i, objective in enumerate(route.objectives):
            good = objective.judge(record)
            if good is None:
                continue
            minute[2 * i + 1] += 1
            hour[2 * i + 1] += 1
            if good:
                minute[2 * i] += 1
                hour[2 * i] += 1

    def status(self) -> list[RouteStatus]:
        now = self.clock()
        return [self._route_status(name, route, now) for name, route in self.routes.items()]

    def snapshot(self) -> dict[str, Any]:
        """GET /v1/slo's body: route -> window_days and objective name -> its status."""
        return {
            status.route: {
                "window_days": status.window_days,
                "objectives": {o.objective: _without_name(o) for o in status.objectives},
            }
            for status in self.status()
        }

    def _route_status(self, name: str, route: _RouteSlo, now: float) -> RouteStatus:
        windows = sorted(BURN_WINDOWS_S, key=BURN_WINDOWS_S.__getitem__)
        burns = route.minutes.totals(now, [BURN_WINDOWS_S[w] for w in windows])
        (whole,) = route.hours.totals(now, [route.window_s])
        objectives = [
            _objective_status(
                objective,
                {w: (counts[2 * i], counts[2 * i + 1]) for w, counts in zip(windows, burns, strict=True)},
                (whole[2 * i], whole[2 * i + 1]),
            )
            for i, objective in enumerate(route.objectives)
        ]
        return RouteStatus(name, route.window_s / 86_400, objectives)


def _objective_status(
    objective: Objective, burn_counts: dict[str, tuple[int, int]], whole: tuple[int, int]
) -> ObjectiveStatus:
    """From (good, total) per burn window and over window_days."""
    rates = {w: _burn_rate(good, total, objective.target) for w, (good, total) in burn_counts.items()}
    alerts = [
        AlertStatus(
            a.severity,
            a.long_window,
            a.short_window,
            a.burn_rate,
            rates[a.long_window] > a.burn_rate and rates[a.short_window] > a.burn_rate,
        )
        for a in BURN_ALERTS
    ]
    good, total = whole
    return ObjectiveStatus(
        objective=objective.name,
        target=objective.target,
        threshold_ms=objective.threshold_ms,
        events=total,
        bad_events=total - good,
        attainment=good / total if total else None,
        error_budget_remaining=1 - _burn_rate(good, total, objective.target),
        burn_rates=rates,
        alerts=alerts,
    )


def _without_name(status: ObjectiveStatus) -> dict[str, Any]:
    fields = dataclasses.asdict(status)
    del fields["objective"]
    return fields


class SloCollector(Collector):
    """The tracker's status as Prometheus gauges, computed when /metrics is scraped."""

    def __init__(self, tracker: SloTracker) -> None:
        self.tracker = tracker

    def collect(self) -> Iterator[Metric]:
        objective_labels = ["route", "objective"]
        target = GaugeMetricFamily(
            "inferline_slo_target",
            "Share of events an objective requires to be good.",
            labels=objective_labels,
        )
        attainment = GaugeMetricFamily(
            "inferline_slo_attainment",
            "Good share of events over the objective's window_days (absent before the first event).",
            labels=objective_labels,
        )
        budget = GaugeMetricFamily(
            "inferline_slo_error_budget_remaining",
            "Share of the error budget left over window_days: 1 untouched, 0 spent, below 0 overspent.",
            labels=objective_labels,
        )
        burn = GaugeMetricFamily(
            "inferline_slo_burn_rate",
            "Bad share over the window / (1 - target): 1 spends the budget exactly over window_days.",
            labels=[*objective_labels, "window"],
        )
        alerts = GaugeMetricFamily(
            "inferline_slo_alert_firing",
            "1 while both windows of a multi-window burn-rate alert burn faster than its threshold.",
            labels=[*objective_labels, "severity", "long_window", "short_window"],
        )
        for route in self.tracker.status():
            for o in route.objectives:
                labels = [route.route, o.objective]
                target.add_metric(labels, o.target)
                if o.attainment is not None:
                    attainment.add_metric(labels, o.attainment)
                budget.add_metric(labels, o.error_budget_remaining)
                for window, rate in o.burn_rates.items():
                    burn.add_metric([*labels, window], rate)
                for a in o.alerts:
                    alerts.add_metric([*labels, a.severity, a.long_window, a.short_window], float(a.firing))
        yield from (target, attainment, budget, burn, alerts)
