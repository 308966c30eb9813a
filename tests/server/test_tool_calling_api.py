"""Tool calling through the official `openai` client against the shared server and its real default
model (SmolLM2-135M): required and named choices give valid calls, whole and streamed; a history with
calls and results is rendered and answered; bad tool definitions are 400s naming the field."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.server.conftest import API_KEY, ServerProcess

MODEL = "smollm2-135m-instruct"
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {"type": "function", "function": {"name": "get_time", "description": "The time now."}},
]
QUESTION: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def check_call(name: str, arguments: str) -> None:
    schema = (
        WEATHER_PARAMETERS if name == "get_weather" else {"type": "object", "additionalProperties": False}
    )
    jsonschema.validate(json.loads(arguments), schema)


def test_a_named_choice_gives_a_valid_call(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=40,
        temperature=0,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]  # type: ignore[union-attr]
    assert calls[0].id.startswith("call_")
    assert calls[0].type == "function"
    check_call(calls[0].function.name, calls[0].function.arguments)  # type: ignore[union-attr]
    assert response.usage is not None
    assert response.usage.completion_tokens > 0


def test_required_calls_stream_as_tool_call_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required", max_tokens=60, stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    content, finish_reasons = "", []
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        finish_reasons.append(chunk.choices[0].finish_reason)
        for part in delta.tool_calls or []:
            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            if part.id:
                assert not call["id"], "the id and name come once, in the call's first delta"
                call["id"], call["name"] = part.id, part.function.name  # type: ignore[union-attr]
            call["arguments"] += part.function.arguments or ""  # type: ignore[union-attr]
    assert content == ""
    assert finish_reasons[-1] == "tool_calls"
    assert calls
    assert sorted(calls) == list(range(len(calls)))
    for call in calls.values():
        assert call["id"].startswith("call_")
        assert call["name"] in ("get_weather", "get_time")
        check_call(call["name"], call["arguments"])


def test_a_history_of_calls_and_results_is_rendered_and_answered(client: openai.OpenAI) -> None:
    arguments = '{"city": "Paris"}'
    history: list[Any] = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1)
    answered = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=12, temperature=0
    )
    choice = answered.choices[0]
    assert choice.message.content
    assert not choice.message.tool_calls
    assert choice.finish_reason in ("stop", "length")
    # The tools are not offered under "none", but the call and its result are in the prompt.
    assert answered.usage is not None
    assert plain.usage is not None
    assert answered.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    offered = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=1)
    assert offered.usage is not None
    assert offered.usage.prompt_tokens > answered.usage.prompt_tokens + 50


def bad(**body: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": QUESTION, "tools": TOOLS, **body}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (bad(tools=[{"type": "function", "function": {"name": "get weather!"}}]), "tools[0].function.name"),
        (
            bad(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]),
            "tools[0].function.parameters",
        ),
        (
            bad(
                tools=[
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "object", "properties": 3}},
                    }
                ]
            ),
            "tools[0].function.parameters",
        ),
        (bad(tool_choice={"type": "function", "function": {"name": "get_news"}}), "tool_choice"),
        (bad(tools=None, tool_choice="required"), "tool_choice"),
        (bad(tools=[{"type": "retrieval"}]), "tools.0.type"),
        ({"model": MODEL, "messages": [{"role": "tool", "content": "18 C"}]}, "messages.0"),
        ({"model": "all-minilm-l6-v2", "messages": QUESTION, "tools": TOOLS}, "model"),
    ],
)
def test_bad_tool_requests_are_400s_naming_the_field(
    client: openai.OpenAI, body: dict[str, Any], param: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(**body)
    assert isinstance(error.value.body, dict)
    assert error.value.body.get("param") == param, error.value.body
