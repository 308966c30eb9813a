"""The Responses API on the chat path: a Responses request becomes the internal chat request, is routed
like any chat completion, and its deltas come back as output items (and, streamed, as semantic events).

Design note: there is one inference path. A turn's conversation (the stored turns before it, named by
`previous_response_id`, then its own input) and its instructions become chat messages, its sampling
fields the chat request's; `OpenAIServing.route_chat` routes it, so the router, limits, cascades, traces
and the usage record are the chat completion's own. `OutputBuilder` turns the deltas into output items
and the events announcing each change; a collected response runs the same builder and keeps only its
items. A stored turn is written before the response (or its last event) goes out, so the id a client
receives can be continued at once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from inferline.errors import InvalidRequestError
from inferline.router.attempt import Routed
from inferline.router.request import Caller
from inferline.server import route_context
from inferline.server.errors import HTTPError, to_http_error
from inferline.server.openai_protocol import ChatCompletionRequest
from inferline.server.openai_serving import Confidence, Generation, OpenAIServing, TokenCounts
from inferline.server.response_store import ResponseStore, ResponseStoreError, StoredResponse
from inferline.server.responses_output import OutputBuilder
from inferline.server.responses_protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionChoice,
    InputItem,
    MessageItem,
    ResponsesRequest,
    new_id,
    response_object,
    usage_object,
)
from inferline.server.streaming import Watch
from inferline.server.tool_calls import FunctionTool, ToolCalling
from inferline.types import Delta

logger = logging.getLogger(__name__)

T = TypeVar("T")
_ITEMS = TypeAdapter(list[InputItem])

_CHAT_PARAMS = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "response_format.json_schema.schema": "text.format.schema",
    "response_format.json_schema": "text.format",
    "response_format": "text.format",
}
"""A field of the internal chat request, as the Responses request names it (in errors)."""


def _in_responses_terms(error: InvalidRequestError) -> InvalidRequestError:
    """An error about the internal chat request, naming the Responses request's field instead."""
    chat_param = next(
        (p for p in _CHAT_PARAMS if error.param is not None and error.param.startswith(p)), None
    )
    if chat_param is None:
        return error
    param = _CHAT_PARAMS[chat_param]
    return type(error)(error.message.replace(chat_param, param), param)


def sse_event(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


# ---- the conversation as chat messages --------------------------------------------------------


def stored_item(item: MessageItem | FunctionCallItem | FunctionCallOutputItem) -> dict[str, Any]:
    """An input item as it is stored and listed: with an id, and text content as content parts."""
    stored = item.model_dump(exclude_none=True)
    if isinstance(item, MessageItem):
        stored.setdefault("id", new_id("msg"))
        stored.setdefault("status", "completed")
        if isinstance(item.content, str):
            part = "output_text" if item.role == "assistant" else "input_text"
            stored["content"] = [{"type": part, "text": item.content}]
    else:
        stored.setdefault("id", new_id("fc" if isinstance(item, FunctionCallItem) else "fco"))
    return stored


def tool_calling(body: ResponsesRequest) -> ToolCalling:
    """The request's function tools and choice, checked as chat's are (errors name the flat fields)."""
    tools = [FunctionTool(t.name, t.description, t.parameters, t.strict) for t in body.tools]
    choice = body.tool_choice
    if isinstance(choice, FunctionChoice):
        return ToolCalling.checked(tools, "function", choice.name, body.parallel_tool_calls, "tools[{index}]")
    return ToolCalling.checked(tools, choice, None, body.parallel_tool_calls, "tools[{index}]")


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as chat messages: function calls join the assistant turn before them (parallel
    calls are one turn), and a call's output is a tool message that names the function."""
    messages: list[dict[str, Any]] = []
    if instructions is not None:
        messages.append({"role": "system", "content": instructions})
    names: dict[str, str] = {}
    for item in _ITEMS.validate_python(items):
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": item.text()})
        elif isinstance(item, FunctionCallItem):
            names[item.call_id] = item.name
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            if not messages or messages[-1]["role"] != "assistant":
                messages.append({"role": "assistant", "content": None})
            messages[-1].setdefault("tool_calls", []).append(call)
        else:
            tool = {"role": "tool", "tool_call_id": item.call_id, "content": item.text()}
            messages.append({**tool, "name": names[item.call_id]} if item.call_id in names else tool)
    return messages


def chat_request(body: ResponsesRequest, items: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The internal chat request of a turn whose whole conversation is `items` (tools travel apart, as
    the ToolCalling that `tool_calling` builds)."""
    messages = chat_messages(body.instructions, items)
    if not messages:
        raise InvalidRequestError("input is empty: give a message, or instructions", "input")
    chat: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "user": body.user,
        "stream": body.stream,
    }
    text_format = body.text.format if body.text is not None else None
    if text_format is not None and text_format.type != "text":
        chat["response_format"] = _response_format(text_format.model_dump(by_alias=True, exclude_none=True))
    try:
        return ChatCompletionRequest.model_validate(chat)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or "input"
        raise _in_responses_terms(InvalidRequestError(f"{param}: {first['msg']}", param)) from None


def file_citations(citations: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    """OpenAI's annotations of file_search results: one per file cited, at `index` (the text's end: the
    answer as a whole draws on the sources)."""
    files = dict.fromkeys((c["file_id"], c["filename"]) for c in citations)
    return [{"type": "file_citation", "file_id": f, "filename": n, "index": index} for f, n in files]


def _response_format(text_format: dict[str, Any]) -> dict[str, Any]:
    """`text.format` as chat completions' `response_format` (which nests the schema one level down)."""
    if text_format["type"] != "json_schema":
        return text_format
    return {"type": "json_schema", "json_schema": {k: v for k, v in text_format.items() if k != "type"}}


def _server_error(message: str) -> dict[str, Any]:
    return {"code": "server_error", "message": message}


def _not_found(response_id: str, param: str) -> HTTPError:
    return HTTPError(404, f"no stored response with id {response_id!r}", "not_found_error", param)


@dataclass
class _Turn:
    """One response being made: what it answers and what it is stored with."""

    body: ResponsesRequest
    tenant: str
    items: list[dict[str, Any]]
    """The whole conversation it answers, as stored input items."""
    builder: OutputBuilder
    citations: list[dict[str, Any]]
    """A rag route's sources: `inferline.citations`, and file_citation annotations on its text."""
    response_id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    counts: TokenCounts = field(default_factory=TokenCounts)
    confidence: Confidence = field(default_factory=Confidence)
    finish_reason: str | None = None

    def add(self, delta: Delta) -> list[dict[str, Any]]:
        self.counts.add(delta)
        self.confidence.add(delta)
        self.finish_reason = delta.finish_reason or self.finish_reason
        return self.builder.feed(delta.text)

    @property
    def incomplete(self) -> bool:
        return self.finish_reason == "length"

    def response(self, status: str) -> dict[str, Any]:
        response = response_object(self.response_id, self.created_at, self.body, status, self.builder.output)
        if status in ("completed", "incomplete"):
            response["usage"] = usage_object(self.counts.prompt, self.counts.completion, self.counts.cached)
        if status == "incomplete":
            response["incomplete_details"] = {"reason": "max_output_tokens"}
        if self.citations:
            response["inferline"] = {"citations": self.citations}
            for item in response["output"]:
                if item["type"] == "message":
                    text = item["content"][0]
                    text["annotations"] = file_citations(self.citations, len(text["text"]))
        return response


class ResponsesServing:
    def __init__(self, chat: OpenAIServing, store: ResponseStore) -> None:
        self.chat = chat
        self.store = store

    async def create(
        self, body: ResponsesRequest, caller: Caller, watch: Watch
    ) -> tuple[Routed[Generation], dict[str, Any] | AsyncGenerator[bytes, None]]:
        body.unsupported()
        tenant = caller.principal.tenant
        items = [*await self._history(body, tenant), *(stored_item(item) for item in body.input)]
        tools = tool_calling(body)
        chat = chat_request(body, items)

        async def route(prompt: str | None) -> Routed[Generation]:
            return await self.chat.route_chat(route_context.augmented(chat, prompt), caller, watch, tools)

        # Tools travel beside the chat request (ToolCalling), so the cache key takes them from the body.
        extra = body.model_dump(include={"tools", "tool_choice", "parallel_tool_calls"}, mode="json")
        conversation = route_context.chat_conversation(chat, extra)
        try:
            routed, citations = await route_context.route(
                conversation, caller, route, self.chat.caches, self.chat.rag
            )
        except InvalidRequestError as error:
            raise _in_responses_terms(error) from None
        turn = _Turn(body, tenant, items, OutputBuilder(tools.parser()), citations)
        if body.stream:
            return routed, self._stream(turn, routed)
        for _, delta in routed.value.firsts:  # collected: every delta
            turn.add(delta)
        turn.builder.finish(turn.incomplete)
        await routed.complete(turn.counts.prompt, turn.counts.completion, mean_logprob=turn.confidence.mean)
        response = turn.response("incomplete" if turn.incomplete else "completed")
        await self._save(turn, response)
        return routed, response

    async def _stream(self, turn: _Turn, routed: Routed[Generation]) -> AsyncGenerator[bytes, None]:
        numbers = itertools.count()

        def frames(events: list[dict[str, Any]]) -> bytes:
            return b"".join(sse_event({**event, "sequence_number": next(numbers)}) for event in events)

        started = turn.response("in_progress")
        # The opening events go out with the first delta's, in one write.
        pending = frames(
            [
                {"type": "response.created", "response": started},
                {"type": "response.in_progress", "response": started},
            ]
        )
        outcome = "aborted"  # unless the loop below finishes: the client left mid-stream
        try:
            try:
                async for _, delta in routed.value.deltas():
                    events = turn.add(delta)
                    if events:
                        yield pending + frames(events)
                        pending = b""
                outcome = "ok"
            except Exception as error:  # after the 200: the failure is the stream's last event
                outcome = "error"
                failed = turn.response("failed")
                failed["error"] = _server_error(to_http_error(error).message)
                yield pending + frames([{"type": "response.failed", "response": failed}])
                return
            status = "incomplete" if turn.incomplete else "completed"
            closing = turn.builder.finish(turn.incomplete)
            response = turn.response(status)
            try:
                await self._save(turn, response)
            except HTTPError as error:  # generated but not stored: it cannot be continued
                status = "failed"
                response = {**response, "status": status, "error": _server_error(error.message)}
            yield pending + frames([*closing, {"type": f"response.{status}", "response": response}])
        finally:
            await routed.complete(turn.counts.prompt, turn.counts.completion, outcome, turn.confidence.mean)

    # ---- stored responses -----------------------------------------------------------------------

    async def _history(self, body: ResponsesRequest, tenant: str) -> list[dict[str, Any]]:
        """The conversation before this turn: the previous response's input items and output."""
        if body.previous_response_id is None:
            return []
        previous = await self.stored(tenant, body.previous_response_id, "previous_response_id")
        return [*previous.input_items, *previous.response["output"]]

    async def _save(self, turn: _Turn, response: dict[str, Any]) -> None:
        if turn.body.store:
            await self._in_store(self.store.save, turn.tenant, response, turn.items)

    async def stored(self, tenant: str, response_id: str, param: str = "response_id") -> StoredResponse:
        """The tenant's stored response; 404 when it has none by that id (another tenant's included)."""
        stored = await self._in_store(self.store.load, tenant, response_id)
        if stored is None:
            raise _not_found(response_id, param)
        return stored

    async def delete(self, tenant: str, response_id: str) -> dict[str, Any]:
        if not await self._in_store(self.store.delete, tenant, response_id):
            raise _not_found(response_id, "response_id")
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def _in_store(self, call: Callable[..., T], *args: Any) -> T:
        """A store call, off the event loop (a SQLite file or a PostgreSQL socket blocks); a database that
        fails is a 503 to the client and its cause in the server's log, the database's address being for
        operators only."""
        try:
            return await asyncio.to_thread(call, *args)
        except ResponseStoreError as error:
            logger.warning("stored responses: %s", error)
            raise HTTPError(
                503,
                "stored responses cannot be read or written right now (the server log says why); retry later",
                "service_unavailable",
                headers={"retry-after": "5"},
            ) from None
