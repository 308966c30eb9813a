"""A batch's input file, checked in one streaming pass before anything runs, and the order it runs in.

Every line must be `{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body"}` with a
custom_id of its own and a body the endpoint accepts for a model this server serves, within the model's
context. Errors name their line (1-based) and stop at MAX_ERRORS. What survives is a compact index, a
byte offset and custom_id per line, sorted so lines that share a prompt prefix run side by side (the
prefix cache computes it once) and lengths run together (a step's sequences finish together), plus the
batch's worst-case tokens and cost for the budget check, and its largest line for the quota check.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from inferline.errors import InferlineError, ModelNotFoundError, PromptTooLongError
from inferline.router.request import Caller

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_ERRORS = 100
PREFIX_CHARS = 64
"""How much of a prompt orders lines: enough to bring shared system prompts and few-shot headers
together without keeping whole prompts in the index."""


@dataclass(frozen=True)
class LineCheck:
    """What validation learns of one line."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    """The most the line can generate, over all its completions."""
    cost_usd: float
    """The line's worst-case price on the most expensive deployment that may serve it."""
    prefix: str
    """The start of its prompt text, to order lines sharing it side by side."""


class LineExecutor(Protocol):
    """What a batch needs of the serving side: check a line's body, and run it."""

    async def wait_ready(self) -> None:
        """Return once every model is loaded (lines are checked against the loaded tokenizer)."""

    def check(self, endpoint: str, body: dict[str, Any]) -> LineCheck:
        """Raise InferlineError naming the field when the body cannot run."""
        ...

    def window(self, models: set[str]) -> int:
        """How many lines over `models` to keep in flight when the config does not say."""
        ...

    async def run(self, endpoint: str, body: dict[str, Any], caller: Caller) -> tuple[int, dict[str, Any]]:
        """The HTTP status and body the online endpoint would have answered."""
        ...


@dataclass(frozen=True, slots=True)
class IndexedLine:
    offset: int
    """Byte offset of the line in the input file."""
    number: int
    """1-based line number, for errors and request ids."""
    custom_id: str


@dataclass
class Plan:
    lines: list[IndexedLine] = field(default_factory=list)
    """In run order."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    largest_line: tuple[int, int] = (0, 0)
    """(line number, worst-case prompt + completion tokens) of the line that may use the most."""


def read_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(byte offset, 1-based number, bytes) of every non-blank line, streamed."""
    offset = 0
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            if raw.strip():
                yield offset, number, raw
            offset += len(raw)


def read_line_at(file: Any, offset: int) -> dict[str, Any]:
    file.seek(offset)
    line: dict[str, Any] = json.loads(file.readline())
    return line


def _error(number: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": f"line {number}: {message}", "param": param, "line": number}


def _parse(number: int, raw: bytes, endpoint: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The line's object, or the error that says what is wrong with it."""
    try:
        line = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return None, _error(
            number,
            "invalid_json_line",
            f"not valid JSON ({error.msg if isinstance(error, json.JSONDecodeError) else error.reason})",
        )
    if not isinstance(line, dict):
        return None, _error(number, "invalid_json_line", "must be a JSON object")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return None, _error(number, "missing_custom_id", "custom_id must be a non-empty string", "custom_id")
    if line.get("method", "POST") != "POST":
        return None, _error(
            number, "invalid_method", f"method must be POST; got {line.get('method')!r}", "method"
        )
    if line.get("url") != endpoint:
        message = f"url must be the batch's endpoint {endpoint}; got {line.get('url')!r}"
        return None, _error(number, "invalid_url", message, "url")
    if not isinstance(line.get("body"), dict):
        return None, _error(number, "invalid_body", "body must be a JSON object", "body")
    return line, None


def plan_file(path: Path, endpoint: str, executor: LineExecutor) -> Plan:
    plan = Plan()
    seen: set[str] = set()
    # Sorted on the prefix's hash: equal prefixes end up side by side, and the index stays small.
    keyed: list[tuple[str, int, int, IndexedLine]] = []
    for offset, number, raw in read_lines(path):
        if len(plan.errors) >= MAX_ERRORS:
            break
        line, error = _parse(number, raw, endpoint)
        if line is None:
            plan.errors.append(error)  # type: ignore[arg-type]  # _parse gives one or the other
            continue
        custom_id = line["custom_id"]
        if custom_id in seen:
            plan.errors.append(
                _error(
                    number,
                    "duplicate_custom_id",
                    f"custom_id {custom_id!r} is used by an earlier line: give every line its own",
                    "custom_id",
                )
            )
            continue
        seen.add(custom_id)
        try:
            check = executor.check(endpoint, line["body"])
        except InferlineError as failure:
            code = (
                "model_not_found"
                if isinstance(failure, ModelNotFoundError)
                else "context_length_exceeded"
                if isinstance(failure, PromptTooLongError)
                else "invalid_request"
            )
            plan.errors.append(_error(number, code, str(failure), getattr(failure, "param", None)))
            continue
        plan.models.add(check.model)
        plan.prompt_tokens += check.prompt_tokens
        plan.completion_tokens += check.completion_tokens
        plan.cost_usd += check.cost_usd
        line_tokens = check.prompt_tokens + check.completion_tokens
        if line_tokens > plan.largest_line[1]:
            plan.largest_line = (number, line_tokens)
        line_key = (check.model, hash(check.prefix), check.prompt_tokens)
        keyed.append((*line_key, IndexedLine(offset, number, custom_id)))
    if not keyed and not plan.errors:
        plan.errors.append(_error(0, "empty_file", "the input file has no lines"))
    keyed.sort(key=lambda entry: entry[:3])
    plan.lines = [entry[3] for entry in keyed]
    return plan
