"""The Responses API of the shared real server process, through the official openai client: text output,
instructions, streamed events, conversations continued by previous_response_id, stored responses per
tenant, metering, and the requests it refuses."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from inferline.server.openai_protocol import ChatCompletionRequest

from .conftest import API_KEY, OTHER_KEY, ServerProcess, kv_blocks_used

MODEL = "default"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0) as alpha:
        yield alpha


@pytest.fixture(scope="module")
def other_tenant(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=OTHER_KEY, max_retries=0) as beta:
        yield beta


@pytest.fixture(scope="module")
def answered(client: openai.OpenAI) -> Any:
    """One stored answer, shared by the tests that read it back."""
    return client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, temperature=0)


def test_text_response(answered: Any) -> None:
    assert answered.id.startswith("resp_")
    assert answered.object == "response"
    assert answered.status == "completed"
    assert "Paris" in answered.output_text
    [message] = answered.output
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.content[0].type == "output_text"
    usage = answered.usage
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert answered.incomplete_details is None


def test_instructions_answer_as_a_system_message_in_chat_would(client: openai.OpenAI) -> None:
    instructions = "You are a geography teacher. Answer in one short sentence."
    instructed = client.responses.create(
        model=MODEL, instructions=instructions, input=QUESTION, max_output_tokens=16, temperature=0
    )
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": instructions}, {"role": "user", "content": QUESTION}],
        max_tokens=16,
        temperature=0,
    )
    assert instructed.instructions == instructions
    assert instructed.output_text == chat.choices[0].message.content
    assert instructed.usage.input_tokens == chat.usage.prompt_tokens


def test_max_output_tokens_leaves_it_incomplete(client: openai.OpenAI) -> None:
    cut = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=2, temperature=0)
    assert cut.status == "incomplete"
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage.output_tokens == 2
    assert cut.output[0].status == "incomplete"


def test_streamed_events_reassemble_the_stored_response(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=16, temperature=0, stream=True)
    )
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress"
    text_deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response
    assert "Paris" in text_deltas
    assert final.output_text == text_deltas == events[-4].text
    assert final.usage.output_tokens > 0
    assert client.responses.retrieve(final.id).model_dump() == final.model_dump()


def test_a_client_leaving_a_stream_aborts_it_and_stores_nothing(server: ServerProcess) -> None:
    body = {"model": MODEL, "input": "Count from 1 to 1000.", "max_output_tokens": 2000, "stream": True}
    auth = {"authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", f"{server.url}/v1/responses", json=body, headers=auth, timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        created = next(line for line in lines if line.startswith("data: "))
        response_id = json.loads(created[len("data: ") :])["response"]["id"]
        for _ in range(12):  # some deltas
            next(lines)
        assert kv_blocks_used(server) > 0
    deadline = time.monotonic() + 5
    while kv_blocks_used(server) > 0:
        assert time.monotonic() < deadline, "the abandoned response still holds KV blocks"
        time.sleep(0.05)
    stored = httpx.get(f"{server.url}/v1/responses/{response_id}", headers=auth)
    assert stored.status_code == 404


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI, answered: Any) -> None:
    follow_up = client.responses.create(
        model=MODEL,
        previous_response_id=answered.id,
        input="And of Germany?",
        max_output_tokens=16,
        temperature=0,
    )
    assert follow_up.previous_response_id == answered.id
    assert "Berlin" in follow_up.output_text
    # The earlier question and answer are in the prompt again.
    assert follow_up.usage.input_tokens > answered.usage.input_tokens + answered.usage.output_tokens
    items = list(client.responses.input_items.list(follow_up.id, order="asc"))
    assert [(item.type, item.role) for item in items] == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    assert items[0].content[0].text == QUESTION
    assert items[1].content[0].text == answered.output_text
    assert items[2].content[0].text == "And of Germany?"
    newest_first = client.responses.input_items.list(follow_up.id, limit=2)
    assert [item.id for item in newest_first.data] == [items[2].id, items[1].id]
    assert newest_first.has_more


def test_retrieve_and_delete(client: openai.OpenAI) -> None:
    made = client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=4, temperature=0)
    assert client.responses.retrieve(made.id).output_text == made.output_text
    client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(made.id)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    made = client.responses.create(model=MODEL, input="Say hi.", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_another_tenants_response_is_not_found(
    client: openai.OpenAI, other_tenant: openai.OpenAI, answered: Any
) -> None:
    for attempt in (
        lambda: other_tenant.responses.retrieve(answered.id),
        lambda: other_tenant.responses.input_items.list(answered.id),
        lambda: other_tenant.responses.delete(answered.id),
        lambda: other_tenant.responses.create(
            model=MODEL, previous_response_id=answered.id, input="Go on.", max_output_tokens=2
        ),
    ):
        with pytest.raises(openai.NotFoundError) as refused:
            attempt()
        assert answered.id in refused.value.message
    assert client.responses.retrieve(answered.id).id == answered.id


def test_one_usage_record_names_the_route_and_the_endpoint(
    client: openai.OpenAI, inferline_home: Path
) -> None:
    raw = client.responses.with_raw_response.create(model=MODEL, input="Hi", max_output_tokens=3)
    request_id = raw.headers["x-request-id"]
    assert raw.headers["x-inferline-deployment"].startswith("smollm2-135m-instruct")
    engine = create_engine(f"sqlite:///{inferline_home / 'inferline.db'}")
    query = text("SELECT route, endpoint, completion_tokens FROM usage_records WHERE request_id = :id")
    deadline = time.monotonic() + 10
    rows: list[Any] = []
    while not rows and time.monotonic() < deadline:  # the writer flushes every second
        with engine.connect() as connection:
            rows = list(connection.execute(query, {"id": request_id}))
        time.sleep(0.2)
    engine.dispose()
    assert [tuple(row) for row in rows] == [("default", "/v1/responses", raw.parse().usage.output_tokens)]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools", "built-in tools"),
        ({"background": True}, "background", "background mode"),
        ({"reasoning": {"effort": "high"}}, "reasoning", "not reasoning models"),
        ({"truncation": "auto"}, "truncation", "truncation 'auto'"),
        ({"include": ["message.output_text.logprobs"]}, "include", "not supported"),
        ({"prompt_cache_key": "k"}, "prompt_cache_key", "not supported"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.message.content",
            "input_image",
        ),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input.0", "no reasoning"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice", "not supported"),
        ({"input": []}, "input", "input is empty"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(
    server: ServerProcess, body: dict[str, Any], param: str, words: str
) -> None:
    reply = httpx.post(
        f"{server.url}/v1/responses",
        json={"model": MODEL, "input": "Hi", "max_output_tokens": 2, **body},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"].startswith(param), error
    assert words in error["message"], error


def test_unknown_previous_response_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        client.responses.create(model=MODEL, previous_response_id="resp_nothing", input="Hi")
    assert refused.value.body["param"] == "previous_response_id"


WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
WEATHER_QUESTION = "What is the weather in Paris?"


def test_a_history_with_a_call_and_its_output_is_answered(client: openai.OpenAI) -> None:
    history: list[Any] = [
        {"role": "user", "content": WEATHER_QUESTION},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "18 degrees and sunny"},
    ]
    answer = client.responses.create(
        model=MODEL, input=history, tools=[WEATHER_TOOL], max_output_tokens=8, temperature=0
    )
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": WEATHER_QUESTION},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "call_1",
                "name": "get_weather",
                "content": "18 degrees and sunny",
            },
        ],
        tools=[{"type": "function", "function": {k: v for k, v in WEATHER_TOOL.items() if k != "type"}}],
        max_tokens=8,
        temperature=0,
    )
    # The same conversation as chat would render it: the same prompt, the same answer.
    assert answer.usage.input_tokens == chat.usage.prompt_tokens
    assert answer.output_text == (chat.choices[0].message.content or "")
    items = list(client.responses.input_items.list(answer.id, order="asc"))
    assert [item.type for item in items] == ["message", "function_call", "function_call_output"]


@pytest.fixture(scope="module")
def called(client: openai.OpenAI) -> Any:
    """A turn that must call the weather tool (required choice: the 135M model then always does)."""
    return client.responses.create(
        model=MODEL,
        input=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_output_tokens=48,
        temperature=0,
    )


def test_a_required_tool_choice_answers_with_a_function_call(called: Any) -> None:
    assert called.status == "completed"
    [call] = called.output
    assert call.type == "function_call"
    assert call.id.startswith("fc_")
    assert call.call_id.startswith("call_")
    assert call.name == "get_weather"
    assert json.loads(call.arguments)["city"] in ("Paris", "London", "Tokyo")
    assert called.output_text == ""


def test_the_functions_output_continues_the_conversation(client: openai.OpenAI, called: Any) -> None:
    [call] = called.output
    answer = client.responses.create(
        model=MODEL,
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees and sunny"}],
        tools=[WEATHER_TOOL],
        tool_choice="none",
        max_output_tokens=12,
        temperature=0,
    )
    assert answer.status in ("completed", "incomplete")
    assert [item.type for item in answer.output] == ["message"]
    assert answer.output_text.strip()
    items = list(client.responses.input_items.list(answer.id, order="asc"))
    assert [item.type for item in items] == ["message", "function_call", "function_call_output"]
    assert items[1].call_id == items[2].call_id == call.call_id


def test_a_streamed_function_call(client: openai.OpenAI) -> None:
    events = list(
        client.responses.create(
            model=MODEL,
            input=WEATHER_QUESTION,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "name": "get_weather"},
            max_output_tokens=48,
            temperature=0,
            stream=True,
        )
    )
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, delta, done, item_done, completed = events[2:]
    assert added.item.type == "function_call"
    assert added.item.arguments == ""
    assert delta.delta == done.arguments == item_done.item.arguments
    assert completed.response.output[0].model_dump() == item_done.item.model_dump()
    assert json.loads(done.arguments)["city"] in ("Paris", "London", "Tokyo")


@pytest.mark.parametrize(
    ("tools", "tool_choice", "param"),
    [
        ([{**WEATHER_TOOL, "parameters": {"type": "array"}}], "auto", "tools[0].parameters"),
        ([{**WEATHER_TOOL, "name": "get weather"}], "auto", "tools[0].name"),
        ([WEATHER_TOOL], {"type": "function", "name": "get_time"}, "tool_choice"),
        ([], "required", "tool_choice"),
    ],
)
def test_bad_tools_are_400s_naming_the_field(
    client: openai.OpenAI, tools: list[dict[str, Any]], tool_choice: Any, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input="Hi", tools=tools, tool_choice=tool_choice)
    assert refused.value.body["param"] == param


@pytest.mark.skipif(
    "response_format" not in ChatCompletionRequest.model_fields,
    reason="text.format becomes chat's response_format (the server side of branch guided)",
)
def test_text_format_json_schema_constrains_the_output(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "enum": ["Paris", "Berlin", "Rome"]}},
        "required": ["capital"],
        "additionalProperties": False,
    }
    made = client.responses.create(
        model=MODEL,
        input=QUESTION,
        text={"format": {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}},
        max_output_tokens=32,
        temperature=0,
    )
    assert made.status == "completed"
    assert json.loads(made.output_text)["capital"] in ("Paris", "Berlin", "Rome")
    assert made.text.format.type == "json_schema"
    assert made.text.format.schema_ == schema


def test_a_schema_that_cannot_be_enforced_is_a_400_naming_text_format(client: openai.OpenAI) -> None:
    unsupported = {"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model=MODEL,
            input="Hi",
            text={"format": {"type": "json_schema", "name": "x", "schema": unsupported}},
        )
    assert refused.value.body["param"] == "text.format.schema"
    assert refused.value.body["message"].startswith("text.format.schema: ")
