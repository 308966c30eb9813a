"""The Prometheus families of stream workers, in the registry of the app (or CLI) that runs them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inferline.telemetry.metrics import LATENCY_BUCKETS_S

OUTCOMES = ("processed", "failed", "dead_lettered")


class StreamMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "inferline_stream_messages",
            "Messages a stream worker handled, by outcome: processed (result written), failed (scoring "
            "failed; delivered again later), dead_lettered (written to the dead-letter stream).",
            ["stream", "outcome"],
            registry=registry,
        )
        self.lag = Gauge(
            "inferline_stream_lag_messages",
            "Messages of the source the worker's group has not finished (not yet delivered, or delivered "
            "and not acknowledged).",
            ["stream"],
            registry=registry,
        )
        self.latency = Histogram(
            "inferline_stream_latency_seconds",
            "End to end: from the broker taking a message to its result written to the sink.",
            ["stream"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.batch_size = Histogram(
            "inferline_stream_batch_size",
            "Messages scored together in one batch.",
            ["stream"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
            registry=registry,
        )
