"""Chat completions, completions and embeddings: from validated request bodies, through the router,
to responses.

The router picks the deployment and calls back `attempt(deployment, final)`; an attempt builds fresh
engine requests (one per prompt, each with the body's n completions) and returns a `Generation`:
for a stream, the first delta of every request plus the merged rest, so a request the backend
rejects, or a deployment that fails before its first token, still gets a proper 4xx or a fallback;
otherwise (and for a cascade stage that may be escalated) every delta. After the first streamed
byte an error travels as a data frame and the stream ends with `data: [DONE]`. A client that goes
away cancels the stream, which aborts the engine request at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from inferline.backends.base import EmbeddingResult
from inferline.router.attempt import Routed
from inferline.router.caching import RouteCaches
from inferline.router.deployments import Deployment
from inferline.router.rag import RagRetriever
from inferline.router.request import Answer, Caller, WorstCase
from inferline.router.router import Router
from inferline.server import route_context
from inferline.server.errors import HTTPError, openai_error_body, to_http_error
from inferline.server.generation import Generation, Tagged
from inferline.server.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    chat_choice,
    chat_deltas,
    chat_logprobs,
    completion_logprobs,
    envelope,
    finish_reason,
    usage_dict,
)
from inferline.server.streaming import DONE, ClientDisconnectedError, Watch, sse, until_disconnect
from inferline.server.tool_calls import ToolCalling
from inferline.telemetry.tracing import trace_request
from inferline.types import Delta, Request, TokenLogprob

T = TypeVar("T")

CHAT_TEMPLATE_TOKENS = 64
"""Budget holds count each prompt byte as a token (no tokenizer produces more) plus this allowance per
message for the chat template's own tokens."""


@dataclass
class _Choice:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class TokenCounts:
    prompt: int = 0
    completion: int = 0
    cached: int = 0

    def add(self, delta: Delta) -> None:
        if delta.usage is not None:
            self.prompt += delta.usage.prompt_tokens
            self.completion += delta.usage.completion_tokens
            self.cached += delta.usage.cached_prompt_tokens


@dataclass
class Confidence:
    """The mean log-probability of the sampled tokens seen so far (deltas carry them when computed)."""

    total: float = 0.0
    num_tokens: int = 0

    def add(self, delta: Delta) -> None:
        for entry in delta.logprobs or []:
            self.total += entry.logprob
            self.num_tokens += 1

    @property
    def mean(self) -> float | None:
        return self.total / self.num_tokens if self.num_tokens else None


def _confidence(generation: Generation, tools: ToolCalling | None = None) -> Answer:
    """A collected generation as a cascade judges it: all text, mean logprob of every sampled token,
    and whether the calls of each completion are valid uses of the request's tools."""
    usage, confidence = TokenCounts(), Confidence()
    texts: dict[tuple[int, int], str] = {}
    for prompt_index, delta in generation.firsts:
        usage.add(delta)
        confidence.add(delta)
        key = (prompt_index, delta.index)
        texts[key] = texts.get(key, "") + delta.text
    problems = [p for text in texts.values() if tools is not None and (p := tools.problem(text)) is not None]
    return Answer(
        "".join(texts.values()), confidence.mean, usage.prompt, usage.completion, next(iter(problems), None)
    )


class OpenAIServing:
    def __init__(
        self, router: Router, caches: RouteCaches | None = None, rag: RagRetriever | None = None
    ) -> None:
        self.router = router
        self.caches = caches
        """Routes' response caches (chat completions, completions, responses); None: no route caches."""
        self.rag = rag
        """Retrieval for rag routes; None: rag routes answer without it."""

    # ---- generation through the router ----------------------------------------------------------

    async def _route_generation(
        self,
        body: ChatCompletionRequest | CompletionRequest,
        caller: Caller,
        build: Callable[[bool], list[Request]],
        worst_case: WorstCase,
        tools: ToolCalling | None = None,
    ) -> Routed[Generation]:
        cascade = self.router.resolve(body.model).config.policy == "cascade"
        # A cascade stage needs its tokens' logprobs to judge confidence, asked for or not; so does the
        # usage record's mean_logprob when every answer's confidence is recorded.
        need_logprobs = cascade or self.router.config.telemetry.record_mean_logprob

        async def attempt(deployment: Deployment, final: bool) -> Generation:
            requests = build(need_logprobs)
            firsts, rest = await deployment.within(self._first_and_rest(deployment, requests))
            if body.stream and final:
                return Generation(firsts, rest)
            return Generation([*firsts, *[item async for item in rest]])

        def judge(generation: Generation) -> Answer:
            return _confidence(generation, tools)

        return await self.router.run(body.model, caller, attempt, worst_case, judge if cascade else None)

    async def _first_and_rest(
        self, deployment: Deployment, requests: list[Request]
    ) -> tuple[list[Tagged], AsyncIterator[Tagged]]:
        """Start every request; return the first delta of each (errors raise here) and the merged rest."""
        streams = [deployment.backend.generate(r) for r in requests]
        try:
            firsts = [await anext(s) for s in streams]
        except BaseException:
            for stream in streams:
                await stream.aclose()
            raise
        return list(enumerate(firsts)), _merge(streams, [d.usage is not None for d in firsts])

    async def _collected(
        self, routed: Routed[Generation], n: int, num_prompts: int
    ) -> tuple[list[_Choice], TokenCounts]:
        choices = [_Choice() for _ in range(num_prompts * n)]
        usage, confidence = TokenCounts(), Confidence()
        for prompt_index, delta in routed.value.firsts:
            choice = choices[prompt_index * n + delta.index]
            choice.text += delta.text
            choice.logprobs += delta.logprobs or []
            choice.finish_reason = delta.finish_reason or choice.finish_reason
            usage.add(delta)
            confidence.add(delta)
        await routed.complete(usage.prompt, usage.completion, mean_logprob=confidence.mean)
        return choices, usage

    # ---- chat -----------------------------------------------------------------------------------

    async def route_chat(
        self, body: ChatCompletionRequest, caller: Caller, watch: Watch, tools: ToolCalling
    ) -> Routed[Generation]:
        """Route a chat request (the Responses API's turns too) to the deployment that answers it;
        `tools` is the body's tool calling, checked (the Responses API builds its own)."""
        messages = [m.template_dict() for m in body.messages]
        template_tools = tools.template_tools()
        logprobs = body.requested_logprobs()
        max_tokens = body.requested_max_tokens()
        structured = body.structured_output()  # a constraint that cannot be enforced is a 400 now

        def build(need_logprobs: bool) -> list[Request]:
            # A required or named tool choice constrains the output to its call.
            sampling = body.sampling(
                max_tokens,
                0 if logprobs is None and need_logprobs else logprobs,
                tools.structured() or structured,
            )
            return [
                trace_request(
                    Request(
                        caller.request_id,
                        [],
                        sampling,
                        caller.priority,
                        caller.principal.tenant,
                        messages=messages,
                        tools=template_tools,
                        stream=body.stream,
                    )
                )
            ]

        prompt_bound = sum(len(m["content"].encode()) + CHAT_TEMPLATE_TOKENS for m in messages)
        tool_text = [part for part in (template_tools, *(m.get("tool_calls") for m in messages)) if part]
        prompt_bound += len(json.dumps(tool_text).encode()) if tool_text else 0
        worst_case = WorstCase(prompt_bound, max_tokens, body.n)
        routing = self._route_generation(body, caller, build, worst_case, tools if tools.offered else None)
        return await _routed_unless_gone(routing, watch)

    async def chat(
        self, body: ChatCompletionRequest, caller: Caller, watch: Watch
    ) -> tuple[Routed[Generation], dict[str, Any] | AsyncGenerator[bytes, None]]:
        tools = body.tool_calling()

        async def route(prompt: str | None) -> Routed[Generation]:
            return await self.route_chat(route_context.augmented(body, prompt), caller, watch, tools)

        conversation = route_context.chat_conversation(body)
        routed, citations = await route_context.route(conversation, caller, route, self.caches, self.rag)
        response_id = f"chatcmpl-{caller.request_id}"
        if body.stream:  # a cascade stage kept whole is replayed as a stream too
            head = envelope("chat.completion.chunk", response_id, body.model)
            return routed, route_context.with_citations(
                self._chat_stream(body, response_id, routed, tools), head, citations
            )
        choices, usage = await self._collected(routed, body.n, 1)
        with_logprobs = body.requested_logprobs() is not None
        response = envelope("chat.completion", response_id, body.model)
        response["choices"] = [
            chat_choice(
                i,
                tools.parse(c.text),
                chat_logprobs(c.logprobs) if with_logprobs else None,
                c.finish_reason,
            )
            for i, c in enumerate(choices)
        ]
        response["usage"] = usage_dict(usage.prompt, usage.completion, usage.cached)
        if citations:
            response["inferline"] = {"citations": citations}
        return routed, response

    def _chat_stream(
        self, body: ChatCompletionRequest, response_id: str, routed: Routed[Generation], tools: ToolCalling
    ) -> AsyncGenerator[bytes, None]:
        head = envelope("chat.completion.chunk", response_id, body.model)
        roles = [
            sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}}]})
            for i in range(body.n)
        ]
        with_logprobs = body.requested_logprobs() is not None
        parsers = [tools.parser() for _ in range(body.n)]

        def choice_for(_: int, delta: Delta) -> list[dict[str, Any]]:
            logprobs = delta.logprobs if with_logprobs else None
            parser = parsers[delta.index]
            if parser is None:
                deltas = [{"content": delta.text}] if delta.text else []
            else:
                first_call = parser.num_calls
                pieces = parser.feed(delta.text) + (parser.finish() if delta.finish_reason else [])
                deltas = chat_deltas(pieces, first_call)
            called = parser is not None and parser.num_calls > 0
            if not (deltas or delta.finish_reason or logprobs):
                return []
            choices: list[dict[str, Any]] = [
                {"index": delta.index, "delta": d, "logprobs": None, "finish_reason": None} for d in deltas
            ]
            last = choices[-1] if choices else {"index": delta.index, "delta": {}}
            last["logprobs"] = chat_logprobs(logprobs) if logprobs else None
            last["finish_reason"] = finish_reason(delta.finish_reason, called)
            return choices or [last]

        return self._stream(body, head, roles, routed, choice_for)

    async def _stream(
        self,
        body: ChatCompletionRequest | CompletionRequest,
        head: dict[str, Any],
        preamble: list[bytes],
        routed: Routed[Generation],
        choice_for: Callable[[int, Delta], list[dict[str, Any]]],
    ) -> AsyncGenerator[bytes, None]:
        """SSE framing shared by both endpoints: chunks, the usage chunk, an error frame, [DONE]."""
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        usage, confidence = TokenCounts(), Confidence()
        outcome = "aborted"  # unless the loop below finishes: the client left mid-stream
        # Frames that are ready together go out in one write (each write is a pass through the ASGI
        # stack and a system call): the role frames with the first chunk, the usage chunk with [DONE].
        pending = b"".join(preamble)
        try:
            try:
                async for prompt_index, delta in routed.value.deltas():
                    usage.add(delta)
                    confidence.add(delta)
                    choices = choice_for(prompt_index, delta)
                    if choices:
                        yield pending + b"".join(sse({**head, "choices": [c]}) for c in choices)
                        pending = b""
                outcome = "ok"
                ending = pending
                if include_usage:
                    totals = usage_dict(usage.prompt, usage.completion, usage.cached)
                    ending += sse({**head, "choices": [], "usage": totals})
            except Exception as error:  # after the 200: the error travels as a data frame
                outcome = "error"
                ending = pending + sse(openai_error_body(to_http_error(error)))
            yield ending + DONE
        finally:
            await routed.complete(usage.prompt, usage.completion, outcome, confidence.mean)

    # ---- completions ----------------------------------------------------------------------------

    async def completion(
        self, body: CompletionRequest, caller: Caller, watch: Watch
    ) -> tuple[Routed[Generation], dict[str, Any] | AsyncGenerator[bytes, None]]:
        if not body.prompts():
            raise HTTPError(
                400, "prompt is empty: give at least one prompt", "invalid_request_error", "prompt"
            )

        async def route(prompt: str | None) -> Routed[Generation]:
            sent = body if prompt is None else body.model_copy(update={"prompt": prompt})
            return await self._route_completion(sent, caller, watch)

        conversation = route_context.completion_conversation(body)
        routed, citations = await route_context.route(conversation, caller, route, self.caches, self.rag)
        response_id = f"cmpl-{caller.request_id}"
        if body.stream:  # a cascade stage kept whole is replayed as a stream too
            head = envelope("text_completion", response_id, body.model)
            return routed, route_context.with_citations(
                self._completion_stream(body, response_id, routed), head, citations
            )
        choices, usage = await self._collected(routed, body.n, len(body.prompts()))
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
        if citations:
            response["inferline"] = {"citations": citations}
        return routed, response

    async def _route_completion(
        self, body: CompletionRequest, caller: Caller, watch: Watch
    ) -> Routed[Generation]:
        prompts = body.prompts()
        structured = body.structured_output()  # a constraint that cannot be enforced is a 400 now

        def build(need_logprobs: bool) -> list[Request]:
            logprobs = 0 if body.logprobs is None and need_logprobs else body.logprobs
            return [
                trace_request(
                    Request(
                        f"{caller.request_id}-{i}" if len(prompts) > 1 else caller.request_id,
                        list(prompt) if isinstance(prompt, list) else [],
                        body.sampling(body.max_tokens, logprobs, structured),
                        caller.priority,
                        caller.principal.tenant,
                        prompt_text=prompt if isinstance(prompt, str) else None,
                        stream=body.stream,
                    )
                )
                for i, prompt in enumerate(prompts)
            ]

        prompt_bound = sum(len(p.encode()) if isinstance(p, str) else len(p) for p in prompts)
        worst_case = WorstCase(prompt_bound, body.max_tokens, body.n * len(prompts))
        return await _routed_unless_gone(self._route_generation(body, caller, build, worst_case), watch)

    def _completion_stream(
        self, body: CompletionRequest, response_id: str, routed: Routed[Generation]
    ) -> AsyncGenerator[bytes, None]:
        head = envelope("text_completion", response_id, body.model)
        offsets: dict[int, int] = {}

        def choice_for(prompt_index: int, delta: Delta) -> list[dict[str, Any]]:
            index = prompt_index * body.n + delta.index
            logprobs = None
            if body.logprobs is not None and delta.logprobs:
                logprobs = completion_logprobs(delta.logprobs, offsets.get(index, 0))
            offsets[index] = offsets.get(index, 0) + len(delta.text)
            if not (delta.text or delta.finish_reason or logprobs):
                return []
            return [
                {
                    "index": index,
                    "text": delta.text,
                    "logprobs": logprobs,
                    "finish_reason": delta.finish_reason,
                }
            ]

        return self._stream(body, head, [], routed, choice_for)

    # ---- embeddings -----------------------------------------------------------------------------

    async def embeddings(
        self, body: EmbeddingRequest, caller: Caller
    ) -> tuple[Routed[EmbeddingResult], dict[str, Any]]:
        texts = body.texts()
        if any(not t for t in texts):
            raise HTTPError(400, "input contains an empty string", "invalid_request_error", "input")

        async def attempt(deployment: Deployment, final: bool) -> EmbeddingResult:
            return await deployment.within(deployment.backend.embed(texts))

        worst_case = WorstCase(sum(len(t.encode()) for t in texts), 0)
        routed = await self.router.run(body.model, caller, attempt, worst_case)
        result = routed.value
        await routed.complete(result.num_tokens, 0)
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
        return routed, {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": result.num_tokens, "total_tokens": result.num_tokens},
        }


def _encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


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


async def _routed_unless_gone(work: Awaitable[T], watch: Watch) -> T:
    """Route unless the client leaves first; then its engine or upstream requests are aborted."""
    try:
        return await until_disconnect(work, watch)
    except ClientDisconnectedError:
        raise HTTPError(499, "client closed the request", "client_closed_request") from None
