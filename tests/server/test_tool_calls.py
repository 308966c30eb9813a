"""Tool definitions checked, tool choices turned into decoding constraints, and model answers in each
supported format read back as calls, whole and streamed a character at a time."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from inferline.errors import InvalidRequestError
from inferline.server.openai_protocol import ChatCompletionRequest
from inferline.server.openai_serving import Generation, _confidence
from inferline.server.tool_calls import FunctionTool, ToolCalling
from inferline.server.tool_parser import ToolCall, ToolCallParser, parse_tool_calls
from inferline.types import Delta

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [FunctionTool("get_weather", "The weather.", CITY), FunctionTool("get_time")]
HERMES = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
FORMATS = {
    "hermes": HERMES,
    "hermes, arguments first": '<tool_call>{"arguments": {"city": "Paris"}, "name": "get_weather"}'
    "</tool_call>",
    "llama 3 python_tag": '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
    "llama 3 bare JSON": ' {"name": "get_weather", "parameters": {"city": "Paris"}}',
    "constrained array": '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    "unclosed block": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
}


def streamed(text: str, parallel: bool = True) -> tuple[str, list[ToolCall]]:
    parser = ToolCallParser(parallel)
    pieces = [piece for ch in text for piece in parser.feed(ch)] + parser.finish()
    return "".join(p for p in pieces if isinstance(p, str)), [p for p in pieces if isinstance(p, ToolCall)]


@pytest.mark.parametrize("text", FORMATS.values(), ids=FORMATS.keys())
def test_every_format_parses_to_the_same_call_whole_and_streamed(text: str) -> None:
    content, calls, problems = parse_tool_calls(text)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert calls[0].id.startswith("call_")
    assert not problems
    assert content == ("Let me look." if text == HERMES else "")
    streamed_content, streamed_calls = streamed(text)
    assert (streamed_content, [c.arguments for c in streamed_calls]) == (
        content,
        [c.arguments for c in calls],
    )


def test_parallel_calls_in_blocks_and_in_llama_form_and_the_parallel_switch() -> None:
    block = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    assert [c.name for c in parse_tool_calls(HERMES + block)[1]] == ["get_weather", "get_time"]
    llama = '{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "Oslo"}}'
    assert [c.name for c in parse_tool_calls(llama)[1]] == ["get_time", "get_weather"]
    assert [c.name for c in parse_tool_calls(HERMES + block, parallel=False)[1]] == ["get_weather"]


def test_a_constrained_array_cut_by_max_tokens_keeps_its_whole_calls() -> None:
    cut = '[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"ci'
    content, calls, _ = parse_tool_calls(cut)
    assert [c.name for c in calls] == ["get_time"]
    assert content == ""
    assert streamed(cut)[1][0].name == "get_time"
    assert parse_tool_calls('[{"name": "get_ti')[0] == '[{"name": "get_ti'  # no whole call: content


def test_text_is_held_back_only_while_it_may_become_a_call() -> None:
    parser = ToolCallParser()
    assert parser.feed("Hello <tool") == ["Hello"]  # the space and the partial tag wait
    assert parser.feed("box> there") == [" <toolbox> there"]
    assert parser.feed(" {") == [" {"]  # JSON inside text is text
    json_answer = ToolCallParser()
    assert json_answer.feed('{"city": "Paris"') == []  # an answer opening with JSON waits for its end
    assert json_answer.finish() == ['{"city": "Paris"']  # ... and is content when it is no call


def test_a_block_that_is_not_a_call_stays_in_the_content_and_is_reported() -> None:
    content, calls, problems = parse_tool_calls("Hi <tool_call>not json</tool_call> there")
    assert (content, calls) == ("Hi<tool_call>not json</tool_call> there", [])
    assert problems == ["a <tool_call> block that is not a JSON call: 'not json'"]


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        ([FunctionTool("get weather")], "auto", "tools[0].function.name"),
        ([FunctionTool("f"), FunctionTool("f")], "auto", "tools[1].function.name"),
        ([FunctionTool("f", parameters={"type": "string"})], "auto", "tools[0].function.parameters"),
        (
            [FunctionTool("f", parameters={"type": "object", "required": "city"})],
            "auto",
            "tools[0].function.parameters",
        ),
        ([], "required", "tool_choice"),
        (  # valid JSON schema, but no constraint can be compiled from it
            [FunctionTool("f", parameters={"type": "object", "if": {"required": ["a"]}, "then": {}})],
            "required",
            "tools[0].function.parameters",
        ),
        ([FunctionTool("f")], "function", "tool_choice"),
    ],
)
def test_bad_tool_definitions_name_the_field(tools: list[FunctionTool], choice: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as error:
        ToolCalling.checked(tools, choice, "g" if choice == "function" else None)
    assert error.value.param == param


def constraint(calling: ToolCalling) -> dict[str, Any]:
    structured = calling.structured()
    assert structured is not None
    assert structured.kind == "json_schema"
    return dict(json.loads(structured.spec))


def test_required_and_named_choices_constrain_to_calls_matching_the_parameters() -> None:
    named = constraint(ToolCalling.checked(TOOLS, "function", "get_weather"))
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "Paris"}}, named)
    for wrong in ({"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, named)
    parallel = constraint(ToolCalling.checked(TOOLS, "required"))
    assert parallel["maxItems"] == len(TOOLS)  # at most one call per function
    jsonschema.validate(
        [{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "A"}}], parallel
    )
    single = constraint(ToolCalling.checked(TOOLS, "required", parallel=False))
    jsonschema.validate({"name": "get_time", "arguments": {}}, single)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "get_time", "arguments": {"extra": 1}}, single)  # takes no arguments
    assert ToolCalling.checked(TOOLS, "auto").structured() is None


def test_parameter_definitions_move_to_the_root_where_their_references_resolve() -> None:
    unit = {
        "$defs": {"Unit": {"enum": ["C", "F"]}},
        "type": "object",
        "properties": {"unit": {"$ref": "#/$defs/Unit"}},
    }
    schema = constraint(ToolCalling.checked([FunctionTool("temp", parameters=unit)], "function", "temp"))
    jsonschema.validate({"name": "temp", "arguments": {"unit": "C"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "temp", "arguments": {"unit": "K"}}, schema)


def test_none_neither_offers_nor_parses_the_tools() -> None:
    calling = ToolCalling.checked(TOOLS, "none")
    assert calling.template_tools() is None
    assert calling.parser() is None
    assert calling.structured() is None
    assert calling.parse(HERMES).content == HERMES


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (HERMES, None),
        ("Just text.", None),
        ('<tool_call>{"name": "get_news", "arguments": {}}</tool_call>', "names function 'get_news'"),
        ('<tool_call>{"name": "get_weather", "arguments": "{city"}</tool_call>', "are not valid JSON"),
        (
            '<tool_call>{"name": "get_weather", "arguments": {"town": "X"}}</tool_call>',
            "'city' is a required",
        ),
        ("<tool_call>oops</tool_call>", "not a JSON call"),
    ],
)
def test_answers_are_judged_for_cascades(text: str, problem: str | None) -> None:
    found = ToolCalling.checked(TOOLS).problem(text)
    assert found is None if problem is None else problem in (found or "")
    deltas = [Delta("r", 0, text[:5], []), Delta("r", 0, text[5:], [], finish_reason="stop")]
    answer = _confidence(Generation([(0, d) for d in deltas]), ToolCalling.checked(TOOLS))
    assert answer.invalid_tool_call == found


def test_required_without_a_call_is_judged_invalid() -> None:
    assert (
        ToolCalling.checked(TOOLS, "required").problem("Sunny.")
        == "no tool call, though tool_choice requires one"
    )


def test_chat_body_builds_the_tool_calling() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": CITY}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False,
        }
    )
    calling = body.tool_calling()
    assert (calling.mode, calling.function, calling.parallel) == ("function", "get_weather", False)
    assert calling.template_tools() == [
        {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}
    ]
