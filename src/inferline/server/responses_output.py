"""A generation's text as the Responses API's output items, and the stream events that announce them.

Design note: the text goes through the request's tool-call parser (tool_calls.py), the chat API's own,
so a stream and a whole answer agree with each other and with chat completions: content pieces extend
an open `message` item, a whole call closes it and becomes a `function_call` item. Events are built
without their sequence numbers; the stream numbers them as it sends them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inferline.server.responses_protocol import function_call_item, message_item, new_id, output_text
from inferline.server.tool_parser import Piece, ToolCall, ToolCallParser

Event = dict[str, Any]


@dataclass
class OutputBuilder:
    """Feed the text as it comes, `finish` at the end; each returns the events of what changed."""

    parser: ToolCallParser | None
    """None when calls are not parsed (no tools offered): all text is the message's."""
    output: list[dict[str, Any]] = field(default_factory=list)
    _text: list[str] = field(default_factory=list)
    _message: dict[str, Any] | None = None
    """The message item being written, while it is open."""

    def feed(self, text: str) -> list[Event]:
        if not text:
            return []
        return self._pieces(self.parser.feed(text) if self.parser is not None else [text])

    def finish(self, incomplete: bool) -> list[Event]:
        """The last pieces, then the open message closed ("incomplete" when the output was cut short);
        an answer with no item at all is one empty message."""
        events = self._pieces(self.parser.finish()) if self.parser is not None else []
        if not self.output:
            events += self._open_message()
        return events + self._close_message("incomplete" if incomplete else "completed")

    def _pieces(self, pieces: list[Piece]) -> list[Event]:
        events: list[Event] = []
        for piece in pieces:
            if isinstance(piece, ToolCall):
                events += self._close_message("completed")
                events += self._function_call(piece)
            elif piece:
                events += self._text_delta(piece)
        return events

    def _text_delta(self, text: str) -> list[Event]:
        events = self._open_message() if self._message is None else []
        self._text.append(text)
        where = self._where()
        return [*events, {"type": "response.output_text.delta", **where, "delta": text, "logprobs": []}]

    def _where(self) -> dict[str, Any]:
        assert self._message is not None  # only called while a message is open
        return {"item_id": self._message["id"], "output_index": len(self.output) - 1, "content_index": 0}

    def _open_message(self) -> list[Event]:
        self._message = message_item(new_id("msg"), "", "in_progress")
        self._text = []
        self.output.append(self._message)
        return [
            {
                "type": "response.output_item.added",
                "output_index": len(self.output) - 1,
                "item": self._message,
            },
            {"type": "response.content_part.added", **self._where(), "part": output_text("")},
        ]

    def _close_message(self, status: str) -> list[Event]:
        if self._message is None:
            return []
        where = self._where()
        text = "".join(self._text)
        message = message_item(self._message["id"], text, status)
        self.output[-1] = message
        self._message = None
        return [
            {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
            {"type": "response.content_part.done", **where, "part": message["content"][0]},
            {"type": "response.output_item.done", "output_index": where["output_index"], "item": message},
        ]

    def _function_call(self, call: ToolCall) -> list[Event]:
        item_id = new_id("fc")
        done = function_call_item(item_id, call.id, call.name, call.arguments, "completed")
        self.output.append(done)
        index = len(self.output) - 1
        where = {"item_id": item_id, "output_index": index}
        return [
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": function_call_item(item_id, call.id, call.name, "", "in_progress"),
            },
            {"type": "response.function_call_arguments.delta", **where, "delta": call.arguments},
            {"type": "response.function_call_arguments.done", **where, "arguments": call.arguments},
            {"type": "response.output_item.done", "output_index": index, "item": done},
        ]
