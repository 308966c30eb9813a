"""The OpenAI API's request bodies as pydantic models, and the response shapes.

Request models forbid unknown fields: a field we do not support is a 400 that names it, never
silently ignored. Responses are plain dicts in OpenAI's shape, built here and nowhere else.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inferline.server.structured_outputs import StructuredFields
from inferline.server.tool_calls import FunctionTool, ParsedAnswer, ToolCalling
from inferline.server.tool_parser import Piece, ToolCall
from inferline.types import Priority, SamplingParams, StructuredOutput, TokenLogprob


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str
    """JSON text."""


class MessageToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    """An assistant turn's calls (its content may then be null)."""
    tool_call_id: str | None = None
    """A tool turn: the call it answers."""

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a message with role 'tool' needs 'tool_call_id', the id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry 'tool_calls'; this one has role {self.role!r}")
        return self

    def template_dict(self) -> dict[str, Any]:
        """The message as chat templates take it (content joined into text)."""
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role == "tool":
            message["name"] = self.name
        return message

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class _SamplingFields(StructuredFields):
    """Fields shared by chat and text completions (OpenAI's, then vLLM-style extensions; the output
    constraints are StructuredFields')."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    n: int = Field(1, ge=1, le=SamplingParams.MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    # Extensions beyond OpenAI's fields.
    top_k: int | None = Field(None, ge=1)
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    priority: Literal["interactive", "conversational", "batch"] | None = None

    def sampling(
        self, max_tokens: int | None, logprobs: int | None, structured: StructuredOutput | None = None
    ) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

        def given(value: float | None, default: float) -> float:
            return default if value is None else value

        return SamplingParams(
            n=self.n,
            max_tokens=max_tokens,
            temperature=given(self.temperature, 1.0),
            top_p=given(self.top_p, 1.0),
            top_k=self.top_k,
            min_p=given(self.min_p, 0.0),
            presence_penalty=given(self.presence_penalty, 0.0),
            frequency_penalty=given(self.frequency_penalty, 0.0),
            repetition_penalty=given(self.repetition_penalty, 1.0),
            seed=self.seed,
            stop=stop,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            structured=structured,
        )

    def priority_class(self) -> Priority | None:
        return None if self.priority is None else Priority.parse(self.priority)


class FunctionDefinition(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """A JSON schema of type object; omitted: the function takes no arguments."""
    strict: bool | None = None


class ChatTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=SamplingParams.MAX_LOGPROBS)
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    """Omitted: auto when there are tools."""
    parallel_tool_calls: bool | None = None
    """Omitted: true."""

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def requested_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def tool_calling(self) -> ToolCalling:
        """The tools and choice, checked (InvalidRequestError names the bad field)."""
        tools = [
            FunctionTool(t.function.name, t.function.description, t.function.parameters, t.function.strict)
            for t in self.tools or []
        ]
        choice = self.tool_choice or "auto"
        if isinstance(choice, NamedToolChoice):
            return ToolCalling.checked(
                tools, "function", choice.function.name, self.parallel_tool_calls is not False
            )
        return ToolCalling.checked(tools, choice, None, self.parallel_tool_calls is not False)


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)
    max_tokens: int | None = Field(16, ge=1)

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


class EmbeddingRequest(_Strict):
    model: str
    input: str | list[str] = Field(..., min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# ---- responses -------------------------------------------------------------------------------


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return usage


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": _token_bytes(e.token),
                "top_logprobs": [
                    {"token": t.token, "logprob": t.logprob, "bytes": _token_bytes(t.token)} for t in e.top
                ],
            }
            for e in entries
        ]
    }


def completion_logprobs(entries: list[TokenLogprob], text_offset_start: int) -> dict[str, Any]:
    offsets, offset = [], text_offset_start
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
        "text_offset": offsets,
    }


def tool_call_deltas(call: ToolCall, index: int) -> list[dict[str, Any]]:
    """A streamed call as chat chunk deltas: its id, type and name first, then its arguments."""
    head = {
        "index": index,
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": ""},
    }
    return [
        {"tool_calls": [head]},
        {"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]},
    ]


def chat_deltas(pieces: list[Piece], first_call: int) -> list[dict[str, Any]]:
    """Chunk deltas of parsed pieces: content, or a call's head and arguments (numbered from first_call)."""
    deltas: list[dict[str, Any]] = []
    number = first_call
    for piece in pieces:
        if isinstance(piece, ToolCall):
            deltas += tool_call_deltas(piece, number)
            number += 1
        else:
            deltas.append({"content": piece})
    return deltas


def finish_reason(reason: str | None, called: bool) -> str | None:
    """OpenAI's reason for an answer that ended by itself after calling tools is "tool_calls"."""
    return "tool_calls" if called and reason == "stop" else reason


def chat_choice(
    index: int, answer: ParsedAnswer, logprobs: dict[str, Any] | None, reason: str | None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.calls:
        message["tool_calls"] = [call.openai() for call in answer.calls]
    return {
        "index": index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": finish_reason(reason, bool(answer.calls)),
    }


def envelope(object_type: str, response_id: str, model: str, created: int | None = None) -> dict[str, Any]:
    return {"id": response_id, "object": object_type, "created": created or int(time.time()), "model": model}
