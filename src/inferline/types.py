"""The values that flow through inferline: requests in, deltas out, one usage record per request."""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from inferline.errors import InvalidRequestError


class Priority(enum.IntEnum):
    """Scheduling class of a request. A higher class is served first and may preempt lower ones."""

    BATCH = 0
    CONVERSATIONAL = 1
    INTERACTIVE = 2

    @classmethod
    def parse(cls, value: str | int | Priority) -> Priority:
        """Accept a class name ("interactive") or its number; name the choices when it is neither."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        if isinstance(value, int) and not isinstance(value, bool) and value in {p.value for p in cls}:
            return cls(value)
        choices = ", ".join(p.name.lower() for p in cls)
        raise InvalidRequestError(f"priority must be one of {choices}; got {value!r}", "priority")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    if not _is_number(value) or math.isnan(value):
        raise InvalidRequestError(f"{name} must be a number; got {value!r}", name)
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bracket = "(" if low_open else "["
        raise InvalidRequestError(f"{name} must be in {bracket}{low}, {high}]; got {value}", name)


StructuredKind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the text a completion may contain, enforced by token masks while decoding."""

    kind: StructuredKind
    spec: str = ""
    """json_schema: the schema as JSON text; regex: the pattern; choice: a JSON list of the allowed
    strings; grammar: the grammar's text; json_object: empty (any JSON object)."""


@dataclass
class SamplingParams:
    """How to pick each next token and when to stop, per request (the vLLM/OpenAI field names)."""

    n: int = 1
    """Number of independent completions of the same prompt; they share the prompt's KV blocks."""
    max_tokens: int | None = 16
    """Upper bound on generated tokens per completion; None: as many as the context holds (the backend
    fills it in before the engine sees the request)."""
    temperature: float = 1.0
    """0 means greedy; higher flattens the distribution."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p, in (0, 1]."""
    top_k: int | None = None
    """Keep only the k most likely tokens; None keeps all."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the most likely token's, in [0, 1]."""
    presence_penalty: float = 0.0
    """Subtracted once from the logit of every token already generated (OpenAI semantics), in [-2, 2]."""
    frequency_penalty: float = 0.0
    """Subtracted per occurrence from the logit of generated tokens (OpenAI semantics), in [-2, 2]."""
    repetition_penalty: float = 1.0
    """Divides positive and multiplies negative logits of prompt and generated tokens (HF semantics)."""
    seed: int | None = None
    """Makes sampling reproducible for this request whatever else shares the batch."""
    stop: list[str] = field(default_factory=list)
    """Strings that end the completion; the matched string is cut from the output."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end the completion besides the model's end-of-sequence tokens."""
    ignore_eos: bool = False
    """Keep generating past the model's end-of-sequence tokens (benchmarks use this)."""
    logprobs: int | None = None
    """Return the sampled token's log-probability plus this many top alternatives; None returns none."""
    structured: StructuredOutput | None = None
    """Constrain the output to a JSON schema, a regex, a choice list or a grammar; None leaves it free."""

    MAX_LOGPROBS = 20
    MAX_N = 64

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is None:
            self.stop = []
        if self.stop_token_ids is None:
            self.stop_token_ids = []

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        """Raise InvalidRequestError naming the first field outside its allowed range."""
        self._validate_counts()
        _check_range("temperature", self.temperature, 0.0, 100.0)
        _check_range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_range("min_p", self.min_p, 0.0, 1.0)
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_range("repetition_penalty", self.repetition_penalty, 0.0, 10.0, low_open=True)
        self._validate_stops()

    def _validate_counts(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or not 1 <= self.n <= self.MAX_N:
            raise InvalidRequestError(f"n must be an integer in [1, {self.MAX_N}]; got {self.n!r}", "n")
        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1
        ):
            raise InvalidRequestError(
                f"max_tokens must be an integer >= 1; got {self.max_tokens!r}", "max_tokens"
            )
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise InvalidRequestError(
                f"top_k must be an integer >= 1, or null for no limit; got {self.top_k!r}", "top_k"
            )
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise InvalidRequestError(f"seed must be an integer; got {self.seed!r}", "seed")
        if self.logprobs is not None and (
            not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= self.MAX_LOGPROBS
        ):
            raise InvalidRequestError(
                f"logprobs must be an integer in [0, {self.MAX_LOGPROBS}]; got {self.logprobs!r}", "logprobs"
            )

    def _validate_stops(self) -> None:
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidRequestError("stop must be a non-empty string or a list of them", "stop")
        if len(self.stop) > 16:
            raise InvalidRequestError(f"stop takes at most 16 strings; got {len(self.stop)}", "stop")
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids):
            raise InvalidRequestError("stop_token_ids must be non-negative integers", "stop_token_ids")


@dataclass
class Request:
    """One generation request. The engine reads `prompt_token_ids`; the server fills `messages` or
    `prompt_text` instead, and the backend that serves it encodes them (a local engine with its own
    tokenizer and chat template) or forwards them (a remote upstream)."""

    request_id: str
    prompt_token_ids: list[int] = field(default_factory=list)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: Priority = Priority.CONVERSATIONAL
    tenant: str = "default"
    arrival_time: float = field(default_factory=time.monotonic)
    """Monotonic seconds; orders requests within a class and tenant."""
    messages: list[dict[str, Any]] | None = None
    """Chat requests: the conversation, OpenAI-shaped ({"role", "content"}, an assistant's "tool_calls",
    a tool result's "tool_call_id")."""
    tools: list[dict[str, Any]] | None = None
    """Chat requests: the function tools the chat template offers the model, OpenAI-shaped
    ({"type": "function", "function": {"name", "description", "parameters"}}); None offers none."""
    prompt_text: str | None = None
    """Completion requests given as text rather than token ids."""
    traceparent: str | None = None
    """W3C trace context of the span this request runs under; a remote backend passes it upstream."""
    stream: bool = True
    """False when the caller collects the whole answer before it replies: a backend in front of several
    replicas may then run it again, whole, on another replica when the first one fails midway."""


@dataclass
class TopLogprob:
    token_id: int | None
    """None when a remote upstream sent only the token's text."""
    token: str
    logprob: float


@dataclass
class TokenLogprob:
    """The sampled token's log-probability under the model and the most likely alternatives."""

    token_id: int | None
    """None when a remote upstream sent only the token's text."""
    token: str
    logprob: float
    top: list[TopLogprob] = field(default_factory=list)


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    """Prompt tokens whose KV came from the prefix cache rather than being computed."""
    scheduled_at: float | None = None
    """Local engine: monotonic seconds when the request's first completion got its first step, the end
    of its wait in the queue (traces split queue time from prefill with it)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Delta:
    """What one engine step produced for one completion of one request."""

    request_id: str
    index: int
    """Which of the request's n completions this belongs to."""
    text: str
    """New text since the last delta; never ends inside a UTF-8 character or a possible stop string."""
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    """"stop", "length" or "abort" on the completion's last delta; None before."""
    stop_reason: str | int | None = None
    """The stop string or token id that ended the completion, when one did."""
    usage: Usage | None = None
    """Set on the request's very last delta, once every completion has finished."""


@dataclass
class UsageRecord:
    """One per finished request; everything that meters, bills or alerts reads these."""

    request_id: str
    tenant: str
    route: str
    deployment: str
    model_version: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    latency_s: float
    outcome: str
    """"ok", "aborted", "error", "rejected", or "cached" (served from a response cache)."""
    cost: float = 0.0
    """USD, from the deployment's prices (every escalated cascade stage included)."""
    policy: str = ""
    """The route's policy ("fixed", "cascade", ...)."""
    cascade_stage: int | None = None
    """Cascade routes: the 1-based stage that answered."""
    degraded: bool = False
    """True when admission sent the request to the route's smaller `degrade_to` target."""
    error_type: str = ""
    """The error's class name when the outcome is "error" or "rejected"."""
    endpoint: str = ""
    """The API path the request came in on ("/v1/chat/completions", "/v1/responses", ...); "" when it
    came another way (a batch, a stream source)."""
    mean_logprob: float | None = None
    """Mean log-probability of the sampled tokens, when they were computed (the client asked for logprobs,
    a cascade stage answered, or telemetry.record_mean_logprob is on); how confident the answer was."""
    finished_at: float = field(default_factory=time.time)
    """Wall-clock (Unix) seconds when the request finished."""
    batch_id: str | None = None
    """The batch the request was a line of; None for online requests."""

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first, or None with fewer than two tokens."""
        if self.ttft_s is None or self.completion_tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.completion_tokens - 1)
