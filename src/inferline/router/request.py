"""What the router is told about a request: who calls, the most it may cost, and a cascade stage's
answer to judge."""

from __future__ import annotations

from dataclasses import dataclass

from inferline.router.limits import Principal
from inferline.types import Priority


@dataclass(frozen=True)
class Caller:
    request_id: str
    principal: Principal
    priority: Priority
    user: str | None = None
    """The body's `user` field; sticky splits key on it."""
    endpoint: str = ""
    """The API path it came in on ("/v1/chat/completions", "/v1/responses", ...), for its usage record."""
    batch_id: str | None = None
    """The batch a request is a line of; its usage record carries it."""


@dataclass(frozen=True)
class WorstCase:
    """The most tokens a request can use, priced before it runs so budgets can never be overrun."""

    prompt_tokens: int
    completion_tokens: int | None
    """Per completion; None: as many as the deployment allows."""
    completions: int = 1


@dataclass(frozen=True)
class Answer:
    """What a cascade stage produced, for the confidence check."""

    text: str
    mean_logprob: float | None
    prompt_tokens: int
    completion_tokens: int
    invalid_tool_call: str | None = None
    """Why the answer's tool calls are not valid (an unknown function, arguments that are not JSON or do
    not match the function's parameters); None when they are, or when it calls none."""
