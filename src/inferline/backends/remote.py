"""An OpenAI-compatible upstream (another inferline, vLLM, llama-server, OpenAI) as a Backend.

Every generation is streamed (`stream: true`, `stream_options.include_usage`) over a pool of
keep-alive HTTP/1.1 connections (backends/http_client.py), and the SSE lines are turned into Deltas
as they arrive. The split of failures is what the router needs: anything that another deployment
might answer (unreachable, slow, 429/5xx, a misconfigured 401/403/404, a stream that breaks) is
BackendUnavailableError; a request the upstream calls malformed (400/413/422) is
InvalidRequestError, because every deployment would refuse it. The request's W3C `traceparent`
goes upstream with it.

`timeout_s` bounds the wait for the first token, response headers included; after that it bounds
each gap between two reads, so a stalled stream fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

import numpy as np

from inferline.backends.base import BackendStats, EmbeddingResult, ModelMetadata, UnsupportedOperationError
from inferline.backends.http_client import HttpError, HttpPool, Response
from inferline.config import RemoteDeploymentConfig
from inferline.errors import (
    BackendUnavailableError,
    InvalidRequestError,
    ModelLoadError,
    PromptTooLongError,
)
from inferline.telemetry.tracing import trace_finish_reasons
from inferline.types import Delta, Request, SamplingParams, TokenLogprob, TopLogprob, Usage

logger = logging.getLogger(__name__)


DEFAULT_MAX_CONNECTIONS = 1024
"""Connection pool size when the deployment sets no max_concurrency: one connection per live stream."""

KEEPALIVE_EXPIRY_S = 4.0
"""Drop idle pooled connections before the upstream does: uvicorn (inferline, vLLM) closes them after
5 s, and a request sent on a connection the server is closing fails with a reset."""


class RemoteBackend:
    def __init__(self, deployment: RemoteDeploymentConfig) -> None:
        self.deployment = deployment
        self.base_url = deployment.base_url.rstrip("/")
        self.upstream_model = deployment.upstream_model or deployment.name
        self.client: HttpPool | None = None
        self.num_running = 0
        """Requests in flight now: streams between their first read and their close, embeddings."""
        self._metadata = ModelMetadata(
            name=deployment.name, kind="llm", version=deployment.version, platform="openai-remote"
        )

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    async def load(self) -> None:
        """Create the client; the upstream need not be up yet (the router's circuit breaker copes)."""
        if self.client is not None:
            return
        headers = {"authorization": f"Bearer {self._api_key()}"} if self.deployment.api_key_env else {}
        timeout_s = self.deployment.timeout_s
        self.client = HttpPool(
            self.base_url,
            headers=headers,
            max_connections=self.deployment.max_concurrency or DEFAULT_MAX_CONNECTIONS,
            keepalive_expiry_s=KEEPALIVE_EXPIRY_S,
            read_timeout_s=timeout_s,
            connect_timeout_s=timeout_s,
        )

    async def unload(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.aclose()

    def _api_key(self) -> str:
        name = self.deployment.api_key_env
        key = os.environ.get(name or "", "")
        if not key:
            raise ModelLoadError(
                f"remote deployment {self.deployment.name!r}: environment variable {name} (api_key_env) "
                "is not set or empty: export the upstream's API key in it, or remove api_key_env"
            )
        return key

    def _client(self) -> HttpPool:
        if self.client is None:
            raise BackendUnavailableError(f"remote deployment {self.deployment.name!r} is not loaded")
        return self.client

    # ---- generation ---------------------------------------------------------------------------

    def generate(self, request: Request) -> AsyncGenerator[Delta, None]:
        """Stream the request from the upstream. Leaving the iteration closes the upstream connection,
        which makes the upstream abort the request.

        Usage comes from the upstream's final usage chunk. An upstream that sends none is billed
        0 prompt tokens and one completion token per content chunk (the usual one token per chunk)."""
        return trace_finish_reasons(self._stream(request))

    async def _stream(self, request: Request) -> AsyncGenerator[Delta, None]:
        client = self._client()
        path, body = request_body(request, self.upstream_model)
        url = f"{self.base_url}/{path}"
        decoder = StreamDecoder(request.request_id, path == "chat/completions", self._where(url))
        headers = {"x-request-id": request.request_id}
        if request.traceparent is not None:
            headers["traceparent"] = request.traceparent
        response: Response | None = None
        self.num_running += 1
        try:
            try:
                async with asyncio.timeout(self.deployment.timeout_s):
                    response = await self._post(client, path, body, headers)
                    batches = response.line_batches()
                    first = await _first_deltas(batches, decoder)
            except TimeoutError:
                raise self._unavailable(
                    url, f"sent no token within {self.deployment.timeout_s:g} s"
                ) from None
            for delta in first:
                yield delta
            async for batch in batches:
                for delta in merge_deltas([d for line in batch for d in decoder.feed(line)]):
                    yield delta
            final = decoder.finish()
            if final is not None:
                yield final
        except HttpError as error:
            if decoder.done:
                return  # everything arrived: only the end of the body was lost
            raise self._unavailable(url, _transport_failure(error, decoder.num_chunks)) from error
        finally:
            self.num_running -= 1
            if response is not None:
                await response.aclose()

    async def _post(
        self, client: HttpPool, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> Response:
        """POST with a streamed response; a non-200 answer is read, closed and raised as our error."""
        url = f"{self.base_url}/{path}"
        try:
            response = await client.post(path, json.dumps(body).encode(), headers)
        except HttpError as error:
            raise self._unavailable(url, _transport_failure(error, None)) from error
        if response.status != 200:
            try:
                content = await response.read()
            except HttpError as error:
                raise self._unavailable(url, _transport_failure(error, None)) from error
            finally:
                await response.aclose()
            raise self._status_error(url, response.status, response.headers, content)
        return response

    # ---- embeddings and the rest of the protocol ----------------------------------------------

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        if not texts:
            raise InvalidRequestError("input must hold at least one text", "input")
        client = self._client()
        url = f"{self.base_url}/embeddings"
        body = {"model": self.upstream_model, "input": texts, "encoding_format": "float"}
        self.num_running += 1
        try:
            async with asyncio.timeout(self.deployment.timeout_s):
                response = await self._post(client, "embeddings", body, {})
                try:
                    content = await response.read()
                finally:
                    await response.aclose()
        except TimeoutError:
            raise self._unavailable(url, f"did not answer within {self.deployment.timeout_s:g} s") from None
        except HttpError as error:
            raise self._unavailable(url, _transport_failure(error, None)) from error
        finally:
            self.num_running -= 1
        try:
            return parse_embeddings(json.loads(content), len(texts))
        except (ValueError, KeyError, TypeError) as error:
            raise self._unavailable(url, f"sent an unreadable embeddings response ({error})") from None

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise UnsupportedOperationError(
            f"model {self.deployment.name!r} is a remote OpenAI-compatible model: use /v1/chat/completions, "
            "/v1/completions or /v1/embeddings"
        )

    def stats(self) -> BackendStats:
        return BackendStats(queue_depth=0, running=self.num_running, estimated_wait_s=0.0)

    def health(self) -> bool:
        return self.client is not None

    # ---- errors -------------------------------------------------------------------------------

    def _where(self, url: str) -> str:
        return f"deployment {self.deployment.name!r}: upstream {url}"

    def _unavailable(
        self, url: str, what: str, retry_after_s: float | None = None
    ) -> BackendUnavailableError:
        return BackendUnavailableError(f"{self._where(url)} {what}", retry_after_s=retry_after_s)

    def _status_error(self, url: str, status: int, headers: dict[str, str], content: bytes) -> Exception:
        message, param = error_detail(status, content)
        if status == 413:
            return PromptTooLongError(message, param)
        if status in (400, 422):
            return InvalidRequestError(message, param)
        if status in (401, 403, 404):
            logger.error(
                "%s answered %d (%s): check base_url, upstream_model and api_key_env",
                self._where(url),
                status,
                message,
            )
        return self._unavailable(url, f"answered {status}: {message}", retry_after(headers))


# ---- the request body ---------------------------------------------------------------------------


def request_body(request: Request, model: str) -> tuple[str, dict[str, Any]]:
    """(path under base_url, JSON body) for a chat request (messages) or a completion request."""
    if request.messages is not None:
        path = "chat/completions"
        body: dict[str, Any] = {"model": model, "messages": request.messages}
    elif request.prompt_text is not None or request.prompt_token_ids:
        path = "completions"
        prompt = request.prompt_text if request.prompt_text is not None else request.prompt_token_ids
        body = {"model": model, "prompt": prompt}
    else:
        raise InvalidRequestError("the request has no messages and no prompt", "prompt")
    body.update(sampling_fields(request.sampling, chat=path == "chat/completions"))
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return path, body


def sampling_fields(sampling: SamplingParams, *, chat: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
    }
    if sampling.max_tokens is not None:
        fields["max_tokens"] = sampling.max_tokens
    elif not chat:
        # Omitted, a completion gets 16 tokens (OpenAI's default); null means "as many as fit" to
        # inferline, vLLM and llama-server. Chat needs nothing: omitted already means that.
        fields["max_tokens"] = None
    if sampling.seed is not None:
        fields["seed"] = sampling.seed
    if sampling.stop:
        fields["stop"] = list(sampling.stop)
    if sampling.logprobs is not None:
        fields.update(
            {"logprobs": True, "top_logprobs": sampling.logprobs} if chat else {"logprobs": sampling.logprobs}
        )
    # vLLM-style extensions, sent only when they change something: strict upstreams (OpenAI) refuse them.
    extensions: dict[str, tuple[object, object]] = {
        "top_k": (sampling.top_k, None),
        "min_p": (sampling.min_p, 0.0),
        "repetition_penalty": (sampling.repetition_penalty, 1.0),
        "ignore_eos": (sampling.ignore_eos, False),
        "stop_token_ids": (list(sampling.stop_token_ids), []),
    }
    fields.update({name: value for name, (value, default) in extensions.items() if value != default})
    return fields


# ---- the SSE stream -----------------------------------------------------------------------------


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
            message, _ = _message_and_param(chunk)
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


async def _first_deltas(batches: AsyncIterator[list[str]], decoder: StreamDecoder) -> list[Delta]:
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


# ---- errors -------------------------------------------------------------------------------------


def _transport_failure(error: HttpError, num_chunks: int | None) -> str:
    when = "" if num_chunks is None else f" after {num_chunks} chunks" if num_chunks else " before any chunk"
    return f"{error}{when}"


def _message_and_param(body: Any) -> tuple[str, str | None]:
    """OpenAI's `{"error": {"message", "param"}}`, `{"error": "..."}` or FastAPI's `{"detail": ...}`."""
    if not isinstance(body, dict):
        return str(body)[:500], None
    error = body.get("error", body.get("detail"))
    if isinstance(error, dict):
        param = error.get("param")
        return str(error.get("message", error)), None if param is None else str(param)
    return str(error if error is not None else body)[:500], None


def error_detail(status: int, content: bytes) -> tuple[str, str | None]:
    try:
        return _message_and_param(json.loads(content))
    except (ValueError, UnicodeDecodeError):
        text = content[:500].decode(errors="replace").strip()
        return text or _reason(status), None


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def retry_after(headers: dict[str, str]) -> float | None:
    """Retry-After in seconds, from either form the header may take (seconds or an HTTP date)."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
