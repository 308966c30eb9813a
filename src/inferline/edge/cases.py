"""Low-confidence cases: answers the model was unsure of, sent upstream with their prompt and answer so the
registry's dataset can turn them into training data (`inferline registry dataset export`).

Design note: the usage record says how confident an answer was (`mean_logprob`: the local model runs with
telemetry.record_mean_logprob, so every answer's sampled tokens get their log-probabilities, asked for or
not) but not what was asked or answered. So the edge app copies the bodies of each generation request it
forwards and of its response (at most MAX_CAPTURE_BYTES each) into an `Exchange` made current in a
contextvar; the router's usage listener runs inside that request's context (a stream's task copies it),
finds the Exchange and leaves the record there. Once the response has gone the app holds the confidence,
the prompt and the answer together. The text leaves the device only in a flagged case.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Message, Receive, Send

# The access log's own reading of captured bodies (messages or prompt; each choice's text, streamed or
# not), so a flagged case and a captured log line of the same request agree.
from inferline.telemetry.logs import MAX_CAPTURE_BYTES, captured_text
from inferline.types import UsageRecord

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
"""The requests whose answers are judged."""
LOW_CONFIDENCE = "low_confidence"
"""The flagged case's `reason`."""


@dataclass
class Exchange:
    """One generation request the edge app forwarded: both bodies as sent, and its usage record."""

    request_body: bytearray = field(default_factory=bytearray)
    response_body: bytearray = field(default_factory=bytearray)
    usage: UsageRecord | None = None
    """Left by `note_usage`, in the request's context, when the router finished the request."""

    def copying(self, receive: Receive, send: Send) -> tuple[Receive, Send]:
        async def copy_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                _append(self.request_body, message.get("body", b""))
            return message

        async def copy_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                _append(self.response_body, message.get("body", b""))
            await send(message)

        return copy_receive, copy_send


_CURRENT: ContextVar[Exchange | None] = ContextVar("inferline_edge_exchange", default=None)


@contextmanager
def watched(receive: Receive, send: Send) -> Iterator[tuple[Exchange, Receive, Send]]:
    """A new Exchange, current until the block ends, and the `receive` and `send` that fill it."""
    exchange = Exchange()
    token = _CURRENT.set(exchange)
    try:
        yield exchange, *exchange.copying(receive, send)
    finally:
        _CURRENT.reset(token)


def note_usage(record: UsageRecord) -> None:
    """A router listener: the current exchange's usage record (one per HTTP request)."""
    exchange = _CURRENT.get()
    if exchange is not None:
        exchange.usage = record


def low_confidence_case(exchange: Exchange, threshold: float) -> dict[str, Any] | None:
    """The flagged record (without `model`) for an answer whose mean token log-probability is below
    `threshold`; None for a confident, failed or unjudged one."""
    usage = exchange.usage
    if usage is None or usage.outcome != "ok" or usage.mean_logprob is None:
        return None
    if usage.mean_logprob >= threshold:
        return None
    text = captured_text(bytes(exchange.request_body), bytes(exchange.response_body))
    return {
        "kind": "flagged",
        "reason": LOW_CONFIDENCE,
        "model_version": usage.model_version or "unknown",
        "ts": usage.finished_at,
        "request_id": usage.request_id,
        "mean_logprob": usage.mean_logprob,
        "threshold": threshold,
        "prompt": text.get("prompt"),  # the request's messages (chat) or prompt, as sent
        "completion": text.get("completion", []),  # each choice's text
    }


def _append(buffer: bytearray, data: bytes) -> None:
    buffer += data[: MAX_CAPTURE_BYTES - len(buffer)]
