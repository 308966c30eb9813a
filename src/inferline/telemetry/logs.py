"""Server logs: one JSON object per line (or plain text) that carries the request's id, tenant, route and
deployment and the current trace and span ids; and one access line per finished HTTP request.

The request's fields live in a `RequestLog` that the HTTP layer puts in a contextvar when the request
arrives and that the request path fills in as it learns them (the tenant at authentication; route,
deployment, tokens and outcome from the request's UsageRecord), so every line logged while handling the
request carries them, whichever logger wrote it. Prompt and completion text are never logged unless
`telemetry.capture_text` is on; then the access line carries them, read back from the request and
response bodies (at most `MAX_CAPTURE_BYTES` of each).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from starlette.types import Message, Receive, Send

from inferline.config import TelemetryConfig
from inferline.types import UsageRecord

ACCESS_LOGGER = "inferline.access"
API_PREFIXES = ("/v1/", "/v2/")
"""Paths whose every request gets an access line; health checks, metric scrapes and the dashboard's
polling get one only when they fail, or they would bury the requests."""
MAX_CAPTURE_BYTES = 1 << 20
"""Captured request or response body kept for the access line; a longer one is cut there."""

_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's coloured copy of its message
}
"""What every LogRecord has; anything else on a record came from `extra=` and is logged as a field."""

access_logger = logging.getLogger(ACCESS_LOGGER)


@dataclass(slots=True)
class RequestLog:
    """What the log lines of one HTTP request carry, filled in as the request path learns it."""

    request_id: str
    tenant: str | None = None
    usage: UsageRecord | None = None
    """The request's UsageRecord once the router has emitted it (route, deployment, tokens, outcome)."""
    request_body: bytearray | None = None
    """capture_text or the quality loop only: the request body as received."""
    response_body: bytearray | None = None
    """capture_text or the quality loop only: the response body as sent (SSE frames for a stream)."""
    prompt_template: str | None = None
    """The client's x-inferline-prompt-template header, kept with a captured request."""
    token: Token[RequestLog | None] | None = None
    """Resets the contextvar when the request ends."""

    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"request_id": self.request_id}
        usage = self.usage
        tenant = self.tenant if usage is None else usage.tenant
        if tenant is not None:
            fields["tenant"] = tenant
        if usage is not None:
            if usage.route:
                fields["route"] = usage.route
            if usage.deployment:
                fields["deployment"] = usage.deployment
        return fields


_CURRENT: ContextVar[RequestLog | None] = ContextVar("inferline_request_log", default=None)


def set_tenant(tenant: str) -> None:
    """The current request's tenant, once authentication has found it."""
    log = _CURRENT.get()
    if log is not None:
        log.tenant = tenant


def record_usage(record: UsageRecord) -> None:
    """A router listener: keeps the current request's UsageRecord for its log lines."""
    log = _CURRENT.get()
    if log is not None and log.request_id == record.request_id:
        log.usage = record


@contextmanager
def work_log(request_id: str) -> Iterator[RequestLog]:
    """A RequestLog made current for work that comes without an HTTP request (a batch line): the router's
    UsageRecord for `request_id` lands on it, and log lines written meanwhile carry its fields."""
    log = RequestLog(request_id)
    token = _CURRENT.set(log)
    try:
        yield log
    finally:
        _CURRENT.reset(token)


class AccessLog:
    """Opens a request's RequestLog and writes its access line when the response has gone."""

    def __init__(self, config: TelemetryConfig, copy_bodies: bool = False) -> None:
        self.enabled = config.access_log
        self.capture_text = config.capture_text
        self.copy_bodies = copy_bodies or config.capture_text
        """Copy both bodies into the RequestLog: for the access line, or for the quality loop's capture
        and drift monitors (which read them once the response has gone)."""

    def begin(self, request_id: str, receive: Receive, send: Send) -> tuple[RequestLog, Receive, Send]:
        """The request's RequestLog, made current, and `receive` and `send` (copying the bodies when
        text is captured)."""
        log = RequestLog(request_id)
        log.token = _CURRENT.set(log)
        if self.copy_bodies:
            log.request_body, log.response_body = bytearray(), bytearray()
            receive, send = _capturing(log, receive, send)
        return log, receive, send

    def end(self, log: RequestLog, method: str, path: str, status: int, latency_s: float) -> None:
        """Write the access line (with the request's fields still current) and close the RequestLog."""
        try:
            wanted = status >= 400 or path.startswith(API_PREFIXES)
            if self.enabled and wanted and access_logger.isEnabledFor(logging.INFO):
                extra = _access_fields(log, method, path, status, latency_s, self.capture_text)
                access_logger.info("%s %s %d %.1f ms", method, path, status, latency_s * 1000, extra=extra)
        finally:
            if log.token is not None:
                _CURRENT.reset(log.token)


def _access_fields(
    log: RequestLog, method: str, path: str, status: int, latency_s: float, capture_text: bool
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "method": method,
        "path": path,
        "status": status,
        "latency_ms": round(latency_s * 1000, 3),
    }
    usage = log.usage
    if usage is not None:
        fields.update(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            outcome=usage.outcome,
            cost=usage.cost,
        )
    if capture_text and log.request_body is not None and log.response_body is not None:
        fields.update(captured_text(bytes(log.request_body), bytes(log.response_body)))
    return fields


def _capturing(log: RequestLog, receive: Receive, send: Send) -> tuple[Receive, Send]:
    async def capture_receive() -> Message:
        message = await receive()
        if message["type"] == "http.request" and log.request_body is not None:
            _append(log.request_body, message.get("body", b""))
        return message

    async def capture_send(message: Message) -> None:
        if message["type"] == "http.response.body" and log.response_body is not None:
            _append(log.response_body, message.get("body", b""))
        await send(message)

    return capture_receive, capture_send


def _append(buffer: bytearray, data: bytes) -> None:
    buffer += data[: MAX_CAPTURE_BYTES - len(buffer)]


def captured_text(request_body: bytes, response_body: bytes) -> dict[str, Any]:
    """`prompt`: the request's messages, prompt or input as sent; `completion`: each choice's text."""
    fields: dict[str, Any] = {}
    request = _json(request_body)
    if isinstance(request, dict):
        prompt = next((request[key] for key in ("messages", "prompt", "input") if key in request), None)
        if prompt is not None:
            fields["prompt"] = prompt
    completions = _completions(response_body)
    if completions:
        fields["completion"] = completions
    return fields


def _completions(response_body: bytes) -> list[str]:
    """The text of each choice of a JSON answer, or of a stream's chunks put together."""
    if response_body.startswith(b"data:"):
        chunks = [_json(frame.removeprefix(b"data:")) for frame in response_body.split(b"\n\n")]
    else:
        chunks = [_json(response_body)]
    texts: dict[int, str] = {}
    for chunk in chunks:
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        for choice in choices if isinstance(choices, list) else []:
            if isinstance(choice, dict):
                index = choice.get("index", 0)
                texts[index] = texts.get(index, "") + _choice_text(choice)
    return [texts[i] for i in sorted(texts)]


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _choice_text(choice: dict[str, Any]) -> str:
    """A chat message, a stream's delta, or a completion's text."""
    for holder in (choice.get("message"), choice.get("delta")):
        if isinstance(holder, dict) and isinstance(holder.get("content"), str):
            return str(holder["content"])
    text = choice.get("text")
    return text if isinstance(text, str) else ""


# ---- formatting -----------------------------------------------------------------------------------


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The request's fields, the current trace and span ids, and the record's `extra=` fields."""
    fields: dict[str, Any] = {}
    log = _CURRENT.get()
    if log is not None:
        fields.update(log.fields())
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = f"{span.trace_id:032x}"
        fields["span_id"] = f"{span.span_id:016x}"
    for key, value in vars(record).items():
        # A leading underscore marks a library's own stamp on every record (Ray's log record factory
        # adds _ray_timestamp_ns once imported), not a field a caller passed with `extra=`.
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then the request's and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **record_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        pairs = " ".join(f"{key}={value}" for key, value in record_fields(record).items())
        message = super().formatMessage(record)
        return f"{message} {pairs}" if pairs else message


def configure_logging(config: TelemetryConfig) -> None:
    """Every log line of the process, uvicorn's included, to stderr in `config.log_format`; the root
    level stays as the command line set it, and access lines and inferline's INFO lines are written
    at any level."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if config.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    # What a server loaded and how it runs it (device, dtype, quantization and why) belongs in its
    # start-up log whatever the root level: inferline's own INFO lines are written.
    logging.getLogger("inferline").setLevel(logging.INFO)
