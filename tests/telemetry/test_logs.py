"""The server's log as an operator reads it: real `inferline serve` processes in front of a stub upstream
write JSON lines that carry the request's id, tenant, route, deployment, tokens and trace, and never the
prompt or the answer unless text capture is on."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferline.config import TelemetryConfig
from inferline.telemetry.logs import (
    ACCESS_LOGGER,
    AccessLog,
    JsonFormatter,
    TextFormatter,
    record_fields,
    set_tenant,
)
from inferline.testing.stub_upstream import StubProcess, start_stub
from tests.server.conftest import API_KEY, ServerProcess, free_port, start_server

REPLY = "the stub answers plainly"
SECRET = "zebra-violet-prompt"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
AUTH = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def stub() -> Iterator[StubProcess]:
    process = start_stub("--reply", REPLY)
    yield process
    process.stop()


def serve(stub: StubProcess, tmp_path: Path, **telemetry: Any) -> ServerProcess:
    config = {
        "tenants": [{"name": "alpha", "api_keys": [API_KEY]}],
        "deployments": [
            {"name": "stubbed", "kind": "remote", "base_url": f"{stub.url}/v1"},
            {"name": "down", "kind": "remote", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
        ],
        "routes": [{"name": "guarded", "deployments": ["down"], "fallbacks": ["stubbed"]}],
        "telemetry": {"metering": False, "database_url": f"sqlite:///{tmp_path / 'usage.db'}", **telemetry},
    }
    return start_server(config, tmp_path)


def log_lines(server: ServerProcess, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """Every line of the server's log, each a JSON object, once `until` holds (access lines are written
    just after the response)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
        if until(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def access_line(lines: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    found = [ln for ln in lines if ln["logger"] == ACCESS_LOGGER and ln.get("request_id") == request_id]
    assert len(found) == 1, (request_id, lines)
    return found[0]


def has_access_lines(*request_ids: str) -> Callable[[list[dict[str, Any]]], bool]:
    def done(lines: list[dict[str, Any]]) -> bool:
        seen = {ln.get("request_id") for ln in lines if ln["logger"] == ACCESS_LOGGER}
        return seen.issuperset(request_ids)

    return done


def chat(server: ServerProcess, model: str, request_id: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": f"tell nobody: {SECRET}"}], **extra}
    headers = {**AUTH, "x-request-id": request_id, "traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_json_lines_carry_the_request_and_never_its_text(stub: StubProcess, tmp_path: Path) -> None:
    server = serve(stub, tmp_path)
    try:
        answered = chat(server, "stubbed", "log-chat")
        assert answered.status_code == 200
        assert chat(server, "guarded", "log-fallback").status_code == 200
        assert chat(server, "no-such-model", "log-unknown").status_code == 404
        lines = log_lines(server, has_access_lines("log-chat", "log-fallback", "log-unknown"))
    finally:
        server.stop()

    assert all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's own lines are JSON too
    assert not any(line.get("path") == "/ready" for line in lines)  # start_server's polling: not logged
    ok = access_line(lines, "log-chat")
    usage = answered.json()["usage"]
    assert ok["message"].startswith("POST /v1/chat/completions 200 ")
    assert ok["level"] == "INFO"
    assert {k: ok[k] for k in ("method", "path", "status", "tenant", "route", "deployment", "outcome")} == {
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "tenant": "alpha",
        "route": "stubbed",
        "deployment": "stubbed",
        "outcome": "ok",
    }
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert ok["latency_ms"] > 0
    assert ok["trace_id"] == TRACE_ID
    # A line the router writes mid-request carries the request's id and tenant too.
    fell_back = [
        line for line in lines if line["level"] == "WARNING" and line.get("request_id") == "log-fallback"
    ]
    assert len(fell_back) == 1
    assert "deployment down failed" in fell_back[0]["message"]
    assert fell_back[0]["tenant"] == "alpha"
    assert access_line(lines, "log-fallback")["deployment"] == "stubbed"
    unknown = access_line(lines, "log-unknown")
    assert (unknown["status"], unknown["tenant"]) == (404, "alpha")
    assert "prompt_tokens" not in unknown
    text = "\n".join(json.dumps(line) for line in lines)
    assert SECRET not in text
    assert REPLY.split()[-1] not in text


def test_captured_text_rides_on_the_access_line(stub: StubProcess, tmp_path: Path) -> None:
    server = serve(stub, tmp_path, capture_text=True)
    try:
        assert chat(server, "stubbed", "capture-whole").status_code == 200
        assert chat(server, "stubbed", "capture-stream", stream=True, n=2).status_code == 200
        lines = log_lines(server, has_access_lines("capture-whole", "capture-stream"))
    finally:
        server.stop()

    messages = [{"role": "user", "content": f"tell nobody: {SECRET}"}]
    whole, streamed = access_line(lines, "capture-whole"), access_line(lines, "capture-stream")
    assert (whole["prompt"], whole["completion"]) == (messages, [REPLY])
    assert (streamed["prompt"], streamed["completion"]) == (messages, [REPLY, REPLY])


def test_text_format_and_exceptions_keep_the_request_fields() -> None:
    """The formatters on their own: a line written inside a request, with an exception attached."""
    text, json_out = io.StringIO(), io.StringIO()
    logger = logging.getLogger("inferline.test_logs")
    handlers = [logging.StreamHandler(text), logging.StreamHandler(json_out)]
    handlers[0].setFormatter(TextFormatter())
    handlers[1].setFormatter(JsonFormatter())
    for handler in handlers:
        logger.addHandler(handler)
    access = AccessLog(TelemetryConfig(access_log=False))

    async def request() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            pass

        log, _, _ = access.begin("req-42", receive, send)
        set_tenant("beta")
        try:
            raise ValueError("bad value")
        except ValueError:
            logger.exception("could not parse", extra={"field": "temperature"})
        access.end(log, "POST", "/v1/completions", 400, 0.002)
        logger.warning("after the request")

    try:
        asyncio.run(request())
    finally:
        for handler in handlers:
            logger.removeHandler(handler)

    first, after = text.getvalue().split("\n", 1)[0], text.getvalue().strip().splitlines()[-1]
    assert "ERROR inferline.test_logs: could not parse" in first
    assert first.endswith("request_id=req-42 tenant=beta field=temperature")
    assert after.endswith("after the request")  # the request is over: its fields are gone
    inside, outside = (json.loads(line) for line in json_out.getvalue().splitlines())
    assert inside["request_id"] == "req-42"
    assert inside["tenant"] == "beta"
    assert inside["field"] == "temperature"
    assert "ValueError: bad value" in inside["exception"]
    assert "request_id" not in outside


def test_a_librarys_private_stamp_on_every_record_is_not_logged_as_a_field() -> None:
    # Ray's log record factory stamps _ray_timestamp_ns on every record once it is imported.
    record = logging.LogRecord("inferline.x", logging.INFO, __file__, 1, "hello", None, None)
    record._ray_timestamp_ns = 1  # type: ignore[attr-defined]
    record.field = "temperature"  # what extra={"field": ...} sets
    fields = record_fields(record)
    assert fields["field"] == "temperature"
    assert "_ray_timestamp_ns" not in fields
