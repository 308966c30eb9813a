"""Recent history for the live dashboard: a ring of fixed-width time buckets, filled from UsageRecords and
from periodic samples of each deployment's live figures, so that a page opened now draws the last
minutes at once instead of starting empty.

A record costs O(1) on the request path: counters and sums, plus TTFT and TPOT kept in a bounded
reservoir per bucket (uniform sampling once it is full), so memory stays fixed whatever the traffic.
Percentiles are computed only when the page asks. Only sealed buckets are shown: the open one is still
filling, and its rates would read low.

Everything runs on the server's event loop (listeners and handlers alike), so there are no locks.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inferline.stats import percentile
from inferline.types import UsageRecord

_FAILED = ("error", "rejected")
"""Outcomes counted as errors on the throughput chart (an abort is the client's choice, not a failure)."""


@dataclass(frozen=True)
class BackendSample:
    """One deployment's live figures at one instant, as the server reads them from its backend."""

    queue_depth: int
    """Requests waiting: in the backend's queue plus those the router holds at max_concurrency."""
    running: int
    """Requests the backend is working on."""
    kv_usage: float | None
    """Fraction of KV-cache blocks in use; None for backends without a KV cache (remote, runners)."""


class Reservoir:
    """At most `capacity` values, a uniform sample of all values added (Vitter's algorithm R)."""

    def __init__(self, capacity: int, rng: random.Random) -> None:
        self.capacity = capacity
        self.values: list[float] = []
        self.num_seen = 0
        self._rng = rng
        self._sorted: list[float] | None = None
        """The values in order, kept until the next add: the page asks every few seconds, and all but the
        newest buckets have not changed since."""

    def add(self, value: float) -> None:
        self.num_seen += 1
        self._sorted = None
        if len(self.values) < self.capacity:
            self.values.append(value)
            return
        slot = self._rng.randrange(self.num_seen)
        if slot < self.capacity:
            self.values[slot] = value

    def percentiles(self, qs: tuple[float, ...]) -> list[float | None]:
        """The q-th percentiles (q in [0, 100], stats.percentile); None for each when nothing was added."""
        if not self.values:
            return [None] * len(qs)
        if self._sorted is None:
            self._sorted = sorted(self.values)
        return [percentile(self._sorted, q, presorted=True) for q in qs]


@dataclass
class TenantTally:
    requests: int = 0
    cost_usd: float = 0.0


@dataclass
class Bucket:
    """What happened in [start, start + interval_s)."""

    start: float
    """Unix seconds."""
    ttft_s: Reservoir
    tpot_s: Reservoir
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tenants: dict[str, TenantTally] = field(default_factory=dict)
    arms: dict[str, dict[str, int]] = field(default_factory=dict)
    """route -> deployment that answered -> requests."""
    backends: dict[str, BackendSample] = field(default_factory=dict)
    """deployment -> its latest sample in this bucket."""

    def add(self, record: UsageRecord) -> None:
        self.requests += 1
        self.errors += record.outcome in _FAILED
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens
        tally = self.tenants.setdefault(record.tenant, TenantTally())
        tally.requests += 1
        tally.cost_usd += record.cost
        if record.deployment:
            arms = self.arms.setdefault(record.route, {})
            arms[record.deployment] = arms.get(record.deployment, 0) + 1
        if record.outcome == "ok" and record.ttft_s is not None:
            self.ttft_s.add(record.ttft_s)
        tpot_s = record.tpot_s
        if record.outcome == "ok" and tpot_s is not None:
            self.tpot_s.add(tpot_s)


class RecentSeries:
    """The last `window_s` seconds in buckets of `interval_s`, oldest first."""

    def __init__(
        self,
        interval_s: float = 2.0,
        window_s: float = 900.0,
        reservoir_size: int = 256,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
    ) -> None:
        if not 0 < interval_s <= window_s:
            raise ValueError(
                f"interval_s must be > 0 and <= window_s ({window_s}); got {interval_s}: "
                "pick a shorter interval or a longer window"
            )
        self.interval_s = interval_s
        self.window_s = window_s
        self.reservoir_size = reservoir_size
        self.clock = clock
        self.num_buckets = math.ceil(window_s / interval_s)
        self.buckets: deque[Bucket] = deque(maxlen=self.num_buckets)
        self.split_routes: set[str] = set()
        """Routes that choose between deployments (any policy but 'fixed', or seen answering from two)."""
        self._rng = random.Random(seed)

    def record(self, record: UsageRecord) -> None:
        """A router listener: count a finished request in the bucket of its finish time."""
        self._bucket_at(record.finished_at).add(record)
        if record.policy and record.policy != "fixed":
            self.split_routes.add(record.route)

    def sample(self, backends: dict[str, BackendSample]) -> None:
        """Keep each deployment's figures of now (the newest sample in a bucket wins)."""
        self._bucket_at(self.clock()).backends.update(backends)

    def _bucket_at(self, t: float) -> Bucket:
        index = math.floor(t / self.interval_s)
        newest = math.floor(self.buckets[-1].start / self.interval_s) if self.buckets else index - 1
        # A record finishing a hair before the newest bucket began lands in it: sealed buckets never
        # change after the page has drawn them.
        first_missing = max(newest + 1, index - self.num_buckets + 1)
        for missing in range(first_missing, index + 1):
            self.buckets.append(self._new_bucket(missing * self.interval_s))
        return self.buckets[-1]

    def _new_bucket(self, start: float) -> Bucket:
        return Bucket(
            start=start,
            ttft_s=Reservoir(self.reservoir_size, self._rng),
            tpot_s=Reservoir(self.reservoir_size, self._rng),
        )

    def sealed(self) -> list[Bucket]:
        """The buckets that have ended, oldest first, within the window."""
        now = self.clock()
        oldest = now - self.window_s
        return [b for b in self.buckets if oldest <= b.start and b.start + self.interval_s <= now]

    def snapshot(self) -> dict[str, Any]:
        """The sealed buckets as columns (one list per series, aligned with `t`), ready for JSON.
        None marks "no value" (no request finished, or the deployment was not sampled)."""
        buckets = self.sealed()
        per_s = 1.0 / self.interval_s
        ttft = [b.ttft_s.percentiles((50, 95)) for b in buckets]
        tpot = [b.tpot_s.percentiles((50, 95)) for b in buckets]
        return {
            "interval_s": self.interval_s,
            "window_s": self.window_s,
            "t": [b.start for b in buckets],
            "requests_per_s": [b.requests * per_s for b in buckets],
            "errors_per_s": [b.errors * per_s for b in buckets],
            "prompt_tokens_per_s": [b.prompt_tokens * per_s for b in buckets],
            "completion_tokens_per_s": [b.completion_tokens * per_s for b in buckets],
            "ttft_ms": {"p50": _ms(p[0] for p in ttft), "p95": _ms(p[1] for p in ttft)},
            "tpot_ms": {"p50": _ms(p[0] for p in tpot), "p95": _ms(p[1] for p in tpot)},
            "deployments": _deployment_columns(buckets),
            "tenants": _tenant_columns(buckets, per_s),
            "splits": self._split_columns(buckets),
            "totals": {**_totals(buckets), "splits": self._split_totals(buckets)},
        }

    def _split_routes(self, buckets: list[Bucket]) -> dict[str, list[str]]:
        """Routes that split traffic, with every deployment that answered them in these buckets."""
        arms: dict[str, set[str]] = {}
        for bucket in buckets:
            for route, counts in bucket.arms.items():
                arms.setdefault(route, set()).update(counts)
        return {
            route: sorted(names)
            for route, names in sorted(arms.items())
            if route in self.split_routes or len(names) > 1
        }

    def _split_totals(self, buckets: list[Bucket]) -> dict[str, dict[str, int]]:
        """route -> deployment -> requests it answered over the window."""
        return {
            route: {name: sum(b.arms.get(route, {}).get(name, 0) for b in buckets) for name in names}
            for route, names in self._split_routes(buckets).items()
        }

    def _split_columns(self, buckets: list[Bucket]) -> dict[str, dict[str, list[float | None]]]:
        """route -> deployment -> share of the route's requests it answered in each bucket (None when the
        route had none), for routes that split traffic."""
        splits: dict[str, dict[str, list[float | None]]] = {}
        for route, names in self._split_routes(buckets).items():
            totals = [sum(b.arms.get(route, {}).values()) for b in buckets]
            splits[route] = {
                name: [
                    b.arms[route].get(name, 0) / total if total else None
                    for b, total in zip(buckets, totals, strict=True)
                ]
                for name in names
            }
        return splits


def _ms(values: Any) -> list[float | None]:
    return [None if v is None else v * 1000 for v in values]


def _deployment_columns(buckets: list[Bucket]) -> dict[str, dict[str, list[float | None]]]:
    names = sorted({name for b in buckets for name in b.backends})
    columns: dict[str, dict[str, list[float | None]]] = {}
    for name in names:
        samples = [b.backends.get(name) for b in buckets]
        columns[name] = {
            "queue_depth": [None if s is None else s.queue_depth for s in samples],
            "running": [None if s is None else s.running for s in samples],
            "kv_usage": [None if s is None else s.kv_usage for s in samples],
        }
    return columns


def _tenant_columns(buckets: list[Bucket], per_s: float) -> dict[str, dict[str, list[float]]]:
    names = sorted({name for b in buckets for name in b.tenants})
    columns: dict[str, dict[str, list[float]]] = {}
    for name in names:
        tallies = [b.tenants.get(name, TenantTally()) for b in buckets]
        columns[name] = {
            "requests_per_s": [t.requests * per_s for t in tallies],
            "cost_usd": [t.cost_usd for t in tallies],
        }
    return columns


def _totals(buckets: list[Bucket]) -> dict[str, Any]:
    """Sums over the window, for the page's headline figures and the per-tenant table."""
    tenants: dict[str, TenantTally] = {}
    for bucket in buckets:
        for name, tally in bucket.tenants.items():
            total = tenants.setdefault(name, TenantTally())
            total.requests += tally.requests
            total.cost_usd += tally.cost_usd
    return {
        "requests": sum(b.requests for b in buckets),
        "errors": sum(b.errors for b in buckets),
        "prompt_tokens": sum(b.prompt_tokens for b in buckets),
        "completion_tokens": sum(b.completion_tokens for b in buckets),
        "cost_usd": sum(t.cost_usd for t in tenants.values()),
        "tenants": {
            name: {"requests": t.requests, "cost_usd": t.cost_usd} for name, t in sorted(tenants.items())
        },
    }
