"""Prometheus metrics of the HTTP layer and the engines (the full telemetry set is its own room)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from inferline.backends.base import Backend
from inferline.backends.llm import LLMBackend
from inferline.types import UsageRecord

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """One registry per app, so several apps (tests) never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "inferline_time_to_first_token_seconds",
            "Time from submitting to the engine to the first token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "inferline_prompt_tokens", "Prompt tokens processed.", ["model"], registry=self.registry
        )
        self.generation_tokens = Counter(
            "inferline_generation_tokens", "Tokens generated.", ["model"], registry=self.registry
        )
        self.running = Gauge(
            "inferline_requests_running", "Requests running.", ["model"], registry=self.registry
        )
        self.waiting = Gauge(
            "inferline_requests_waiting", "Requests queued.", ["model"], registry=self.registry
        )
        self.kv_blocks_used = Gauge(
            "inferline_kv_cache_blocks_used",
            "KV-cache blocks held by live sequences.",
            ["model"],
            registry=self.registry,
        )
        self.kv_usage = Gauge(
            "inferline_kv_cache_usage_ratio",
            "Fraction of KV-cache blocks in use.",
            ["model"],
            registry=self.registry,
        )
        self.preemptions = Gauge(
            "inferline_preemptions", "Sequences preempted since start.", ["model"], registry=self.registry
        )
        self.prefix_hit_rate = Gauge(
            "inferline_prefix_cache_hit_ratio",
            "Share of prompt tokens served from the prefix cache.",
            ["model"],
            registry=self.registry,
        )

        self.route_requests = Counter(
            "inferline_route_requests",
            "Requests per route and the deployment (arm) that answered, by outcome.",
            ["route", "deployment", "outcome"],
            registry=self.registry,
        )
        self.route_latency = Histogram(
            "inferline_route_latency_seconds",
            "End-to-end latency per route and arm.",
            ["route", "deployment"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.route_cost = Counter(
            "inferline_route_cost_usd",
            "Spend per route and arm.",
            ["route", "deployment"],
            registry=self.registry,
        )
        self.circuit_open = Gauge(
            "inferline_circuit_open",
            "1 while a deployment's circuit breaker is open or half-open.",
            ["deployment"],
            registry=self.registry,
        )

    def record_usage(self, record: UsageRecord) -> None:
        self.route_requests.labels(record.route, record.deployment, record.outcome).inc()
        if record.deployment:
            self.route_latency.labels(record.route, record.deployment).observe(record.latency_s)
            self.route_cost.labels(record.route, record.deployment).inc(record.cost)

    def observe_backend(self, name: str, backend: Backend) -> None:
        stats = backend.stats()
        self.running.labels(name).set(stats.running)
        self.waiting.labels(name).set(stats.queue_depth)
        if isinstance(backend, LLMBackend) and backend.engine is not None:
            engine = backend.engine.stats()
            self.kv_blocks_used.labels(name).set(engine.kv_num_blocks - engine.kv_num_free_blocks)
            self.kv_usage.labels(name).set(engine.kv_usage)
            self.preemptions.labels(name).set(engine.num_preemptions)
            self.prefix_hit_rate.labels(name).set(engine.prefix_hit_rate)

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        self.prompt_tokens.labels(model).inc(prompt)
        self.generation_tokens.labels(model).inc(completion)

    def render(self) -> bytes:
        return generate_latest(self.registry)
