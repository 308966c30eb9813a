"""What tracing and the access log add to one request on the request path, measured in-process.

The request path's tracing calls, in the order the HTTP layer, the router and the OpenAI serving layer
make them for a chat request on a remote deployment (server span with the client's traceparent → route
span → backend span made current → the engine Request given its traceparent → backend, route and server
spans ended), timed with timeit under four settings:

- off: `tracing.enabled: false` (the client's traceparent is still passed on);
- no receiver: enabled, but no exporter configured, so no spans are made;
- not sampled: `sample_ratio: 0` with no sampled parent;
- sampled: every trace recorded into a BatchSpanProcessor whose exporter drops the batch (the cost the
  request path pays; the export itself runs on the processor's thread), and beside it the CPU that
  thread spends encoding one request's spans as OTLP protobuf.

Then the access line: one JSON line per request through the logging module into /dev/null.
Each figure is the mean µs per request of the fastest repeat.

    .venv/bin/python benchmarks/tracing_overhead.py              # ~30 s on 2 cores
    .venv/bin/python benchmarks/tracing_overhead.py --smoke      # a second
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import timeit
from collections.abc import Callable, Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from inferline.config import RemoteDeploymentConfig, TelemetryConfig, TracingConfig
from inferline.telemetry import tracing
from inferline.telemetry.logs import ACCESS_LOGGER, AccessLog, JsonFormatter, record_usage
from inferline.types import Request, SamplingParams, UsageRecord

DEPLOYMENT = RemoteDeploymentConfig(name="stubbed", base_url="http://127.0.0.1:8001/v1")
CLIENT_HEADERS = {b"traceparent": b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
"""A client that sends a sampled trace context."""
PATH = "/v1/chat/completions"
SMOKE = {"requests": 200, "repeats": 1}
"""--smoke: every code path in a second (the figures mean nothing)."""


class DroppingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def one_request(tracer: tracing.Tracing, headers: dict[bytes, bytes]) -> None:
    http = tracer.start_http("POST", PATH, "req-1", headers)
    route = tracing.start_span("route stubbed", {"inferline.route.policy": "fixed"})
    with tracing.use_span(route):
        backend = tracing.start_backend_span(DEPLOYMENT, "stubbed")
        with tracing.use_span(backend):
            tracing.trace_request(Request("req-1", sampling=SamplingParams(max_tokens=16)))
    if route is not None:
        route.set_attributes({"inferline.route.attempts": 1, "inferline.route.deployment": "stubbed"})
    if backend is not None:
        tracing.end_span(backend, tracing.delivery_attributes(12, 9, "ok"))
        tracing.end_span(route)
    if http is not None:
        http.end(200, PATH)


def per_request_us(work: Callable[[], None], number: int, repeats: int) -> float:
    for _ in range(number // 10):
        work()
    # The fastest repeat: on a shared machine the slower ones measure the neighbours (timeit's advice).
    return min(timeit.repeat(work, number=number, repeat=repeats)) / number * 1e6


def encode_us(number: int, repeats: int) -> float:
    """CPU the exporter thread spends per request: one request's spans encoded as OTLP protobuf."""
    memory = InMemorySpanExporter()
    tracer = tracing.Tracing(TracingConfig(), SimpleSpanProcessor(memory))
    one_request(tracer, CLIENT_HEADERS)
    spans = memory.get_finished_spans()
    return per_request_us(lambda: encode_spans(spans).SerializeToString(), number, repeats)


def access_line_us(number: int, repeats: int) -> float:
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (closed below)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    access = AccessLog(TelemetryConfig())
    record = UsageRecord("req-1", "alpha", "stubbed", "stubbed", "1", 12, 9, 0.01, 0.02, "ok")

    async def receive() -> dict[str, object]:
        return {}

    async def send(message: dict[str, object]) -> None:
        pass

    def request() -> None:
        log, _, _ = access.begin("req-1", receive, send)
        record_usage(record)
        access.end(log, "POST", PATH, 200, 0.0123)

    try:
        return per_request_us(request, number, repeats)
    finally:
        logger.removeHandler(handler)
        handler.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help=f"tiny run: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    dropping = BatchSpanProcessor(DroppingExporter())
    settings = [
        ("off", tracing.Tracing(TracingConfig(enabled=False)), CLIENT_HEADERS),
        ("no receiver", tracing.Tracing(TracingConfig()), CLIENT_HEADERS),
        ("not sampled", tracing.Tracing(TracingConfig(sample_ratio=0), dropping), {}),
        ("sampled", tracing.Tracing(TracingConfig(), BatchSpanProcessor(DroppingExporter())), CLIENT_HEADERS),
    ]
    print(f"# tracing_overhead: {args.requests} requests x {args.repeats} repeats, fastest repeat")
    print(f"# python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print("# the client sends a sampled traceparent, except under 'not sampled' (no trace context)")
    for name, tracer, headers in settings:
        cost = per_request_us(functools.partial(one_request, tracer, headers), args.requests, args.repeats)
        print(f"tracing {name:<24} {cost:7.1f} µs/request")
        tracer.shutdown()
    print(f"OTLP encoding, exporter thread {encode_us(args.requests // 10, args.repeats):7.1f} µs/request")
    print(f"access line, JSON to /dev/null {access_line_us(args.requests, args.repeats):7.1f} µs/request")


if __name__ == "__main__":
    main()
