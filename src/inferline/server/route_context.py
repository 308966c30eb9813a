"""What a generation gets around routing, on every endpoint that generates (chat completions,
completions, responses): a rag route's retrieval (router/rag.py), and a route's response cache
(router/caching.py): look up before routing, serve a hit as the same `Generation` a deployment would
produce (so a streaming client gets it as a stream, and tool calls are parsed as usual), and keep a
miss's answer once it was delivered whole.

Each endpoint describes its request as a `Conversation`; this module never reads the bodies."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from inferline.errors import InvalidRequestError
from inferline.retrieval.cache import CachedAnswer
from inferline.router.attempt import Delivered, Routed
from inferline.router.caching import CacheLookup, RouteCaches
from inferline.router.rag import RagRetriever
from inferline.router.request import Caller
from inferline.server.generation import Generation, Tagged
from inferline.server.openai_protocol import ChatCompletionRequest, CompletionRequest
from inferline.server.streaming import sse
from inferline.types import Delta, Usage

_NOT_IN_KEY = {"messages", "prompt", "stream", "stream_options", "user", "priority"}
"""How an answer is delivered, and who asked, do not change it; everything else in the body does."""


Citations = list[dict[str, Any]]


@dataclass(frozen=True)
class Conversation:
    """A request as its cache key and a rag route read it."""

    model: str
    settings: dict[str, Any]
    """Everything in the body that shapes the answer except the conversation itself."""
    history: list[Any]
    """The conversation before the last message (JSON), which must match exactly for a hit."""
    last: str | None
    """The last message's text: rag's question, and what a semantic cache compares. None when the request
    is not one text (several prompts, token ids): it bypasses the cache, and a rag route refuses it."""
    sampled: bool
    """temperature > 0 (or unset: OpenAI's default is 1) or n > 1."""


def chat_conversation(
    body: ChatCompletionRequest, extra_settings: dict[str, Any] | None = None
) -> Conversation:
    """`extra_settings`: what shapes the answer outside the chat body (a Responses request's tools)."""
    *history, last = body.messages
    settings = body.model_dump(exclude=_NOT_IN_KEY, exclude_none=True, mode="json")
    history_key = [m.model_dump(exclude_none=True, mode="json") for m in history]
    history_key.append({"role": last.role, "tool_call_id": last.tool_call_id})
    sampled = body.temperature is None or body.temperature > 0 or body.n > 1
    return Conversation(body.model, {**settings, **(extra_settings or {})}, history_key, last.text(), sampled)


def completion_conversation(body: CompletionRequest) -> Conversation:
    settings = body.model_dump(exclude=_NOT_IN_KEY, exclude_none=True, mode="json")
    sampled = body.temperature is None or body.temperature > 0 or body.n > 1
    prompts = body.prompts()
    last = prompts[0] if len(prompts) == 1 and isinstance(prompts[0], str) else None
    return Conversation(body.model, settings, [], last, sampled)


async def route(
    conversation: Conversation,
    caller: Caller,
    route_to: Callable[[str | None], Awaitable[Routed[Generation]]],
    caches: RouteCaches | None,
    rag: RagRetriever | None,
) -> tuple[Routed[Generation], Citations]:
    """The routed answer (from the cache or a deployment) and a rag route's citations. `route_to(prompt)`
    routes the request, its last message replaced by `prompt` unless that is None."""
    retrieved = None
    if rag is not None:
        config = rag.router.resolve(conversation.model).config
        if config.policy == "rag" and config.rag is not None:
            if conversation.last is None:
                raise InvalidRequestError(
                    f"route {config.name!r} answers from a vector store, which needs one text prompt: send "
                    "the question as a single string",
                    "prompt",
                )
            retrieved = await rag.retrieve(config.name, config.rag, caller, conversation.last)
    found = None
    if caches is not None:
        found = await lookup(caches, conversation, caller, retrieved.context if retrieved else "")
    if caches is not None and found is not None and found.hit is not None:
        routed = served(caches, conversation.model, caller, found)
    else:
        routed = await route_to(None if retrieved is None else retrieved.prompt)
        if found is not None:
            routed = recording(routed, found)
    return routed, [] if retrieved is None else retrieved.citations


def augmented(body: ChatCompletionRequest, prompt: str | None) -> ChatCompletionRequest:
    """The request with its last message replaced by `prompt` (a rag route's sources and question)."""
    if prompt is None:
        return body
    last = body.messages[-1].model_copy(update={"content": prompt})
    return body.model_copy(update={"messages": [*body.messages[:-1], last]})


def with_citations(
    stream: AsyncGenerator[bytes, None], head: dict[str, Any], citations: Citations
) -> AsyncGenerator[bytes, None]:
    """The stream, its first event carrying a rag route's citations when there are any (a chunk with no
    choices, as the usage one)."""
    return _cited(stream, head, citations) if citations else stream


async def _cited(
    stream: AsyncGenerator[bytes, None], head: dict[str, Any], citations: Citations
) -> AsyncGenerator[bytes, None]:
    yield sse({**head, "choices": [], "inferline": {"citations": citations}})
    try:
        async for event in stream:
            yield event
    finally:
        await stream.aclose()


async def lookup(
    caches: RouteCaches, conversation: Conversation, caller: Caller, context: str = ""
) -> CacheLookup | None:
    if conversation.last is None:
        return caches.bypass(conversation.model)
    return await caches.lookup(
        conversation.model,
        caller,
        conversation.settings,
        conversation.history,
        conversation.last,
        conversation.sampled,
        context,
    )


def served(caches: RouteCaches, model: str, caller: Caller, lookup: CacheLookup) -> Routed[Generation]:
    """A hit as a routed answer: its deltas, the cache headers, metered as 'cached' once delivered."""
    if lookup.hit is None:
        raise ValueError("served() takes a lookup that hit")
    answer = lookup.hit.answer
    started = time.perf_counter()
    last = len(answer.texts) - 1
    firsts: list[Tagged] = []
    for index, (text, reason) in enumerate(zip(answer.texts, answer.finish_reasons, strict=True)):
        usage = Usage(answer.prompt_tokens, answer.completion_tokens) if index == last else None
        firsts.append((0, Delta(caller.request_id, index, text, [], finish_reason=reason, usage=usage)))
    route = caches.router.resolve(model).config
    recorded = False

    async def finish(delivered: Delivered) -> None:
        nonlocal recorded
        if not recorded:
            recorded = True
            caches.record_hit(model, caller, answer, time.perf_counter() - started)

    headers = {"x-inferline-route": route.name, **lookup.headers()}
    deployment = caches.router.pool.find(route.members()[0])
    return Routed(Generation(firsts), deployment, headers, 0.0, None, False, finish)


def recording(routed: Routed[Generation], lookup: CacheLookup) -> Routed[Generation]:
    """The routed answer, unchanged for its client, kept in the cache once delivered whole."""
    texts: dict[int, str] = {}
    reasons: dict[int, str | None] = {}

    def see(delta: Delta) -> None:
        texts[delta.index] = texts.get(delta.index, "") + delta.text
        if delta.finish_reason is not None:
            reasons[delta.index] = delta.finish_reason

    generation = routed.value
    for _, delta in generation.firsts:
        see(delta)

    async def watched(rest: AsyncIterator[Tagged]) -> AsyncIterator[Tagged]:
        async for item in rest:
            see(item[1])
            yield item

    async def finish(delivered: Delivered) -> None:
        await routed.complete(
            delivered.prompt_tokens, delivered.completion_tokens, delivered.outcome, delivered.mean_logprob
        )
        if delivered.outcome == "ok" and texts and len(reasons) == len(texts):
            order = sorted(texts)
            answer = CachedAnswer(
                [texts[i] for i in order],
                [reasons[i] for i in order],
                delivered.prompt_tokens,
                delivered.completion_tokens,
            )
            await lookup.store(answer)

    rest = None if generation.rest is None else watched(generation.rest)
    headers = {**routed.headers, **lookup.headers()}
    return replace(routed, value=Generation(generation.firsts, rest), headers=headers, _finish=finish)
