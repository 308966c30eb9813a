"""The deployments' live figures for /metrics, read from their backends and breakers when Prometheus
scrapes (they are states, not events: nothing is counted on the request path for them)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferline.backends.llm import LLMBackend
from inferline.router.circuit import CircuitState
from inferline.router.deployments import Deployment, DeploymentPool

CIRCUIT_STATES: tuple[CircuitState, ...] = ("closed", "open", "half_open")


class PoolCollector(Collector):
    """Queue depth, running requests, KV cache, prefix cache, preemptions and circuit state per deployment."""

    def __init__(self, pool: DeploymentPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        label = ["deployment"]
        running = GaugeMetricFamily(
            "inferline_requests_running", "Requests the backend is working on.", labels=label
        )
        waiting = GaugeMetricFamily(
            "inferline_requests_waiting",
            "Requests queued for the deployment: in the backend's queue plus those the router holds while "
            "the deployment is at max_concurrency.",
            labels=label,
        )
        engine = _EngineFamilies()
        circuit = GaugeMetricFamily(
            "inferline_circuit_state",
            "1 for the state the deployment's circuit breaker is in (closed, open, half_open), else 0.",
            labels=["deployment", "state"],
        )
        opened = CounterMetricFamily(
            "inferline_circuit_opened", "Times the deployment's circuit breaker opened.", labels=label
        )
        for deployment in self.pool.deployments:
            name = [deployment.name]
            stats = deployment.backend.stats()
            running.add_metric(name, stats.running)
            waiting.add_metric(name, stats.queue_depth + deployment.waiting)
            engine.add(deployment)
            state = deployment.breaker.state
            for candidate in CIRCUIT_STATES:
                circuit.add_metric([deployment.name, candidate], float(candidate == state))
            opened.add_metric(name, deployment.breaker.times_opened)
        yield from (running, waiting, *engine.families(), circuit, opened)


class _EngineFamilies:
    """The figures only a local LLM engine has."""

    def __init__(self) -> None:
        label = ["deployment"]
        self.blocks_used = GaugeMetricFamily(
            "inferline_kv_cache_blocks_used", "KV-cache blocks held by live sequences.", labels=label
        )
        self.usage = GaugeMetricFamily(
            "inferline_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use.", labels=label
        )
        self.prefix_hit_rate = GaugeMetricFamily(
            "inferline_prefix_cache_hit_ratio",
            "Share of prompt tokens served from the prefix cache since start.",
            labels=label,
        )
        self.preemptions = CounterMetricFamily(
            "inferline_preemptions",
            "Sequences preempted (their KV blocks reclaimed) since start.",
            labels=label,
        )
        self.spec_drafted = CounterMetricFamily(
            "inferline_spec_decode_draft_tokens",
            "Speculative draft tokens verified since start.",
            labels=label,
        )
        self.spec_accepted = CounterMetricFamily(
            "inferline_spec_decode_accepted_tokens",
            "Speculative draft tokens accepted since start.",
            labels=label,
        )
        self.spec_steps = CounterMetricFamily(
            "inferline_spec_decode_verify_steps", "Sequence-steps that verified draft tokens.", labels=label
        )
        self.spec_acceptance = GaugeMetricFamily(
            "inferline_spec_decode_acceptance_ratio",
            "Share of draft tokens accepted since start.",
            labels=label,
        )
        self.spec_length = GaugeMetricFamily(
            "inferline_spec_decode_mean_accepted_length",
            "Tokens emitted per verify step (accepted drafts plus one) since start.",
            labels=label,
        )

    def add(self, deployment: Deployment) -> None:
        backend = deployment.backend
        if not isinstance(backend, LLMBackend) or backend.engine is None:
            return
        stats = backend.engine.stats()
        name = [deployment.name]
        self.blocks_used.add_metric(name, stats.kv_num_blocks - stats.kv_num_free_blocks)
        self.usage.add_metric(name, stats.kv_usage)
        self.prefix_hit_rate.add_metric(name, stats.prefix_hit_rate)
        self.preemptions.add_metric(name, stats.num_preemptions)
        self.spec_drafted.add_metric(name, stats.spec_drafted_tokens)
        self.spec_accepted.add_metric(name, stats.spec_accepted_tokens)
        self.spec_steps.add_metric(name, stats.spec_verify_steps)
        self.spec_acceptance.add_metric(name, stats.spec_acceptance_rate)
        self.spec_length.add_metric(name, stats.spec_mean_accepted_length)

    def families(self) -> tuple[Metric, ...]:
        return (
            self.blocks_used,
            self.usage,
            self.prefix_hit_rate,
            self.preemptions,
            self.spec_drafted,
            self.spec_accepted,
            self.spec_steps,
            self.spec_acceptance,
            self.spec_length,
        )
