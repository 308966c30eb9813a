"""Structured outputs through the official openai client against the real server process:
response_format (json_schema, json_object), the vLLM-style guided_* fields, and their 400s."""

import json
import re

import jsonschema
import openai
import pytest

from .conftest import API_KEY, ServerProcess

MODEL = "smollm2-135m-instruct"
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 16},
        "country": {"type": "string", "maxLength": 16},
        "population_millions": {"type": "number", "minimum": 0, "maximum": 50},
    },
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Give the capital of France as JSON."}]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def test_response_format_json_schema_output_validates(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        max_tokens=60,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "capital", "schema": CITY, "strict": True},
        },
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), CITY)


def test_streamed_regex_and_completion_choice(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "When did the Bastille fall? Give the date."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        extra_body={"guided_regex": r"[0-9]{4}-[0-9]{2}-[0-9]{2}"},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text)
    reply = client.completions.create(
        model=MODEL,
        prompt="Is Paris in France? Answer:",
        max_tokens=4,
        n=2,
        temperature=1.0,
        seed=1,
        extra_body={"structured_outputs": {"choice": [" yes", " no"]}},
    )
    assert {c.text for c in reply.choices} <= {" yes", " no"}


@pytest.mark.parametrize(
    ("extra", "param", "problem"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nope"}},
                }
            },
            "response_format.json_schema.schema",
            "nope",
        ),
        ({"guided_json": {"type": "object", "if": {}, "then": {}}}, "guided_json", "if"),
        ({"guided_regex": "[0-9"}, "guided_regex", "unclosed character class"),
        ({"guided_grammar": "start: missing"}, "guided_grammar", "missing"),
        ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice", "one output constraint"),
    ],
)
def test_constraints_that_cannot_be_enforced_are_400s_naming_the_field(
    client: openai.OpenAI, extra: dict[str, object], param: str, problem: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, extra_body=extra)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param
    assert problem in error["message"]
