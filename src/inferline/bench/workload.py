"""What the benchmark sends: synthetic prompts of chosen lengths, or the prompts of a JSONL dataset.

Synthetic prompt text is random words from a fixed list of common English words, each one token with
its leading space in the BPE tokenizers of the Llama, SmolLM and GPT families: a prompt of n words is
close to n tokens on such a server without the client loading any tokenizer. The exact count comes
back in the server's usage, and that is what the report uses.

Lengths come from a generator seeded by `seed` alone and words from one seeded by (seed, salt): each
load point gets fresh words (so no point reuses the prefix cache the previous one filled) with the
same lengths.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from inferline.errors import InvalidRequestError

Endpoint = Literal["completions", "chat"]
Message = dict[str, str]

_WORD_LIST = """
    the of and to in is was for on that with as by at from his her it an were are which this be or has
    had not but first one their its new after who they have two been other when there all during into
    school time may years more most only over city some world would where later up such used many can
    state about national out known university united then made year under while part three well both
    between american season including these high group before family game south north through
    population film century team series back however against public since last being water name life
    war each long town people house music river area party history work book example village
    government market system way number point home place light country power line form days law main
    order field death early play road region island land building church army forest station
"""
WORDS = tuple(_WORD_LIST.split())


@dataclass(frozen=True)
class BenchRequest:
    """One request of the workload, in the shape of either endpoint."""

    prompt: str | None
    """Completions: the prompt text (None when the request is a conversation)."""
    messages: list[Message] | None
    """Chat: the conversation (None when the request is a plain prompt)."""
    max_tokens: int | None
    """Output tokens to ask for; None leaves the limit to the server."""

    def chat_messages(self) -> list[Message]:
        return (
            self.messages if self.messages is not None else [{"role": "user", "content": self.prompt or ""}]
        )


@dataclass(frozen=True)
class SyntheticSpec:
    input_len: int
    """Target prompt length in tokens (words)."""
    output_len: int
    """Output tokens asked for (exact with ignore_eos)."""
    len_jitter: float
    """Lengths are uniform in [len * (1 - jitter), len * (1 + jitter)]."""
    seed: int


def length_bounds(length: int, jitter: float) -> tuple[int, int]:
    """The inclusive range lengths are drawn from; never below one."""
    return max(1, round(length * (1 - jitter))), max(1, round(length * (1 + jitter)))


def sample_lengths(length: int, jitter: float, num: int, rng: np.random.Generator) -> list[int]:
    low, high = length_bounds(length, jitter)
    return rng.integers(low, high + 1, size=num).tolist()


def synthetic_requests(spec: SyntheticSpec, num: int, salt: int = 0) -> list[BenchRequest]:
    """`num` prompts of random words; the same spec and salt give the same requests."""
    lengths_rng = np.random.default_rng(spec.seed)
    input_lens = sample_lengths(spec.input_len, spec.len_jitter, num, lengths_rng)
    output_lens = sample_lengths(spec.output_len, spec.len_jitter, num, lengths_rng)
    words_rng = np.random.default_rng([spec.seed, salt])
    return [
        BenchRequest(" ".join(WORDS[i] for i in words_rng.integers(0, len(WORDS), size=n)), None, out)
        for n, out in zip(input_lens, output_lens, strict=True)
    ]


def load_dataset(path: Path, default_max_tokens: int | None) -> list[BenchRequest]:
    """Lines `{"prompt": "..."}` or `{"messages": [...]}`, each with an optional `"max_tokens"`.

    Blank lines are skipped; any other line that is not such an object is an error naming the line.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidRequestError(f"--dataset: cannot read {path}: {error}", "dataset") from None
    requests = [
        _parse_line(path, number, line, default_max_tokens)
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]
    if not requests:
        raise InvalidRequestError(f"--dataset: {path} has no requests (one JSON object per line)", "dataset")
    return requests


def _parse_line(path: Path, number: int, line: str, default_max_tokens: int | None) -> BenchRequest:
    where = f"{path}:{number}"
    try:
        item: Any = json.loads(line)
    except json.JSONDecodeError as error:
        raise InvalidRequestError(f"{where}: not valid JSON ({error.msg})", "dataset") from None
    if not isinstance(item, dict) or ("prompt" in item) == ("messages" in item):
        raise InvalidRequestError(
            f'{where}: expected an object with "prompt" (a string) or "messages" (a list), not both',
            "dataset",
        )
    max_tokens = item.get("max_tokens", default_max_tokens)
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise InvalidRequestError(
            f'{where}: "max_tokens" must be a positive integer; got {max_tokens!r}', "dataset"
        )
    if "prompt" in item:
        if not isinstance(item["prompt"], str) or not item["prompt"]:
            raise InvalidRequestError(f'{where}: "prompt" must be a non-empty string', "dataset")
        return BenchRequest(item["prompt"], None, max_tokens)
    return BenchRequest(None, _messages(where, item["messages"]), max_tokens)


def _messages(where: str, messages: Any) -> list[Message]:
    valid = (
        isinstance(messages, list)
        and messages
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    )
    if not valid:
        raise InvalidRequestError(
            f'{where}: "messages" must be a non-empty list of {{"role": ..., "content": ...}} strings',
            "dataset",
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def check_endpoint(requests: list[BenchRequest], endpoint: Endpoint) -> None:
    """Conversations need the chat endpoint; plain prompts go to either."""
    if endpoint == "completions" and any(r.messages is not None for r in requests):
        raise InvalidRequestError('the dataset has "messages" lines: run it with --endpoint chat', "endpoint")


def take(requests: list[BenchRequest], num: int) -> list[BenchRequest]:
    """The first `num` requests, cycling through the list when it is shorter."""
    return [requests[i % len(requests)] for i in range(num)]
