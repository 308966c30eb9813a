"""Request traces through the real app (httpx over ASGI, the whole middleware and router path) in front
of a real stub upstream process and of the real default LLM, caught by the SDK's in-memory exporter:
the span tree, its GenAI attributes, the client's trace context honoured and passed upstream, errors."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from inferline.config import ServerConfig
from inferline.router.deployments import DeploymentPool
from inferline.server.app import create_app
from inferline.testing.stub_upstream import StubProcess, start_stub
from tests.server.conftest import free_port, llm_deployment, start_server

REPLY = "traced answer from the stub"
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"


@pytest.fixture(scope="module")
def stub() -> Iterator[StubProcess]:
    process = start_stub("--reply", REPLY)
    yield process
    process.stop()


@dataclass
class App:
    client: httpx.AsyncClient
    exporter: InMemorySpanExporter

    def spans(self) -> dict[str, ReadableSpan]:
        """Finished spans by name (names are unique within these tests' single requests)."""
        spans = self.exporter.get_finished_spans()
        by_name = {span.name: span for span in spans}
        assert len(by_name) == len(spans), [span.name for span in spans]
        return by_name


@asynccontextmanager
async def traced_app(tmp_path: Path, config: dict[str, Any]) -> AsyncIterator[App]:
    """The app of `config`, its deployments loaded, spans going to an in-memory exporter when traced."""
    telemetry = {"metering": False, "database_url": f"sqlite:///{tmp_path / 'usage.db'}"}
    server_config = ServerConfig.model_validate(
        {**config, "telemetry": {**telemetry, **config.get("telemetry", {})}}
    )
    pool = DeploymentPool(server_config.deployments)
    await pool.load_all()
    app = create_app(server_config, pool)
    exporter = InMemorySpanExporter()
    if server_config.telemetry.tracing.enabled:
        app.state.tracing.add_processor(SimpleSpanProcessor(exporter))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://inferline"
        ) as client:
            yield App(client, exporter)
    finally:
        await pool.unload_all()


def remote(name: str, url: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "kind": "remote", "base_url": f"{url}/v1", **fields}


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def assert_child(child: ReadableSpan, parent: ReadableSpan) -> None:
    """Linked to `parent` in the same trace, and inside its time."""
    assert child.context is not None
    assert parent.context is not None
    assert child.context.trace_id == parent.context.trace_id
    assert parent_of(child) == parent.context.span_id, (child.name, parent.name)
    assert child.start_time is not None
    assert child.end_time is not None
    assert parent.start_time is not None
    assert parent.end_time is not None
    assert parent.start_time <= child.start_time <= child.end_time <= parent.end_time, (
        child.name,
        parent.name,
    )


def test_remote_chat_spans_follow_the_clients_trace_to_the_upstream(
    tmp_path: Path, stub: StubProcess
) -> None:
    body = {"model": "stubbed", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}

    async def go() -> tuple[dict[str, Any], dict[str, ReadableSpan]]:
        async with traced_app(tmp_path, {"deployments": [remote("stubbed", stub.url)]}) as app:
            response = await app.client.post(
                "/v1/chat/completions",
                json={**body, "temperature": 0.5},
                headers={"traceparent": CLIENT_TRACEPARENT},
            )
            assert response.status_code == 200, response.text
            return response.json(), app.spans()

    answer, spans = asyncio.run(go())
    http, route, backend = (
        spans["HTTP POST /v1/chat/completions"],
        spans["route stubbed"],
        spans["backend stubbed"],
    )
    assert http.kind is SpanKind.SERVER
    assert backend.kind is SpanKind.CLIENT
    assert http.context is not None
    assert f"{http.context.trace_id:032x}" == CLIENT_TRACE_ID
    assert parent_of(http) == int(CLIENT_SPAN_ID, 16)
    assert_child(route, http)
    assert_child(backend, route)
    assert http.attributes is not None
    assert route.attributes is not None
    assert backend.attributes is not None
    assert http.attributes["http.request.method"] == "POST"
    assert http.attributes["http.route"] == "/v1/chat/completions"
    assert http.attributes["http.response.status_code"] == 200
    assert route.attributes["inferline.route.policy"] == "fixed"
    assert route.attributes["inferline.route.deployment"] == "stubbed"
    assert route.attributes["inferline.route.attempts"] == 1
    usage = answer["usage"]
    assert dict(backend.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "stubbed",
        "gen_ai.response.model": "stubbed",
        "gen_ai.response.id": answer["id"],
        "gen_ai.request.max_tokens": 50,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.top_p": 1.0,
        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": usage["completion_tokens"],
        "gen_ai.response.finish_reasons": (answer["choices"][0]["finish_reason"],),
        "inferline.model_version": "1",
        "server.address": "127.0.0.1",
        "server.port": urlsplit(stub.url).port,
    }
    assert all(span.status.status_code is StatusCode.UNSET for span in spans.values())
    # The upstream was called under the backend span, in the client's trace.
    assert backend.context is not None
    assert stub.stats()["last_traceparent"] == f"00-{CLIENT_TRACE_ID}-{backend.context.span_id:016x}-01"


def test_a_streamed_response_has_the_chat_spans(tmp_path: Path, stub: StubProcess) -> None:
    body = {"model": "stubbed", "input": "hi", "max_output_tokens": 50, "stream": True}

    async def go() -> tuple[str, dict[str, ReadableSpan]]:
        async with traced_app(tmp_path, {"deployments": [remote("stubbed", stub.url)]}) as app:
            response = await app.client.post("/v1/responses", json=body)
            assert response.status_code == 200, response.text
            return response.text, app.spans()

    text, spans = asyncio.run(go())
    last = json.loads(text.rstrip().rsplit("\ndata: ", 1)[1])
    assert last["type"] == "response.completed"
    assert last["response"]["output"][0]["content"][0]["text"] == REPLY
    http, route, backend = spans["HTTP POST /v1/responses"], spans["route stubbed"], spans["backend stubbed"]
    assert_child(route, http)
    assert_child(backend, route)  # ended with the stream, inside the request's span
    assert backend.attributes is not None
    assert backend.attributes["gen_ai.operation.name"] == "chat"
    assert backend.attributes["gen_ai.usage.output_tokens"] == last["response"]["usage"]["output_tokens"]


def test_streamed_completion_spans_end_with_the_stream(tmp_path: Path, stub: StubProcess) -> None:
    body = {"model": "stubbed", "prompt": "say it", "stream": True, "stream_options": {"include_usage": True}}

    async def go() -> tuple[str, dict[str, ReadableSpan]]:
        async with traced_app(tmp_path, {"deployments": [remote("stubbed", stub.url)]}) as app:
            response = await app.client.post("/v1/completions", json=body)
            assert response.status_code == 200
            return response.text, app.spans()

    text, spans = asyncio.run(go())
    assert text.endswith("data: [DONE]\n\n")
    backend = spans["backend stubbed"]
    assert backend.attributes is not None
    assert backend.attributes["gen_ai.operation.name"] == "text_completion"
    assert backend.attributes["gen_ai.usage.output_tokens"] == len(REPLY.split())
    assert_child(backend, spans["route stubbed"])
    assert_child(spans["route stubbed"], spans["HTTP POST /v1/completions"])
    # No client trace context: a new trace, whose backend span the upstream got as parent.
    assert spans["HTTP POST /v1/completions"].parent is None
    assert backend.context is not None
    trace_id, span_id, flags = backend.context.trace_id, backend.context.span_id, backend.context.trace_flags
    assert stub.stats()["last_traceparent"] == f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def test_failed_attempts_are_error_spans_beside_the_fallback(tmp_path: Path, stub: StubProcess) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    config = {
        "deployments": [remote("down", down, timeout_s=5), remote("stubbed", stub.url)],
        "routes": [
            {"name": "guarded", "deployments": ["down"], "fallbacks": ["stubbed"]},
            {"name": "doomed", "deployments": ["down"]},
        ],
    }
    chat = {"messages": [{"role": "user", "content": "hi"}]}

    async def go() -> tuple[list[ReadableSpan], list[ReadableSpan]]:
        async with traced_app(tmp_path, config) as app:
            ok = await app.client.post("/v1/chat/completions", json={"model": "guarded", **chat})
            assert ok.status_code == 200, ok.text
            guarded = list(app.exporter.get_finished_spans())
            app.exporter.clear()
            failed = await app.client.post("/v1/chat/completions", json={"model": "doomed", **chat})
            assert failed.status_code == 502  # every deployment failed
            return guarded, list(app.exporter.get_finished_spans())

    guarded, doomed = asyncio.run(go())
    by_name = {span.name: span for span in guarded}
    down_span, answered, route = by_name["backend down"], by_name["backend stubbed"], by_name["route guarded"]
    assert_child(down_span, route)
    assert_child(answered, route)
    assert down_span.status.status_code is StatusCode.ERROR
    assert down_span.attributes is not None
    assert down_span.attributes["error.type"] == "BackendUnavailableError"
    assert [event.name for event in down_span.events] == ["exception"]
    assert answered.status.status_code is StatusCode.UNSET
    assert route.attributes is not None
    assert route.attributes["inferline.route.attempts"] == 2
    assert route.attributes["inferline.route.fallbacks"] == ("down",)
    assert route.attributes["inferline.route.deployment"] == "stubbed"

    by_name = {span.name: span for span in doomed}
    assert set(by_name) == {"HTTP POST /v1/chat/completions", "route doomed", "backend down"}
    assert all(span.status.status_code is StatusCode.ERROR for span in doomed)
    http = by_name["HTTP POST /v1/chat/completions"]
    assert http.attributes is not None
    assert http.attributes["http.response.status_code"] == 502


def test_local_engine_queue_prefill_and_decode_spans(tmp_path: Path) -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 6}

    async def go() -> tuple[dict[str, Any], dict[str, ReadableSpan]]:
        async with traced_app(tmp_path, {"deployments": [llm_deployment(kv_cache_bytes=32 << 20)]}) as app:
            response = await app.client.post("/v1/chat/completions", json={**body, "temperature": 0})
            assert response.status_code == 200, response.text
            return response.json(), app.spans()

    answer, spans = asyncio.run(go())
    backend = spans["backend smollm2-135m-instruct"]
    queue, prefill, decode = spans["engine queue"], spans["engine prefill"], spans["engine decode"]
    assert backend.kind is SpanKind.INTERNAL
    assert_child(backend, spans["route default"])
    for span in (queue, prefill, decode):
        assert_child(span, backend)
    # One after the other: waiting, then the prompt's step up to the first token, then the rest.
    assert queue.end_time == prefill.start_time
    assert prefill.end_time == decode.start_time
    assert prefill.end_time is not None
    assert prefill.start_time is not None
    assert prefill.end_time > prefill.start_time  # a forward pass of the model takes time
    assert backend.attributes is not None
    assert prefill.attributes is not None
    assert decode.attributes is not None
    assert backend.attributes["gen_ai.system"] == "inferline"
    assert backend.attributes["gen_ai.request.model"] == "default"
    assert backend.attributes["gen_ai.response.model"] == "smollm2-135m-instruct"
    assert backend.attributes["gen_ai.response.finish_reasons"] == (answer["choices"][0]["finish_reason"],)
    assert backend.attributes["gen_ai.request.temperature"] == 0.0
    assert prefill.attributes["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
    assert decode.attributes["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"] == 6


def test_tracing_off_records_nothing_and_passes_the_clients_trace_on(
    tmp_path: Path, stub: StubProcess
) -> None:
    body = {"model": "stubbed", "messages": [{"role": "user", "content": "hi"}]}
    config = {"deployments": [remote("stubbed", stub.url)], "telemetry": {"tracing": {"enabled": False}}}

    async def go() -> tuple[str | None, str | None]:
        async with traced_app(tmp_path, config) as app:
            traced = await app.client.post(
                "/v1/chat/completions", json=body, headers={"traceparent": CLIENT_TRACEPARENT}
            )
            assert traced.status_code == 200
            seen_with = stub.stats()["last_traceparent"]
            assert (await app.client.post("/v1/chat/completions", json=body)).status_code == 200
            assert not app.exporter.get_finished_spans()
            return seen_with, stub.stats()["last_traceparent"]

    with_header, without_header = asyncio.run(go())
    assert with_header == CLIENT_TRACEPARENT
    assert without_header is None


def test_unsampled_traces_record_no_spans(tmp_path: Path, stub: StubProcess) -> None:
    body = {"model": "stubbed", "messages": [{"role": "user", "content": "hi"}]}
    config = {"deployments": [remote("stubbed", stub.url)], "telemetry": {"tracing": {"sample_ratio": 0}}}

    async def go() -> list[ReadableSpan]:
        async with traced_app(tmp_path, config) as app:
            assert (await app.client.post("/v1/chat/completions", json=body)).status_code == 200
            return list(app.exporter.get_finished_spans())

    assert asyncio.run(go()) == []
    # The upstream still gets a (not sampled) trace context, so it does not sample on its own either.
    seen = stub.stats()["last_traceparent"]
    assert seen is not None
    assert int(seen.rsplit("-", 1)[1], 16) & 1 == 0  # the sampled flag is off


class OtlpCollector(BaseHTTPRequestHandler):
    """Takes OTLP/HTTP exports (protobuf) and keeps the span names and trace ids they carried."""

    spans: list[tuple[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        export = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["content-length"])))
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                self.spans += [(span.name, span.trace_id.hex()) for span in scope.spans]
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        pass


def test_a_server_exports_its_spans_over_otlp(tmp_path: Path, stub: StubProcess) -> None:
    OtlpCollector.spans = []
    collector = ThreadingHTTPServer(("127.0.0.1", 0), OtlpCollector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    config = {
        "deployments": [remote("stubbed", stub.url)],
        "telemetry": {"metering": False, "tracing": {"otlp_endpoint": endpoint, "service_name": "otlp-test"}},
    }
    server = start_server(config, tmp_path)
    try:
        body = {"model": "stubbed", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"traceparent": CLIENT_TRACEPARENT}
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers).status_code == 200
    finally:
        assert server.stop() == 0  # a clean stop exports what the batch processor still holds
        collector.shutdown()
        collector.server_close()
    assert sorted(OtlpCollector.spans) == [
        ("HTTP POST /v1/chat/completions", CLIENT_TRACE_ID),
        ("backend stubbed", CLIENT_TRACE_ID),
        ("route stubbed", CLIENT_TRACE_ID),
    ]
