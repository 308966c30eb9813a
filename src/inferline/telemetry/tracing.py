"""OpenTelemetry traces of requests: a tracer provider per app, a request's spans, and W3C trace context
in from clients and out to remote upstreams.

A chat request's spans:

    HTTP POST /v1/chat/completions   server kind; the client's traceparent, when it sent one, is its parent
    └── route <name>                 the router's decision: policy, deployment, cascade stage, fallbacks
        └── backend <deployment>     one per attempt; client kind for a remote upstream; gen_ai.* attributes
            ├── engine queue         local LLM only, made after the fact from the times the engine and the
            ├── engine prefill       backend recorded (submitted, first step, first token, last token), so
            └── engine decode        the engine never imports this module

Whoever makes a span finds the request's `_Trace` in the OpenTelemetry context (a contextvar), where the
HTTP layer put it. When tracing is off, nothing receives spans, or the trace is not sampled, nothing is
there and every helper returns after that one lookup. There is no global tracer provider: each app has
its own, so several apps in one process (tests) never share spans.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from contextvars import Token
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from inferline.config import DeploymentConfig, RemoteDeploymentConfig, TracingConfig
from inferline.types import Delta, Request, Usage

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_KEY = otel_context.create_key("inferline-trace")

_TRACED_PREFIXES = ("/v1/", "/v2/")
"""The APIs. Health checks, metric scrapes and the dashboard's polling would bury the requests in noise."""
_OPERATIONS = {
    "/v1/chat/completions": ("chat", "chatcmpl-"),
    "/v1/completions": ("text_completion", "cmpl-"),
    "/v1/embeddings": ("embeddings", None),
    # A response's id is random (stored responses are looked up by it), so it is not known up front.
    "/v1/responses": ("chat", None),
}
"""gen_ai.operation.name, and the prefix of the response id the OpenAI API answers with, by path."""


@dataclass(slots=True)
class _Trace:
    """What the request's spans need, kept in its OpenTelemetry context."""

    tracer: Tracer
    operation: str | None
    response_id: str | None


@dataclass(slots=True)
class HttpSpan:
    """The server span of one HTTP request, current until `end`."""

    span: Span | None
    """None when only the client's trace context is passed on (tracing off, or nothing receives spans)."""
    token: Token[Context]
    method: str

    def end(self, status: int, route: str | None) -> None:
        otel_context.detach(self.token)
        span = self.span
        if span is None:
            return
        if route is None:
            span.set_attribute("http.response.status_code", status)
        else:
            # The route template (/v1/models/{model_id:path}), not the path: span names stay few.
            span.update_name(f"HTTP {self.method} {route}")
            span.set_attributes({"http.response.status_code": status, "http.route": route})
        if status >= 500:  # a 4xx is the client's error, not the server's (HTTP semantic conventions)
            span.set_status(Status(StatusCode.ERROR))
        span.end()


class Tracing:
    """The app's tracer provider: ParentBased(TraceIdRatioBased(sample_ratio)) sampling, the service name
    as resource, and an OTLP/HTTP exporter when `otlp_endpoint` is set."""

    def __init__(self, config: TracingConfig, processor: SpanProcessor | None = None) -> None:
        self.provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        if not config.enabled:
            return
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            resource=Resource.create({"service.name": config.service_name}),
            shutdown_on_exit=False,  # the app shuts it down (and flushes) when it stops
        )
        if config.otlp_endpoint is not None:
            # Imported here: protobuf and requests take ~70 ms to import, for servers that never export.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.add_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint)))
        if processor is not None:
            self.add_processor(processor)

    def add_processor(self, processor: SpanProcessor) -> None:
        """Send every finished span to `processor` too (tests pass an in-memory exporter's)."""
        if self.provider is None:
            raise ValueError("tracing is off (telemetry.tracing.enabled: false): turn it on to record spans")
        self.provider.add_span_processor(processor)
        # Spans are made only once something receives them: with nowhere to go they would cost every
        # request for nothing.
        self._tracer = self.provider.get_tracer("inferline")

    def shutdown(self) -> None:
        """Export what is buffered and stop; blocks for up to the exporter's timeout."""
        if self.provider is not None:
            self.provider.shutdown()

    def start_http(
        self, method: str, path: str, request_id: str, headers: dict[bytes, bytes]
    ) -> HttpSpan | None:
        """The request's server span, made current; or only the client's trace context, to be passed on
        upstream, when not recording; None when there is neither."""
        if not path.startswith(_TRACED_PREFIXES):
            return None
        parent = None
        traceparent = headers.get(b"traceparent")
        if traceparent is not None:
            carrier = {"traceparent": traceparent.decode("latin-1")}
            tracestate = headers.get(b"tracestate")
            if tracestate is not None:
                carrier["tracestate"] = tracestate.decode("latin-1")
            parent = _PROPAGATOR.extract(carrier)
        if self._tracer is None:
            return None if parent is None else HttpSpan(None, otel_context.attach(parent), method)
        attributes = {"http.request.method": method, "url.path": path, "inferline.request_id": request_id}
        span = self._tracer.start_span(
            f"HTTP {method} {path}", parent, kind=SpanKind.SERVER, attributes=attributes
        )
        context = trace.set_span_in_context(span, parent)
        if span.is_recording():  # not sampled: no child spans either, and no cost for them
            operation, prefix = _OPERATIONS.get(path, (None, None))
            response_id = None if prefix is None else prefix + request_id
            request = _Trace(self._tracer, operation, response_id)
            context = otel_context.set_value(_TRACE_KEY, request, context)
        return HttpSpan(span, otel_context.attach(context), method)


def _current() -> _Trace | None:
    return cast("_Trace | None", otel_context.get_value(_TRACE_KEY))


def start_span(name: str, attributes: dict[str, Any] | None = None) -> Span | None:
    """A child of the current span when this request is traced; None otherwise."""
    current = _current()
    if current is None:
        return None
    return current.tracer.start_span(name, attributes=attributes)


def start_backend_span(deployment: DeploymentConfig, request_model: str) -> Span | None:
    """One attempt on a deployment, with the GenAI attributes known before it runs."""
    current = _current()
    if current is None:
        return None
    remote = deployment if isinstance(deployment, RemoteDeploymentConfig) else None
    attributes: dict[str, Any] = {
        # An OpenAI-compatible upstream is "openai" to the GenAI conventions unless it is known better.
        "gen_ai.system": "openai" if remote is not None else "inferline",
        "gen_ai.request.model": request_model,
        "gen_ai.response.model": (remote.upstream_model if remote is not None else None) or deployment.name,
        "inferline.model_version": deployment.version,
    }
    if current.operation is not None:
        attributes["gen_ai.operation.name"] = current.operation
    if current.response_id is not None:
        attributes["gen_ai.response.id"] = current.response_id
    if remote is not None:
        attributes["server.address"], attributes["server.port"] = _server(remote.base_url)
    kind = SpanKind.CLIENT if remote is not None else SpanKind.INTERNAL
    return current.tracer.start_span(f"backend {deployment.name}", kind=kind, attributes=attributes)


@functools.cache
def _server(base_url: str) -> tuple[str, int]:
    url = urlsplit(base_url)
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


@contextmanager
def use_span(span: Span | None) -> Iterator[None]:
    """Make `span` current inside the block, so spans and upstream calls made there are its children."""
    if span is None:
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)


def end_span(
    span: Span | None, attributes: dict[str, Any] | None = None, error: BaseException | str | None = None
) -> None:
    """End `span` with these attributes; status ERROR (and the exception as an event) when `error`."""
    if span is None:
        return
    if attributes:
        span.set_attributes(attributes)
    if isinstance(error, BaseException):
        span.record_exception(error)
        span.set_attribute("error.type", type(error).__name__)
        span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))
    elif error is not None:
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def delivery_attributes(prompt_tokens: int, completion_tokens: int, outcome: str) -> dict[str, Any]:
    """A backend span's closing attributes once its answer has been delivered (or failed, or was left)."""
    attributes: dict[str, Any] = {
        "gen_ai.usage.input_tokens": prompt_tokens,
        "gen_ai.usage.output_tokens": completion_tokens,
    }
    if outcome != "ok":  # "aborted": the client left; "error": the answer failed after it started
        attributes["inferline.outcome"] = outcome
    return attributes


def trace_request(request: Request) -> Request:
    """`request`, carrying the W3C traceparent a remote upstream should get (the current backend span's,
    or the client's own when we record none); its sampling parameters go on that span."""
    span = trace.get_current_span()
    if span.is_recording():
        sampling = request.sampling
        attributes: dict[str, Any] = {
            "gen_ai.request.temperature": sampling.temperature,
            "gen_ai.request.top_p": sampling.top_p,
        }
        if sampling.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = sampling.max_tokens
        span.set_attributes(attributes)
    context = span.get_span_context()
    if context.is_valid:
        request.traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    return request


def trace_engine(stream: AsyncGenerator[Delta, None]) -> AsyncGenerator[Delta, None]:
    """`stream` of a local engine request, which adds the engine queue, prefill and decode spans under
    the current (backend) span once it ends; `stream` itself when this request is not traced."""
    current = _current()
    parent = trace.get_current_span()
    if current is None or not parent.is_recording():
        return stream
    return _with_engine_spans(stream, current.tracer, parent, _Timeline(time.monotonic()))


@dataclass
class _Timeline:
    """Monotonic seconds of one engine request, as the backend saw its deltas."""

    submitted: float
    first_token: float | None = None
    finished: float | None = None
    usage: Usage | None = None
    finish_reasons: list[str] = field(default_factory=list)

    def see(self, delta: Delta) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()
        if delta.finish_reason is not None:
            self.finish_reasons.append(delta.finish_reason)
        if delta.usage is not None:
            self.usage, self.finished = delta.usage, time.monotonic()

    def emit(self, tracer: Tracer, parent: Span) -> None:
        now_mono, now_ns = time.monotonic(), time.time_ns()
        finished = self.finished if self.finished is not None else now_mono
        scheduled = self.usage.scheduled_at if self.usage is not None else None
        if scheduled is not None:
            scheduled = max(scheduled, self.submitted)

        def span(name: str, start: float, end: float, attributes: dict[str, Any]) -> None:
            made = tracer.start_span(
                name,
                trace.set_span_in_context(parent),
                attributes=attributes,
                start_time=now_ns - int((now_mono - start) * 1e9),
            )
            made.end(end_time=now_ns - int((now_mono - end) * 1e9))

        usage = self.usage
        queued_until = next(t for t in (scheduled, self.first_token, finished) if t is not None)
        span("engine queue", self.submitted, queued_until, {})
        if scheduled is not None and self.first_token is not None and usage is not None:
            prompt = {
                "gen_ai.usage.input_tokens": usage.prompt_tokens,
                "inferline.engine.cached_prompt_tokens": usage.cached_prompt_tokens,
            }
            span("engine prefill", scheduled, self.first_token, prompt)
        if self.first_token is not None:
            tokens = {"gen_ai.usage.output_tokens": usage.completion_tokens} if usage is not None else {}
            span("engine decode", self.first_token, finished, tokens)
        if self.finish_reasons:
            parent.set_attribute("gen_ai.response.finish_reasons", self.finish_reasons)


def trace_finish_reasons(stream: AsyncGenerator[Delta, None]) -> AsyncGenerator[Delta, None]:
    """`stream` of a remote upstream's deltas, which puts their finish reasons on the current (backend)
    span when the last one arrives; `stream` itself when this request is not traced."""
    span = trace.get_current_span()
    if not span.is_recording():
        return stream
    return _with_finish_reasons(stream, span)


async def _with_finish_reasons(
    stream: AsyncGenerator[Delta, None], span: Span
) -> AsyncGenerator[Delta, None]:
    reasons: list[str] = []
    try:
        async for delta in stream:
            if delta.finish_reason is not None:
                reasons.append(delta.finish_reason)
            if delta.usage is not None and reasons:  # the last delta, while the backend span is open
                span.set_attribute("gen_ai.response.finish_reasons", reasons)
            yield delta
    finally:
        await stream.aclose()  # leaving early closes the upstream connection now


async def _with_engine_spans(
    stream: AsyncGenerator[Delta, None], tracer: Tracer, parent: Span, timeline: _Timeline
) -> AsyncGenerator[Delta, None]:
    try:
        async for delta in stream:
            timeline.see(delta)
            if delta.usage is not None:  # the last delta, seen while the backend span is still open
                timeline.emit(tracer, parent)
            yield delta
    finally:
        await stream.aclose()  # leaving early aborts the engine request now, not when collected
        if timeline.usage is None:  # left before the end
            timeline.emit(tracer, parent)
