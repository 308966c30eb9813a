"""Output items and stream events from a model's text, fed as a stream would feed it: text, then a call
the tool-call parser finds, an answer cut short, an empty answer."""

from __future__ import annotations

import json
from typing import Any

from inferline.server.responses_output import OutputBuilder
from inferline.server.tool_parser import ToolCallParser

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def fed(builder: OutputBuilder, text: str, incomplete: bool = False, step: int = 3) -> list[dict[str, Any]]:
    events = []
    for start in range(0, len(text), step):
        events += builder.feed(text[start : start + step])
    return events + builder.finish(incomplete)


def test_text_then_a_call_is_a_message_then_a_function_call() -> None:
    builder = OutputBuilder(ToolCallParser())
    events = fed(builder, "Let me check. " + CALL)
    types = [event["type"] for event in events]
    deltas = [i for i, kind in enumerate(types) if kind == "response.output_text.delta"]
    assert types[: deltas[0]] == ["response.output_item.added", "response.content_part.added"]
    assert types[deltas[-1] + 1 :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    message, call = builder.output
    assert "".join(events[i]["delta"] for i in deltas) == message["content"][0]["text"] == "Let me check."
    assert message["status"] == "completed"
    assert call["type"] == "function_call"
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert [event["output_index"] for event in events[-4:]] == [1, 1, 1, 1]
    assert events[-1]["item"] == call
    assert events[-4]["item"]["arguments"] == ""


def test_without_tools_all_text_is_the_message() -> None:
    builder = OutputBuilder(None)
    fed(builder, "Plain " + CALL)
    [message] = builder.output
    assert message["content"][0]["text"] == "Plain " + CALL


def test_a_cut_answer_leaves_the_message_incomplete() -> None:
    builder = OutputBuilder(ToolCallParser())
    events = fed(builder, "Paris is", incomplete=True)
    assert builder.output[0]["status"] == "incomplete"
    assert events[-1]["item"]["status"] == "incomplete"


def test_an_empty_answer_is_one_empty_message() -> None:
    builder = OutputBuilder(None)
    events = fed(builder, "")
    assert [event["type"] for event in events] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert builder.output[0]["content"][0]["text"] == ""
