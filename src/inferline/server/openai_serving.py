"""Chat completions, completions and embeddings: from validated request bodies to responses.

One engine request per prompt (each with the body's n completions); a completions call with several
prompts runs them concurrently. Streams pull their first delta before any byte is sent, so a request
the engine rejects still gets a proper 4xx; after that an error travels as a data frame and the
stream ends with `data: [DONE]`. A client that goes away cancels the stream, which aborts the engine
request at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferline.backends.base import UnsupportedOperationError
from inferline.backends.llm import LLMBackend
from inferline.server.auth import Tenant
from inferline.server.catalog import Catalog, Deployment
from inferline.server.errors import HTTPError, openai_error_body, to_http_error
from inferline.server.metrics import Metrics
from inferline.server.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    chat_logprobs,
    completion_logprobs,
    envelope,
    usage_dict,
)
from inferline.types import Delta, Request, TokenLogprob

Tagged = tuple[int, Delta]
"""(prompt index, delta)"""


@dataclass
class _Choice:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class _Usage:
    prompt: int = 0
    completion: int = 0
    cached: int = 0

    def add(self, delta: Delta) -> None:
        if delta.usage is not None:
            self.prompt += delta.usage.prompt_tokens
            self.completion += delta.usage.completion_tokens
            self.cached += delta.usage.cached_prompt_tokens


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class OpenAIServing:
    def __init__(self, catalog: Catalog, metrics: Metrics) -> None:
        self.catalog = catalog
        self.metrics = metrics

    # ---- shared ---------------------------------------------------------------------------------

    def _llm(self, name: str) -> tuple[Deployment, LLMBackend]:
        deployment = self.catalog.get(name)
        if not isinstance(deployment.backend, LLMBackend):
            raise UnsupportedOperationError(
                f"model {name!r} is a {deployment.config.kind} model; it cannot generate text"
            )
        return deployment, deployment.backend

    @staticmethod
    def _request(
        backend: LLMBackend,
        body: ChatCompletionRequest | CompletionRequest,
        prompt_ids: list[int],
        request_id: str,
        tenant: Tenant,
        max_tokens: int | None,
        logprobs: int | None,
        param: str,
    ) -> Request:
        limit = backend.max_model_len
        if len(prompt_ids) >= limit:
            raise HTTPError(
                413,
                f"prompt has {len(prompt_ids)} tokens; this model's context is {limit} tokens: shorten it",
                "invalid_request_error",
                param,
            )
        if max_tokens is not None and len(prompt_ids) + max_tokens > limit:
            raise HTTPError(
                400,
                f"max_tokens is {max_tokens} but the prompt has {len(prompt_ids)} tokens and this model's "
                f"context is {limit}: ask for at most {limit - len(prompt_ids)} tokens",
                "invalid_request_error",
                "max_tokens",
            )
        requested = body.priority_class()
        priority = tenant.priority if requested is None else min(requested, tenant.priority)
        sampling = body.sampling(max_tokens or limit - len(prompt_ids), logprobs)
        return Request(request_id, prompt_ids, sampling, priority, tenant.name)

    async def _first_and_rest(
        self, backend: LLMBackend, requests: list[Request], model: str
    ) -> tuple[list[Tagged], AsyncIterator[Tagged]]:
        """Start every request; return the first delta of each (errors raise here) and the merged rest."""
        streams = [backend.generate(r) for r in requests]
        started = time.monotonic()
        try:
            firsts = [await anext(s) for s in streams]
        except BaseException:
            for stream in streams:
                await stream.aclose()
            raise
        self.metrics.time_to_first_token.labels(model).observe(time.monotonic() - started)
        return list(enumerate(firsts)), _merge(streams, [d.usage is not None for d in firsts])

    async def _collect(
        self, backend: LLMBackend, requests: list[Request], model: str, n: int
    ) -> tuple[list[_Choice], _Usage]:
        firsts, rest = await self._first_and_rest(backend, requests, model)
        choices = [_Choice() for _ in range(len(requests) * n)]
        usage = _Usage()
        for prompt_index, delta in [*firsts, *[item async for item in rest]]:
            choice = choices[prompt_index * n + delta.index]
            choice.text += delta.text
            choice.logprobs += delta.logprobs or []
            choice.finish_reason = delta.finish_reason or choice.finish_reason
            usage.add(delta)
        self.metrics.count_tokens(model, usage.prompt, usage.completion)
        return choices, usage

    # ---- chat -----------------------------------------------------------------------------------

    async def chat(
        self,
        body: ChatCompletionRequest,
        tenant: Tenant,
        request_id: str,
        watch: Callable[[], Awaitable[None]],
    ) -> tuple[Deployment, dict[str, Any] | AsyncIterator[bytes]]:
        deployment, backend = self._llm(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt_ids = backend.encode_chat(messages)
        logprobs = body.requested_logprobs()
        request = self._request(
            backend, body, prompt_ids, request_id, tenant, body.requested_max_tokens(), logprobs, "messages"
        )
        response_id = f"chatcmpl-{request_id}"
        if body.stream:
            firsts, rest = await self._first_and_rest(backend, [request], body.model)
            return deployment, self._chat_stream(body, response_id, firsts, rest)
        choices, usage = await _until_disconnect(self._collect(backend, [request], body.model, body.n), watch)
        response = envelope("chat.completion", response_id, body.model)
        response["choices"] = [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(c.logprobs) if logprobs is not None else None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ]
        response["usage"] = usage_dict(usage.prompt, usage.completion, usage.cached)
        return deployment, response

    def _chat_stream(
        self, body: ChatCompletionRequest, response_id: str, firsts: list[Tagged], rest: AsyncIterator[Tagged]
    ) -> AsyncIterator[bytes]:
        head = envelope("chat.completion.chunk", response_id, body.model)
        roles = [
            sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}}]})
            for i in range(body.n)
        ]

        def choice_for(_: int, delta: Delta) -> dict[str, Any] | None:
            if not (delta.text or delta.finish_reason or delta.logprobs):
                return None
            return {
                "index": delta.index,
                "delta": {"content": delta.text} if delta.text else {},
                "logprobs": chat_logprobs(delta.logprobs) if delta.logprobs else None,
                "finish_reason": delta.finish_reason,
            }

        return self._stream(body, head, roles, _chain(firsts, rest), choice_for)

    async def _stream(
        self,
        body: ChatCompletionRequest | CompletionRequest,
        head: dict[str, Any],
        preamble: list[bytes],
        tagged: AsyncIterator[Tagged],
        choice_for: Callable[[int, Delta], dict[str, Any] | None],
    ) -> AsyncIterator[bytes]:
        """SSE framing shared by both endpoints: chunks, the usage chunk, an error frame, [DONE]."""
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        usage = _Usage()
        for frame in preamble:
            yield frame
        try:
            async for prompt_index, delta in tagged:
                usage.add(delta)
                choice = choice_for(prompt_index, delta)
                if choice is not None:
                    yield sse({**head, "choices": [choice]})
            self.metrics.count_tokens(body.model, usage.prompt, usage.completion)
            if include_usage:
                yield sse(
                    {**head, "choices": [], "usage": usage_dict(usage.prompt, usage.completion, usage.cached)}
                )
        except Exception as error:  # after the 200: the error travels as a data frame
            yield sse(openai_error_body(to_http_error(error)))
        yield sse("[DONE]")

    # ---- completions ----------------------------------------------------------------------------

    async def completion(
        self, body: CompletionRequest, tenant: Tenant, request_id: str, watch: Callable[[], Awaitable[None]]
    ) -> tuple[Deployment, dict[str, Any] | AsyncIterator[bytes]]:
        deployment, backend = self._llm(body.model)
        prompts = body.prompts()
        if not prompts:
            raise HTTPError(
                400, "prompt is empty: give at least one prompt", "invalid_request_error", "prompt"
            )
        requests = [
            self._request(
                backend,
                body,
                backend.encode_prompt(prompt),
                f"{request_id}-{i}" if len(prompts) > 1 else request_id,
                tenant,
                body.max_tokens,
                body.logprobs,
                "prompt",
            )
            for i, prompt in enumerate(prompts)
        ]
        response_id = f"cmpl-{request_id}"
        if body.stream:
            firsts, rest = await self._first_and_rest(backend, requests, body.model)
            return deployment, self._completion_stream(body, response_id, firsts, rest)
        choices, usage = await _until_disconnect(self._collect(backend, requests, body.model, body.n), watch)
        response = envelope("text_completion", response_id, body.model)
        response["choices"] = [
            {
                "index": i,
                "text": c.text,
                "logprobs": completion_logprobs(c.logprobs, 0) if body.logprobs is not None else None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ]
        response["usage"] = usage_dict(usage.prompt, usage.completion, usage.cached)
        return deployment, response

    def _completion_stream(
        self, body: CompletionRequest, response_id: str, firsts: list[Tagged], rest: AsyncIterator[Tagged]
    ) -> AsyncIterator[bytes]:
        head = envelope("text_completion", response_id, body.model)
        offsets: dict[int, int] = {}

        def choice_for(prompt_index: int, delta: Delta) -> dict[str, Any] | None:
            index = prompt_index * body.n + delta.index
            logprobs = None
            if body.logprobs is not None and delta.logprobs:
                logprobs = completion_logprobs(delta.logprobs, offsets.get(index, 0))
            offsets[index] = offsets.get(index, 0) + len(delta.text)
            if not (delta.text or delta.finish_reason or logprobs):
                return None
            return {
                "index": index,
                "text": delta.text,
                "logprobs": logprobs,
                "finish_reason": delta.finish_reason,
            }

        return self._stream(body, head, [], _chain(firsts, rest), choice_for)

    # ---- embeddings -----------------------------------------------------------------------------

    async def embeddings(self, body: EmbeddingRequest) -> tuple[Deployment, dict[str, Any]]:
        deployment = self.catalog.get(body.model)
        texts = body.texts()
        if any(not t for t in texts):
            raise HTTPError(400, "input contains an empty string", "invalid_request_error", "input")
        result = await deployment.backend.embed(texts)
        dim = result.vectors.shape[1]
        if body.dimensions is not None and body.dimensions != dim:
            raise HTTPError(
                400,
                f"dimensions must be {dim} for this model (it cannot shorten its vectors)",
                "invalid_request_error",
                "dimensions",
            )
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(vector, body.encoding_format)}
            for i, vector in enumerate(result.vectors)
        ]
        self.metrics.count_tokens(body.model, result.num_tokens, 0)
        return deployment, {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": result.num_tokens, "total_tokens": result.num_tokens},
        }


def _encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


async def _chain(firsts: list[Tagged], rest: AsyncIterator[Tagged]) -> AsyncIterator[Tagged]:
    for item in firsts:
        yield item
    async for item in rest:
        yield item


async def _merge(streams: list[AsyncGenerator[Delta, None]], done: list[bool]) -> AsyncIterator[Tagged]:
    """Interleave several requests' deltas as they come; closing this closes (aborts) them all."""
    if len(streams) == 1:  # the common case needs no tasks and no queue hop
        if not done[0]:
            async for delta in streams[0]:
                yield 0, delta
        return
    async for item in _interleave(
        [s for s, finished in zip(streams, done, strict=True) if not finished],
        [i for i, finished in enumerate(done) if not finished],
    ):
        yield item


async def _interleave(streams: list[AsyncIterator[Delta]], indices: list[int]) -> AsyncIterator[Tagged]:
    queue: asyncio.Queue[Tagged | BaseException | None] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Delta]) -> None:
        try:
            async for delta in stream:
                await queue.put((index, delta))
        except Exception as error:
            await queue.put(error)
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in zip(indices, streams, strict=True)]
    remaining = len(tasks)
    try:
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until_disconnect(work: Awaitable[Any], watch: Callable[[], Awaitable[None]]) -> Any:
    """Run `work` unless the client disconnects first; then cancel it (aborting its engine requests)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait([task, watcher], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise HTTPError(499, "client closed the request", "client_closed_request")
    return task.result()
