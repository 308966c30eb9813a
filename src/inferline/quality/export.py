"""`inferline data export`: the server's captured requests and the edge fleet's flagged cases as one dataset.

Design note: both halves of the loop end up in the same database (the server's capture tables, and the
registry's telemetry dataset that edge devices upload to), so one export reads both and writes one row
shape: what was asked and answered, why it was kept (`flags`), the feedback it got, and its lineage (where
it came from, which model version answered, through which route decision and prompt template). Edge
devices send their cases as they were; they are redacted here with the server's patterns, so no export
carries a secret either half let through.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from inferline.quality.capture_store import CaptureStore, FeedbackRow
from inferline.quality.redaction import Redactor
from inferline.registry.dataset import Dataset, ExportFormat

COLUMNS = (
    "source",
    "request_id",
    "ts",
    "route",
    "model_version",
    "deployment",
    "tenant",
    "flags",
    "prompt",
    "completion",
    "mean_logprob",
    "outcome",
    "feedback",
    "lineage",
)
JSON_COLUMNS = ("flags", "prompt", "completion", "feedback", "lineage")
"""Nested values: kept as JSON text in Parquet, whose columns need one type."""


def server_rows(
    store: CaptureStore, since: float | None, route: str | None, flag: str | None
) -> list[dict[str, Any]]:
    captured = store.captured(since=since, route=route, flag=flag)
    ratings: dict[str, list[FeedbackRow]] = defaultdict(list)
    for row in store.feedback([c.request_id for c in captured]) if captured else []:
        ratings[row.request_id].append(row)
    return [
        {
            "source": "server",
            "request_id": c.request_id,
            "ts": c.captured_at,
            "route": c.route,
            "model_version": c.model_version,
            "deployment": c.deployment,
            "tenant": c.tenant,
            "flags": c.flags,
            "prompt": c.prompt,
            "completion": c.completion,
            "mean_logprob": c.mean_logprob,
            "outcome": c.outcome,
            "feedback": [
                {"score": f.score, "label": f.label, "comment": f.comment, "created_at": f.created_at}
                for f in ratings[c.request_id]
            ],
            "lineage": {
                "policy": c.policy,
                "cascade_stage": c.cascade_stage,
                "degraded": c.degraded,
                "endpoint": c.endpoint,
                "prompt_template": c.prompt_template,
                "finish_reason": c.finish_reason,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
            },
        }
        for c in captured
    ]


def edge_rows(
    dataset: Dataset, redactor: Redactor, since: float | None, route: str | None, flag: str | None
) -> list[dict[str, Any]]:
    rows = []
    for record in dataset.records(route, since):
        reason = record.payload.get("reason")
        if record.kind != "flagged" or (flag is not None and reason != flag):
            continue
        payload = record.payload
        rows.append(
            {
                "source": "edge",
                "request_id": payload.get("request_id"),
                "ts": record.ts,
                "route": record.model,
                "model_version": record.model_version,
                "deployment": record.model,
                "tenant": None,
                "flags": [reason] if reason else [],
                "prompt": redactor.redact_json(payload.get("prompt")),
                "completion": redactor.redact_json(payload.get("completion", [])),
                "mean_logprob": payload.get("mean_logprob"),
                "outcome": "ok",
                "feedback": [],
                "lineage": {
                    "device_id": record.device_id,
                    "seq": record.seq,
                    "received_at": record.received_at,
                },
            }
        )
    return rows


def write_rows(rows: Iterable[dict[str, Any]], out: Path, fmt: ExportFormat) -> int:
    """Write the rows to `out` (replaced whole, never left half-written); returns how many."""
    ordered = sorted(rows, key=lambda row: (row["ts"], row["source"], str(row["request_id"])))
    partial = out.with_name(f".{out.name}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with partial.open("w", encoding="utf-8") as file:
            for row in ordered:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {name: [row[name] for row in ordered] for name in COLUMNS}
        for name in JSON_COLUMNS:
            columns[name] = [json.dumps(value, ensure_ascii=False) for value in columns[name]]
        pq.write_table(pa.table(columns), partial)
    os.replace(partial, out)
    return len(ordered)
