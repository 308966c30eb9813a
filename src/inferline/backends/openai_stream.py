"""An OpenAI-compatible upstream's answers, read: the SSE stream of a chat or completion turned into
Deltas, usage, logprobs in both of OpenAI's shapes, embeddings, and the message of an error body."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferline.backends.base import EmbeddingResult
from inferline.errors import BackendUnavailableError
from inferline.types import Delta, TokenLogprob, TopLogprob, Usage


@dataclass
class StreamDecoder:
    """Turns the upstream's SSE lines into Deltas: one per choice in a chunk that carries text, a
    finish reason or logprobs, and a last one with the usage at `data: [DONE]`."""

    request_id: str
    chat: bool
    """Chat chunks carry `delta.content` and chat logprobs; completion chunks `text`."""
    where: str
    """"deployment 'x': upstream URL", for error messages."""
    usage: Usage | None = None
    num_chunks: int = 0
    """Data frames received so far."""
    num_content_chunks: int = 0
    """Per-choice chunks with text: the completion token count when the upstream sends no usage."""
    finished: set[int] = field(default_factory=set)
    done: bool = False

    def feed(self, line: str) -> list[Delta]:
        if self.done or not line.startswith("data:"):
            return []  # blank separators, `: keep-alive` comments, `event:` lines, anything after [DONE]
        data = line[5:].strip()
        self.num_chunks += 1
        if data == "[DONE]":
            self.done = True
            return [self._final()]
        try:
            chunk = json.loads(data)
        except ValueError:
            raise BackendUnavailableError(f"{self.where} sent an unreadable chunk: {data[:200]!r}") from None
        if not isinstance(chunk, dict):
            raise BackendUnavailableError(f"{self.where} sent an unexpected chunk: {data[:200]!r}")
        if "error" in chunk:
            message, _ = message_and_param(chunk)
            raise BackendUnavailableError(f"{self.where} failed mid-stream: {message}")
        if isinstance(chunk.get("usage"), dict):
            self.usage = parse_usage(chunk["usage"])
        return [delta for choice in chunk.get("choices") or [] if (delta := self._delta(choice)) is not None]

    def finish(self) -> Delta | None:
        """At the end of the body: nothing more after [DONE]; the usage delta if the upstream closed
        without [DONE] once every choice had finished; else the stream broke."""
        if self.done:
            return None
        if self.finished:
            self.done = True
            return self._final()
        raise BackendUnavailableError(
            f"{self.where} ended the stream after {self.num_chunks} chunks, before every completion "
            "finished and without `data: [DONE]`"
        )

    def _delta(self, choice: dict[str, Any]) -> Delta | None:
        source = (choice.get("delta") or {}) if self.chat else choice
        text = source.get("content" if self.chat else "text") or ""
        finish_reason = choice.get("finish_reason")
        raw = choice.get("logprobs")
        logprobs = (chat_logprobs(raw) if self.chat else completion_logprobs(raw)) if raw else None
        if not (text or finish_reason or logprobs):
            return None
        index = int(choice.get("index", 0))
        self.num_content_chunks += bool(text)
        if finish_reason:
            self.finished.add(index)
        stop_reason = choice.get("stop_reason")  # vLLM's extension: the stop string or token id
        return Delta(self.request_id, index, text, [], logprobs or None, finish_reason, stop_reason)

    def _final(self) -> Delta:
        usage = self.usage or Usage(prompt_tokens=0, completion_tokens=self.num_content_chunks)
        return Delta(self.request_id, 0, "", [], usage=usage)


async def first_deltas(batches: AsyncIterator[list[str]], decoder: StreamDecoder) -> list[Delta]:
    """Read until the first lines that yield Deltas (a role-only chunk yields none)."""
    async for batch in batches:
        deltas = merge_deltas([d for line in batch for d in decoder.feed(line)])
        if deltas:
            return deltas
    final = decoder.finish()
    return [final] if final is not None else []


def merge_deltas(deltas: list[Delta]) -> list[Delta]:
    """Deltas that arrived together, each completion's run of them made one: a client is sent one SSE
    chunk per completion per read instead of one per upstream token (as vLLM's stream_interval does),
    which is where a burst of tokens spent its time passing through. Usage stays a delta of its own."""
    merged: list[Delta] = []
    for delta in deltas:
        last = merged[-1] if merged else None
        if (
            last is None
            or last.index != delta.index
            or last.finish_reason is not None
            or last.usage is not None
            or delta.usage is not None
        ):
            merged.append(delta)
            continue
        merged[-1] = Delta(
            last.request_id,
            last.index,
            last.text + delta.text,
            [],
            None
            if last.logprobs is None and delta.logprobs is None
            else [*(last.logprobs or []), *(delta.logprobs or [])],
            delta.finish_reason,
            delta.stop_reason,
        )
    return merged


def parse_usage(usage: dict[str, Any]) -> Usage:
    details = usage.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_prompt_tokens=int(details.get("cached_tokens") or 0),
    )


def _logprob(value: Any) -> float:
    return -math.inf if value is None else float(value)


def chat_logprobs(raw: dict[str, Any]) -> list[TokenLogprob]:
    """`{"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}` (the inverse of
    the server's openai_protocol.chat_logprobs)."""
    return [
        TokenLogprob(
            None,
            entry["token"],
            _logprob(entry.get("logprob")),
            [
                TopLogprob(None, t["token"], _logprob(t.get("logprob")))
                for t in entry.get("top_logprobs") or []
            ],
        )
        for entry in raw.get("content") or []
    ]


def completion_logprobs(raw: dict[str, Any]) -> list[TokenLogprob]:
    """`{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}]}` (the inverse of the server's
    openai_protocol.completion_logprobs; a token string that occurs twice among the alternatives
    was already merged by the format)."""
    tokens = raw.get("tokens") or []
    values = raw.get("token_logprobs") or [None] * len(tokens)
    tops = raw.get("top_logprobs") or [None] * len(tokens)
    return [
        TokenLogprob(
            None,
            token,
            _logprob(value),
            [TopLogprob(None, t, _logprob(lp)) for t, lp in (top or {}).items()],
        )
        for token, value, top in zip(tokens, values, tops, strict=False)
    ]


def parse_embeddings(payload: dict[str, Any], num_texts: int) -> EmbeddingResult:
    """OpenAI's `{"data": [{"index", "embedding"}], "usage"}` → [n, dim] float32 in input order."""
    rows = sorted(payload["data"], key=lambda item: item["index"])
    if len(rows) != num_texts:
        raise ValueError(f"{len(rows)} embeddings for {num_texts} inputs")
    vectors = np.asarray([_vector(row["embedding"]) for row in rows], dtype=np.float32)
    usage = payload.get("usage") or {}
    return EmbeddingResult(vectors=vectors, num_tokens=int(usage.get("prompt_tokens") or 0))


def _vector(value: list[float] | str) -> np.ndarray:
    if isinstance(value, str):  # base64 little-endian float32, from upstreams that ignore encoding_format
        return np.frombuffer(base64.b64decode(value), dtype="<f4")
    return np.asarray(value, dtype=np.float32)


def message_and_param(body: Any) -> tuple[str, str | None]:
    """OpenAI's `{"error": {"message", "param"}}`, `{"error": "..."}` or FastAPI's `{"detail": ...}`."""
    if not isinstance(body, dict):
        return str(body)[:500], None
    error = body.get("error", body.get("detail"))
    if isinstance(error, dict):
        param = error.get("param")
        return str(error.get("message", error)), None if param is None else str(param)
    return str(error if error is not None else body)[:500], None
