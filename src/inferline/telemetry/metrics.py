"""The Prometheus metric families of one server, and the per-request part that reads UsageRecords.

Live figures of the deployments (queues, KV cache, circuits) are read when /metrics is scraped, by a
collector that lives beside the backends (server/metrics.py); SLO figures likewise (telemetry/slo.py).
What is counted here is what only the request path knows: one UsageRecord per finished request.

`record_usage` runs on the request path, so it does no label work per call: each distinct kind of record
(tenant, route, deployment, outcome, ...) resolves its labelled children once and keeps them in a dict
keyed by that tuple; later records of the same kind cost one dict lookup and a few increments.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from inferline.types import UsageRecord

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
"""End-to-end latency and time to first token: from cache hits on a classifier to long generations."""
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)
"""Time per output token: a few ms on a GPU to a few hundred ms on a laptop CPU."""

_UsageKey = tuple[str, str, str, str, str, int | None, bool, str]
"""(tenant, route, deployment, outcome, policy, cascade_stage, degraded, error_type)"""


@dataclass(frozen=True)
class _Series:
    """The children one kind of record touches; None where that kind touches no child of a family."""

    requests: Counter
    tenant_requests: Counter
    prompt_tokens: Counter
    completion_tokens: Counter
    tenant_cost: Counter
    route_cost: Counter
    latency: Histogram | None
    """Answered ("ok") requests only: failures would pull the percentiles toward their time to fail."""
    ttft: Histogram | None
    tpot: Histogram | None
    decision: Counter | None
    """Requests a deployment took (whatever their outcome): which arm the route's policy picked."""
    cascade_stage: Counter | None
    degradation: Counter | None
    rejection: Counter | None


class Metrics:
    """One registry per app, so several apps (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._usage: dict[_UsageKey, _Series] = {}
        self._http: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._define_http()
        self._define_usage()
        self._define_router()

    def _define_http(self) -> None:
        self.requests = Counter(
            "inferline_http_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inferline_http_request_duration_seconds",
            "Time from request to the end of the response body.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def _define_usage(self) -> None:
        route_arm = ["route", "deployment"]
        self.route_requests = Counter(
            "inferline_route_requests",
            "Finished requests per route and the deployment (arm) that answered ('' when none did), "
            "by outcome (ok, error, rejected, aborted, cached).",
            ["route", "deployment", "outcome"],
            registry=self.registry,
        )
        self.route_latency = Histogram(
            "inferline_route_latency_seconds",
            "End-to-end latency of answered requests, per route and arm.",
            route_arm,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.retrieval_latency = Histogram(
            "inferline_retrieval_seconds",
            "Time a rag route spent retrieving (embedding the query and searching its store), per route.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.route_ttft = Histogram(
            "inferline_route_ttft_seconds",
            "Time to first token (first result) of answered requests, per route and arm.",
            route_arm,
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.route_tpot = Histogram(
            "inferline_route_tpot_seconds",
            "Mean time per output token after the first, of answered requests with two or more tokens.",
            route_arm,
            buckets=TPOT_BUCKETS_S,
            registry=self.registry,
        )
        self.route_cost = Counter(
            "inferline_route_cost_usd", "Spend per route and arm.", route_arm, registry=self.registry
        )
        self.tenant_requests = Counter(
            "inferline_tenant_requests",
            "Finished requests per tenant, by outcome.",
            ["tenant", "outcome"],
            registry=self.registry,
        )
        self.tenant_tokens = Counter(
            "inferline_tenant_tokens",
            "Tokens per tenant: kind is 'prompt' (in) or 'completion' (out).",
            ["tenant", "kind"],
            registry=self.registry,
        )
        self.tenant_cost = Counter(
            "inferline_tenant_cost_usd",
            "Spend per tenant, from the deployments' prices (escalated cascade stages included).",
            ["tenant"],
            registry=self.registry,
        )

    def _define_router(self) -> None:
        self.decisions = Counter(
            "inferline_router_decisions",
            "Requests a deployment took, by route, the route's policy and that deployment (arm).",
            ["route", "policy", "deployment"],
            registry=self.registry,
        )
        self.cascade_stages = Counter(
            "inferline_router_cascade_stage",
            "Cascade routes: requests by the 1-based stage that answered.",
            ["route", "stage"],
            registry=self.registry,
        )
        self.degradations = Counter(
            "inferline_router_degradations",
            "Requests admission sent to the route's smaller degrade_to target, by the target.",
            ["route", "deployment"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "inferline_router_rejections",
            "Requests refused before any deployment answered (quotas, budgets, admission), by reason.",
            ["route", "reason"],
            registry=self.registry,
        )

    # ---- the request path ---------------------------------------------------------------------

    def observe_http(self, route: str, status: int, duration_s: float) -> None:
        """One HTTP request, from the ASGI middleware."""
        children = self._http.get((route, status))
        if children is None:
            children = self._http[(route, status)] = (
                self.requests.labels(route, str(status)),
                self.latency.labels(route),
            )
        children[0].inc()
        children[1].observe(duration_s)

    def record_usage(self, record: UsageRecord) -> None:
        """A router listener: count one finished request."""
        key = (
            record.tenant,
            record.route,
            record.deployment,
            record.outcome,
            record.policy,
            record.cascade_stage,
            record.degraded,
            record.error_type,
        )
        series = self._usage.get(key)
        if series is None:
            series = self._usage[key] = self._resolve(record)
        series.requests.inc()
        series.tenant_requests.inc()
        if record.prompt_tokens:
            series.prompt_tokens.inc(record.prompt_tokens)
        if record.completion_tokens:
            series.completion_tokens.inc(record.completion_tokens)
        if record.cost:
            series.tenant_cost.inc(record.cost)
            series.route_cost.inc(record.cost)
        self._record_answer(series, record)

    @staticmethod
    def _record_answer(series: _Series, record: UsageRecord) -> None:
        if series.latency is not None:
            series.latency.observe(record.latency_s)
        if series.ttft is not None and record.ttft_s is not None:
            series.ttft.observe(record.ttft_s)
        tpot_s = record.tpot_s
        if series.tpot is not None and tpot_s is not None:
            series.tpot.observe(tpot_s)
        for counter in (series.decision, series.cascade_stage, series.degradation, series.rejection):
            if counter is not None:
                counter.inc()

    def _resolve(self, record: UsageRecord) -> _Series:
        route, deployment = record.route, record.deployment
        answered = bool(deployment) and record.outcome == "ok"
        reached = bool(deployment)
        return _Series(
            requests=self.route_requests.labels(route, deployment, record.outcome),
            tenant_requests=self.tenant_requests.labels(record.tenant, record.outcome),
            prompt_tokens=self.tenant_tokens.labels(record.tenant, "prompt"),
            completion_tokens=self.tenant_tokens.labels(record.tenant, "completion"),
            tenant_cost=self.tenant_cost.labels(record.tenant),
            route_cost=self.route_cost.labels(route, deployment),
            latency=self.route_latency.labels(route, deployment) if answered else None,
            ttft=self.route_ttft.labels(route, deployment) if answered else None,
            tpot=self.route_tpot.labels(route, deployment) if answered else None,
            decision=self.decisions.labels(route, record.policy, deployment) if reached else None,
            cascade_stage=(
                self.cascade_stages.labels(route, str(record.cascade_stage))
                if reached and record.cascade_stage is not None
                else None
            ),
            degradation=self.degradations.labels(route, deployment) if record.degraded else None,
            rejection=(
                self.rejections.labels(route, record.error_type or "unknown")
                if record.outcome == "rejected"
                else None
            ),
        )

    def observe_retrieval(self, route: str, elapsed_s: float) -> None:
        self.retrieval_latency.labels(route).observe(elapsed_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
