"""Supervised fine-tuning examples: conversations and the answer to learn, as token ids with the loss on
the answer's tokens only.

A JSONL line is one example, in any of the shapes the loop produces: `{"messages": [..., {"role":
"assistant", "content": ANSWER}]}`; `{"prompt": TEXT_OR_MESSAGES, "completion": TEXT_OR_[TEXT]}` (an
`inferline data export` row, its completion replaced by a teacher's where needed); or an evaluation case
`{"prompt", "expected"}`. The prompt goes through the model's own chat template, so the fine-tuned model
is trained on exactly what it will be served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferline.errors import InvalidRequestError
from inferline.models.tokenizer import Tokenizer

IGNORE = -100
"""Label of a token that is not learned (prompt and padding): cross_entropy's ignore_index."""


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    """IGNORE on the prompt's tokens; the answer's ids (and the end-of-turn id) on the rest."""


def read_examples(path: Path, tokenizer: Tokenizer, max_seq_len: int) -> list[Example]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise InvalidRequestError(f"cannot read dataset {path}: {error}", "dataset") from None
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise InvalidRequestError(f"{path}:{number} is not a JSON object", "dataset") from None
        messages, answer = _conversation(row, f"{path}:{number}")
        examples.append(_tokenize(tokenizer, messages, answer, max_seq_len))
    if not examples:
        raise InvalidRequestError(f"dataset {path} has no examples: one JSON object per line", "dataset")
    return examples


def _conversation(row: Any, where: str) -> tuple[list[dict[str, Any]], str]:
    if not isinstance(row, dict):
        raise InvalidRequestError(f"{where} is not a JSON object", "dataset")
    messages = row.get("messages")
    if isinstance(messages, list) and messages and messages[-1].get("role") == "assistant":
        return messages[:-1], str(messages[-1].get("content") or "")
    prompt = row.get("prompt")
    answer = next((row[key] for key in ("completion", "expected", "response") if row.get(key)), None)
    if isinstance(answer, list):
        answer = answer[0] if answer else None
    if prompt is None or not isinstance(answer, str):
        raise InvalidRequestError(
            f'{where}: give "messages" ending with the assistant\'s answer, or "prompt" with "completion" '
            '(or "expected")',
            "dataset",
        )
    turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
    return turns, answer


def _tokenize(tokenizer: Tokenizer, messages: list[dict[str, Any]], answer: str, max_seq_len: int) -> Example:
    prompt_ids = tokenizer.encode(tokenizer.apply_chat_template(messages), add_special_tokens=False)
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    if tokenizer.eos_token_id is not None:
        answer_ids.append(tokenizer.eos_token_id)  # the model learns to end its turn
    # Long prompts lose their beginning, never the answer being learned.
    prompt_ids = prompt_ids[max(0, len(prompt_ids) + len(answer_ids) - max_seq_len) :]
    answer_ids = answer_ids[:max_seq_len]
    input_ids = (prompt_ids + answer_ids)[:max_seq_len]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_seq_len]
    return Example(input_ids, labels)
