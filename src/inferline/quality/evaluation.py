"""Evaluation: a model's answers to a JSONL dataset, scored by exact match, containment, a regular
expression, and optionally an LLM judge.

Each line of the dataset is one case: `{"prompt": "..."}` or `{"messages": [...]}` with what a good answer
has: `expected` (exact_match; contains, when no `contains` is given), `contains` (a string or a list, all
of which must appear), `pattern` (a regular expression it must match; regex). A metric a case gives nothing
for skips that case. Scores are means in [0, 1] over the cases each metric scored.

The judge is any OpenAI-compatible chat route (a bigger model behind inferline, or a hosted one). It gets
JUDGE_PROMPT with the question, the reference answer and the model's answer, and must reply with one digit
from 1 (wrong) to 5 (as good as the reference); the score is (digit - 1) / 4, and a reply without a digit
scores 0. Greedy decoding, so a rerun gives the same figure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from inferline.errors import InvalidRequestError

METRICS = ("exact_match", "contains", "regex", "judge")
JUDGE_PROMPT = """You grade an assistant's answer against a reference answer.
Question:
{question}

Reference answer:
{reference}

Assistant's answer:
{answer}

Reply with one digit only: 1 = wrong or unrelated, 2 = mostly wrong, 3 = partly right, 4 = right but \
less complete than the reference, 5 = as good as the reference."""

Messages = list[dict[str, Any]]
Answer = Callable[[list[Messages]], list[str]]
"""Conversations -> the model's answer to each."""


@dataclass(frozen=True)
class Case:
    messages: Messages
    expected: str | None = None
    contains: tuple[str, ...] = ()
    pattern: str | None = None

    @property
    def question(self) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.messages if m.get("role") == "user")


@dataclass
class EvalResult:
    scores: dict[str, float]
    """Metric -> mean score in [0, 1]."""
    num_cases: int
    answers: list[str] = field(default_factory=list)
    per_case: list[dict[str, float]] = field(default_factory=list)


def load_cases(path: Path) -> list[Case]:
    """The dataset's cases; an error names the line and the fix."""
    cases = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise InvalidRequestError(f"cannot read dataset {path}: {error}", "dataset") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise InvalidRequestError(f"{path}:{number} is not a JSON object", "dataset") from None
        cases.append(_case(item, f"{path}:{number}"))
    if not cases:
        raise InvalidRequestError(f"dataset {path} has no cases: one JSON object per line", "dataset")
    return cases


def _case(item: Any, where: str) -> Case:
    if not isinstance(item, dict):
        raise InvalidRequestError(f"{where} is not a JSON object", "dataset")
    if isinstance(item.get("messages"), list):
        messages = item["messages"]
    elif isinstance(item.get("prompt"), str):
        messages = [{"role": "user", "content": item["prompt"]}]
    else:
        raise InvalidRequestError(
            f'{where} has neither "prompt" (a string) nor "messages" (a list)', "dataset"
        )
    contains = item.get("contains", ())
    pattern = item.get("pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as error:
            raise InvalidRequestError(
                f"{where}: pattern {pattern!r} does not compile: {error}", "dataset"
            ) from None
    return Case(
        messages,
        item.get("expected"),
        (contains,) if isinstance(contains, str) else tuple(contains),
        pattern,
    )


def parse_metrics(text: str) -> list[str]:
    metrics = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise InvalidRequestError(
            f"--metrics {text!r}: use a comma-separated list of {', '.join(METRICS)}", "metrics"
        )
    return metrics


def _normal(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .!")


def score_case(case: Case, answer: str, metric: str) -> float | None:
    """One case's score in [0, 1] by a rule metric; None when the case gives nothing for it."""
    if metric == "exact_match":
        return None if case.expected is None else float(_normal(answer) == _normal(case.expected))
    if metric == "contains":
        needles = case.contains or ((case.expected,) if case.expected is not None else ())
        return float(all(n.casefold() in answer.casefold() for n in needles)) if needles else None
    if metric == "regex":
        return None if case.pattern is None else float(re.search(case.pattern, answer) is not None)
    raise InvalidRequestError(f"metric {metric!r} is not a rule metric", "metrics")


def evaluate(
    cases: Sequence[Case], answer: Answer, metrics: Sequence[str], judge: Answer | None = None
) -> EvalResult:
    answers = answer([case.messages for case in cases])
    per_case: list[dict[str, float]] = [{} for _ in cases]
    for metric in metrics:
        if metric == "judge":
            continue
        for index, (case, text) in enumerate(zip(cases, answers, strict=True)):
            value = score_case(case, text, metric)
            if value is not None:
                per_case[index][metric] = value
    if "judge" in metrics:
        if judge is None:
            raise InvalidRequestError(
                "the judge metric needs a judge: give --judge-url and --judge-model", "judge"
            )
        judged = [i for i, case in enumerate(cases) if case.expected is not None]
        prompts = [
            [
                {
                    "role": "user",
                    "content": JUDGE_PROMPT.format(
                        question=cases[i].question, reference=cases[i].expected, answer=answers[i]
                    ),
                }
            ]
            for i in judged
        ]
        for i, reply in zip(judged, judge(prompts), strict=True):
            digit = re.search(r"[1-5]", reply)
            per_case[i]["judge"] = (int(digit.group()) - 1) / 4 if digit else 0.0
    scores = {}
    for metric in metrics:
        values = [scored[metric] for scored in per_case if metric in scored]
        if values:
            scores[metric] = round(sum(values) / len(values), 6)
    return EvalResult(scores, len(cases), answers, per_case)


def local_answerer(source: str, max_tokens: int, quantization: str = "auto") -> Answer:
    """Greedy answers from a model loaded here (a store name, a GGUF file, a model or bundle folder), its
    weights quantized as a deployment's `engine.quantization` would (evaluate what will be served)."""
    from inferline.engine.llm import LLM
    from inferline.types import SamplingParams

    llm = LLM(source, quantization=quantization)
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0)

    def answer(conversations: list[Messages]) -> list[str]:
        return [out.outputs[0].text for out in llm.chat(conversations, sampling)]

    return answer


def remote_answerer(base_url: str, model: str, api_key: str | None, max_tokens: int) -> Answer:
    """Greedy answers from an OpenAI-compatible chat route (`base_url` ends in /v1)."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}

    def answer(conversations: list[Messages]) -> list[str]:
        replies = []
        with httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=120) as client:
            for messages in conversations:
                body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
                response = client.post("/chat/completions", json=body)
                response.raise_for_status()
                replies.append(response.json()["choices"][0]["message"]["content"] or "")
        return replies

    return answer
