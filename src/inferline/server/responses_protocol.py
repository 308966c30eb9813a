"""The Responses API's request body as pydantic models, and its response object and output items.

Like the chat models beside it, the body forbids unknown fields: a field we do not support is a 400 that
names it. Fields OpenAI defines whose other values we cannot honour (background mode, reasoning, ...)
are accepted at their neutral value and refused otherwise by `unsupported`, which names the field and
the fix. Output items are plain dicts in OpenAI's shape, built here and nowhere else.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from inferline.errors import InvalidRequestError

MAX_METADATA_KEYS = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def new_id(prefix: str) -> str:
    """An id for a response ("resp"), an output message ("msg") or a function call ("fc"): random, since
    stored responses are looked up by it and a client may reuse its request ids."""
    return f"{prefix}_{secrets.token_hex(16)}"


# ---- input items -----------------------------------------------------------------------------


class ContentPart(_Strict):
    type: Literal["input_text", "output_text"]
    text: str
    # Output parts a client sends back from an earlier response carry these; they do not reach the model.
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


def _text_parts_only(value: Any) -> Any:
    """Name a content part we cannot take (images, files, audio) rather than fail the str|list union."""
    for part in value if isinstance(value, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text"):
            raise ValueError(
                f"content part type {kind!r} is not supported: the served models read text; send "
                "input_text (or output_text) parts or a string"
            )
    return value


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    _content = field_validator("content", mode="before")(_text_parts_only)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    _output = field_validator("output", mode="before")(_text_parts_only)

    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text for part in self.output)


INPUT_ITEM_TYPES = ("message", "function_call", "function_call_output")


def _item_type(item: Any) -> str:
    return item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", "message")


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    Discriminator(
        _item_type,
        custom_error_type="input_item_type",
        custom_error_message="item type is not supported: give message, function_call or "
        "function_call_output items (this server keeps no reasoning or built-in tool items)",
    ),
]


# ---- tools and text format -------------------------------------------------------------------


class ResponsesTool(_Strict):
    """A function tool in the Responses API's flat shape (chat completions nest it under `function`)."""

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(_Strict):
    type: Literal["function"]
    name: str


class TextFormatText(_Strict):
    type: Literal["text"]


class TextFormatJsonObject(_Strict):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["json_schema"]
    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # `schema` would shadow a BaseModel attribute; the wire name stays `schema`.
    json_schema: dict[str, Any] = Field(..., alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[
    TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")
]


class TextConfig(_Strict):
    format: TextFormat | None = None


# ---- the request -----------------------------------------------------------------------------


class ResponsesRequest(_Strict):
    model: str
    input: list[InputItem] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[ResponsesTool] = Field(default_factory=list)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_output_tokens: int | None = Field(None, ge=1)
    text: TextConfig | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    store: bool = True
    previous_response_id: str | None = None
    stream: bool = False
    user: str | None = Field(None, max_length=256)
    include: list[str] = Field(default_factory=list)
    # Accepted at their neutral value only (`unsupported` refuses the others, naming them).
    background: bool | None = None
    reasoning: dict[str, Any] | None = None
    conversation: str | dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _text_is_a_user_message(cls, value: Any) -> Any:
        """A string input is one user message (as OpenAI stores it)."""
        return [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else value

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools_only(cls, value: Any) -> Any:
        for i, tool in enumerate(value if isinstance(value, list) else []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise ValueError(
                    f"tools[{i}] has type {kind!r}: this server runs no built-in tools (web_search, "
                    "file_search, ...); give function tools ({'type': 'function', 'name', 'parameters'}) "
                    "and run them in your application"
                )
        return value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _known_choice(cls, value: Any) -> Any:
        """One message for any choice we do not take, instead of one per member of the union."""
        known = value in ("none", "auto", "required") or (
            isinstance(value, dict) and value.get("type") == "function"
        )
        if not known:
            raise ValueError(
                f"tool_choice {value!r} is not supported: use 'none', 'auto', 'required' or "
                "{'type': 'function', 'name': ...}"
            )
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"metadata holds at most {MAX_METADATA_KEYS} keys; got {len(value)}")
        if value is not None and any(len(key) > 64 for key in value):
            raise ValueError("metadata keys are at most 64 characters")
        return value

    def unsupported(self) -> None:
        """Raise InvalidRequestError naming the first field set to something this server cannot do."""
        if self.background:
            raise InvalidRequestError(
                "background mode is not supported: leave background unset (a response is generated "
                "while its request is open; stream it to see progress)",
                "background",
            )
        if self.reasoning is not None:
            raise InvalidRequestError(
                "reasoning is not supported: the served models are not reasoning models; remove it",
                "reasoning",
            )
        if self.conversation is not None:
            raise InvalidRequestError(
                "conversations are not supported: continue a conversation with previous_response_id",
                "conversation",
            )
        if self.truncation == "auto":
            raise InvalidRequestError(
                "truncation 'auto' is not supported: an input longer than the model's context is refused "
                "(truncation 'disabled'); shorten the conversation instead",
                "truncation",
            )
        if self.include:
            raise InvalidRequestError(
                f"include {self.include[0]!r} is not supported: send include empty or leave it out",
                "include",
            )


# ---- the response object ---------------------------------------------------------------------


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [output_text(text)] if status != "in_progress" else [],
    }


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def usage_object(input_tokens: int, output_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(
    response_id: str, created_at: int, body: ResponsesRequest, status: str, output: list[dict[str, Any]]
) -> dict[str, Any]:
    """The response as `status` leaves it; `usage`, `error` and `incomplete_details` are set by the
    caller when there is one. The request's settings are echoed as OpenAI echoes them."""
    text_format = body.text.format if body.text is not None and body.text.format is not None else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": body.model,
        "output": output,
        "parallel_tool_calls": body.parallel_tool_calls,
        "previous_response_id": body.previous_response_id,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "tool_choice": body.tool_choice
        if isinstance(body.tool_choice, str)
        else body.tool_choice.model_dump(),
        "tools": [tool.model_dump(exclude_none=True) for tool in body.tools],
        "text": {
            "format": {"type": "text"}
            if text_format is None
            else text_format.model_dump(by_alias=True, exclude_none=True)
        },
        "truncation": "disabled",
        "usage": None,
        "user": body.user,
        "metadata": body.metadata or {},
        "store": body.store,
        "background": False,
    }
