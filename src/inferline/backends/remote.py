"""An OpenAI-compatible upstream (another inferline, vLLM, llama-server, OpenAI) as a Backend.

Every generation is streamed (`stream: true`, `stream_options.include_usage`) over a pool of
keep-alive HTTP/1.1 connections (backends/http_client.py), and the SSE lines are turned into Deltas
as they arrive (backends/openai_stream.py). The split of failures is what the router needs: anything
that another deployment might answer (unreachable, slow, 429/5xx, a misconfigured 401/403/404, a
stream that breaks) is BackendUnavailableError; a request the upstream calls malformed (400/413/422)
is InvalidRequestError, because every deployment would refuse it. The request's W3C `traceparent`
goes upstream with it.

`timeout_s` bounds the wait for the first token, response headers included; after that it bounds
each gap between two reads, so a stalled stream fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncGenerator
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

import numpy as np

from inferline.backends.base import BackendStats, EmbeddingResult, ModelMetadata, UnsupportedOperationError
from inferline.backends.http_client import HttpError, HttpPool, Response
from inferline.backends.openai_stream import (
    StreamDecoder,
    first_deltas,
    merge_deltas,
    message_and_param,
    parse_embeddings,
)
from inferline.config import RemoteDeploymentConfig
from inferline.errors import (
    BackendUnavailableError,
    InvalidRequestError,
    ModelLoadError,
    PromptTooLongError,
)
from inferline.models.tool_prompt import has_tool_turns, in_hermes_form
from inferline.telemetry.tracing import trace_finish_reasons
from inferline.types import Delta, Request, SamplingParams, StructuredOutput

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
                    first = await first_deltas(batches, decoder)
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
        messages = request.messages
        if request.tools or has_tool_turns(messages):
            # The upstream gets the tools as text and answers in text, parsed here like a local model's.
            messages = in_hermes_form(messages, request.tools)
        body: dict[str, Any] = {"model": model, "messages": messages}
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
    if sampling.structured is not None:
        fields.update(structured_fields(sampling.structured))
    return fields


def structured_fields(structured: StructuredOutput) -> dict[str, Any]:
    """A constraint as the upstream takes it: OpenAI's response_format for JSON, vLLM's guided_* else."""
    kind, spec = structured.kind, structured.spec
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind == "json_schema":
        schema = {"name": "output", "schema": json.loads(spec), "strict": True}
        return {"response_format": {"type": "json_schema", "json_schema": schema}}
    if kind == "choice":
        return {"guided_choice": json.loads(spec)}
    return {f"guided_{kind}": spec}


# ---- errors -------------------------------------------------------------------------------------


def _transport_failure(error: HttpError, num_chunks: int | None) -> str:
    when = "" if num_chunks is None else f" after {num_chunks} chunks" if num_chunks else " before any chunk"
    return f"{error}{when}"


def error_detail(status: int, content: bytes) -> tuple[str, str | None]:
    try:
        return message_and_param(json.loads(content))
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
