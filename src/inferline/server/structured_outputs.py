"""The request fields that constrain a completion's text: OpenAI's `response_format` and vLLM's
extensions (`guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`, `structured_outputs`).

They all become one StructuredOutput, checked here with the name of the field it came in (a schema
feature the engine cannot enforce, a regex or grammar that does not parse: 400 before any queue).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from inferline.engine.guided.grammar import grammar_of
from inferline.errors import InvalidRequestError
from inferline.types import StructuredOutput

JsonSchemaValue = dict[str, Any] | bool | str
"""A JSON schema as an object (or true/false), or as its JSON text."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class JsonSchemaFormat(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")
    """None: any JSON object."""
    strict: bool | None = None
    """Accepted for OpenAI's sake: inferline enforces the schema either way."""


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsParams(_Strict):
    """vLLM's `structured_outputs` object: exactly one of its fields."""

    json_: JsonSchemaValue | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


class StructuredFields(_Strict):
    """The constraint fields of chat and text completions; at most one of them per request."""

    response_format: ResponseFormat | None = None
    guided_json: JsonSchemaValue | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structured_outputs: StructuredOutputsParams | None = None

    def structured_output(self) -> StructuredOutput | None:
        """The request's constraint, checked; InvalidRequestError naming the field when it cannot be
        enforced, or when the request gives more than one."""
        given = self._given()
        if not given:
            return None
        if len(given) > 1:
            names = ", ".join(param for param, _ in given)
            raise InvalidRequestError(
                f"a request takes one output constraint, this one has {len(given)} ({names}): keep one",
                given[1][0],
            )
        param, structured = given[0]
        grammar_of(structured, param)
        return structured

    def _given(self) -> list[tuple[str, StructuredOutput]]:
        given: list[tuple[str, StructuredOutput]] = []
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            given.append(("response_format", StructuredOutput("json_object")))
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise InvalidRequestError(
                    "response_format of type json_schema needs a json_schema object: "
                    '{"name": ..., "schema": {...}}',
                    "response_format.json_schema",
                )
            schema = fmt.json_schema.schema_
            param = "response_format.json_schema.schema"
            given.append((param, _schema(schema) if schema is not None else StructuredOutput("json_object")))
        given += _guided(
            "guided_", self.guided_json, self.guided_regex, self.guided_choice, self.guided_grammar
        )
        outputs = self.structured_outputs
        if outputs is not None:
            given += _guided(
                "structured_outputs.", outputs.json_, outputs.regex, outputs.choice, outputs.grammar
            )
            if outputs.json_object:
                given.append(("structured_outputs.json_object", StructuredOutput("json_object")))
        return given


def _guided(
    prefix: str,
    schema: JsonSchemaValue | None,
    regex: str | None,
    choice: list[str] | None,
    grammar: str | None,
) -> list[tuple[str, StructuredOutput]]:
    given = []
    if schema is not None:
        given.append((f"{prefix}json", _schema(schema)))
    if regex is not None:
        given.append((f"{prefix}regex", StructuredOutput("regex", regex)))
    if choice is not None:
        given.append((f"{prefix}choice", StructuredOutput("choice", json.dumps(choice))))
    if grammar is not None:
        given.append((f"{prefix}grammar", StructuredOutput("grammar", grammar)))
    return given


def _schema(schema: JsonSchemaValue) -> StructuredOutput:
    # Text is kept as sent (the grammar check parses it); an object is written compactly, keys in the
    # order given (the output's properties follow the schema's order), so the same schema sent again
    # finds its compiled grammar in the engine's cache.
    spec = schema if isinstance(schema, str) else json.dumps(schema, separators=(",", ":"))
    return StructuredOutput("json_schema", spec)
