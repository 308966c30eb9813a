"""A model's text read back as tool calls, incrementally: what a stream may show as content so far, and
each call once it is whole.

Design note: one parser reads every form the supported templates teach, so no per-model setting is
needed: `<tool_call>{json}</tool_call>` blocks anywhere in the text (Hermes, Qwen 2.5, and the
fallback prompt of models/tool_prompt.py; a block the model ends without its closing tag counts), and
an answer that is nothing but JSON: an object `{"name", "arguments" | "parameters"}`, a list of them,
or several separated by `;` or `,` (Llama 3.x, after `<|python_tag|>` or bare; and the constrained
output of tool_choice required or named, whose array keeps the calls it completed before max_tokens
cut it). Text that may still turn into a call is held back: a suffix
that could begin an opening tag, the whitespace before it (whitespace around calls and at either end
is dropped), and an answer that opens with `{` or `[` (until it ends). A whole answer is the same
parser fed at once, so streams and whole answers agree.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from inferline.models.tool_prompt import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

PYTHON_TAG = "<|python_tag|>"
"""Llama 3.x writes it before a call in its JSON form."""
_OPENERS = (TOOL_CALL_OPEN, PYTHON_TAG)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    """The arguments as JSON text, as OpenAI sends them."""

    def openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


Piece = str | ToolCall
"""Content text, or a whole call."""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallParser:
    """Feed the text as it comes; `finish()` at the end. Both return the pieces now decided, in order."""

    def __init__(self, parallel: bool = True) -> None:
        self.parallel = parallel
        """False keeps only the first call (parallel_tool_calls: false)."""
        self.problems: list[str] = []
        """Call blocks that could not be read as a call (they stay in the content)."""
        self.num_calls = 0
        self._buffer = ""
        self._mode = "start"  # start | text | block | json
        self._skip_space = True  # drop whitespace at the start (and after <|python_tag|>)
        self._json_prefix = ""

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> list[Piece]:
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[Piece]:
        pieces: list[Piece] = []
        while True:
            if self._skip_space:
                self._buffer = self._buffer.lstrip()
                if not self._buffer and not final:
                    return pieces
                self._skip_space = False
            progressed = {
                "start": self._start,
                "text": self._text,
                "block": self._block,
                "json": self._json,
            }[self._mode](pieces, final)
            if not progressed:
                return pieces

    def _start(self, pieces: list[Piece], final: bool) -> bool:
        """Decide between an answer that is all JSON and text (that may hold call blocks)."""
        if self._buffer.startswith(("{", "[")):
            self._mode = "json"
        elif self._buffer.startswith(PYTHON_TAG):
            self._mode, self._json_prefix = "json", PYTHON_TAG
            self._buffer = self._buffer[len(PYTHON_TAG) :].lstrip()
        elif PYTHON_TAG.startswith(self._buffer) and not final:
            return False
        else:
            self._mode = "text"
        return True

    def _text(self, pieces: list[Piece], final: bool) -> bool:
        found = [(i, opener) for opener in _OPENERS if (i := self._buffer.find(opener)) >= 0]
        if found:
            i, opener = min(found)
            if self._buffer[:i].strip():
                pieces.append(self._buffer[:i].rstrip())
            self._buffer = self._buffer[i + len(opener) :]
            if opener == TOOL_CALL_OPEN:
                self._mode = "block"
            else:
                self._mode, self._json_prefix, self._skip_space = "json", PYTHON_TAG, True
            return True
        ready = self._buffer.rstrip() if final else self._buffer[: _unsure_from(self._buffer)].rstrip()
        if ready:
            pieces.append(ready)
        self._buffer = self._buffer[len(ready) :]
        return False

    def _block(self, pieces: list[Piece], final: bool) -> bool:
        end = self._buffer.find(TOOL_CALL_CLOSE)
        if end < 0 and not final:
            return False
        payload = self._buffer if end < 0 else self._buffer[:end]
        raw = TOOL_CALL_OPEN + payload + ("" if end < 0 else TOOL_CALL_CLOSE)
        self._buffer = "" if end < 0 else self._buffer[end + len(TOOL_CALL_CLOSE) :]
        calls = self._calls(payload)
        if calls is None:
            self.problems.append(
                f"a {TOOL_CALL_OPEN} block that is not a JSON call: {payload.strip()[:80]!r}"
            )
            pieces.append(raw)
        else:
            pieces.extend(calls)
        self._mode = "text"
        return True

    def _json(self, pieces: list[Piece], final: bool) -> bool:
        if not final:
            return False
        calls = self._calls(self._buffer) or self._calls(_whole_items(self._buffer))
        if calls is None:
            if self._json_prefix:
                self.problems.append(f"a {PYTHON_TAG} call that is not JSON: {self._buffer.strip()[:80]!r}")
            pieces.append(self._json_prefix + self._buffer)
        else:
            pieces.extend(calls)
        self._buffer = ""
        return False

    def _calls(self, payload: str) -> list[Piece] | None:
        found = calls_in_json(payload)
        if found is None:
            return None
        calls: list[Piece] = []
        for name, arguments in found:
            if self.parallel or self.num_calls == 0:
                calls.append(ToolCall(new_call_id(), name, arguments))
                self.num_calls += 1
        return calls


def parse_tool_calls(text: str, parallel: bool = True) -> tuple[str, list[ToolCall], list[str]]:
    """A whole answer: (its content without the calls, the calls, the blocks that were not calls)."""
    parser = ToolCallParser(parallel)
    pieces = [*parser.feed(text), *parser.finish()]
    content = "".join(p for p in pieces if isinstance(p, str))
    return content, [p for p in pieces if isinstance(p, ToolCall)], parser.problems


def calls_in_json(text: str) -> list[tuple[str, str]] | None:
    """(name, arguments as JSON text) of each call the text holds, or None when it is not only calls."""
    values = _json_values(text)
    if values is None:
        return None
    objects = [item for value in values for item in (value if isinstance(value, list) else [value])]
    calls = [_call(obj) for obj in objects]
    if not calls or any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def _call(obj: Any) -> tuple[str, str] | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        return obj["name"], arguments
    if isinstance(arguments, dict):
        return obj["name"], json.dumps(arguments, ensure_ascii=False)
    return None


def _json_values(text: str) -> list[Any] | None:
    """The JSON values that make up the whole text, separated by whitespace, `;` or `,`."""
    decoder = json.JSONDecoder()
    values, position, text = [], 0, text.strip()
    while position < len(text):
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return None
        values.append(value)
        while position < len(text) and (text[position].isspace() or text[position] in ";,"):
            position += 1
    return values or None


def _whole_items(text: str) -> str:
    """The items of a JSON array that were complete before the text was cut off (at max_tokens), as
    an array; the empty string when there were none."""
    decoder = json.JSONDecoder()
    text = text.strip()
    if not text.startswith("["):
        return ""
    items: list[Any] = []
    position = 1
    while True:
        while position < len(text) and (text[position].isspace() or text[position] == ","):
            position += 1
        try:
            item, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return json.dumps(items) if items else ""
        items.append(item)


def _unsure_from(text: str) -> int:
    """Where the suffix that could still become an opening tag starts (len(text) when none could)."""
    for start in range(max(0, len(text) - max(map(len, _OPENERS)) + 1), len(text)):
        if any(opener.startswith(text[start:]) for opener in _OPENERS):
            return start
    return len(text)
