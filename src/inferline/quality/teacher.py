"""Distillation: exported cases answered again by a stronger "teacher" route, as fine-tuning data.

Each row keeps its lineage and gains the teacher's answer as its `completion`; the answer the served
model gave moves to `lineage.student_completion`, so a reviewer can compare them. The teacher is any
OpenAI-compatible chat route (evaluation.remote_answerer); `system`, when given, is put before each
conversation (a teacher that answers with context the student lacks: the student then learns it).
"""

from __future__ import annotations

from typing import Any

from inferline.quality.evaluation import Answer, Messages


def _messages(prompt: Any) -> Messages:
    if isinstance(prompt, list):
        return [m for m in prompt if isinstance(m, dict)]
    return [{"role": "user", "content": str(prompt or "")}]


def teach(
    rows: list[dict[str, Any]], answer: Answer, teacher: str, system: str | None
) -> list[dict[str, Any]]:
    conversations = [_messages(row.get("prompt")) for row in rows]
    if system is not None:
        conversations = [[{"role": "system", "content": system}, *c] for c in conversations]
    replies = answer(conversations)
    taught = []
    for row, reply in zip(rows, replies, strict=True):
        lineage = {
            **(row.get("lineage") or {}),
            "teacher": teacher,
            "student_completion": row.get("completion"),
        }
        taught.append({**row, "completion": [reply], "lineage": lineage})
    return taught
