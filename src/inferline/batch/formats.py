"""`inferline batch run`'s files: JSONL or Parquet in, JSONL or Parquet out.

Whatever the input, a run reads one normalised JSONL work file (each line `{"custom_id", "method",
"url", "body"}` with the run's endpoint and model filled in where a line leaves them out), written by
streaming through the input, so the same validation, ordering and resumable runner serve the server and
the command line. Parquet output is written from the finished JSONL, which is what a rerun resumes from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inferline.errors import InvalidRequestError

PARQUET_ROWS_PER_BATCH = 4096


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    if "custom_id" not in source.schema_arrow.names or "body" not in source.schema_arrow.names:
        raise InvalidRequestError(
            f"{path} needs the columns custom_id and body (a JSON string or a struct); it has "
            f"{', '.join(source.schema_arrow.names)}",
            "input",
        )
    for batch in source.iter_batches(batch_size=PARQUET_ROWS_PER_BATCH):
        yield from batch.to_pylist()


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any] | bytes]:
    """Objects, or the raw bytes of a line that is not one (validation reports it by line number)."""
    with path.open("rb") as file:
        for raw in file:
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                yield raw
                continue
            yield row if isinstance(row, dict) else raw


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # validation says the body must be a JSON object, naming the line


def normalise(source: Path, work: Path, endpoint: str, model: str | None) -> None:
    """Write `source` as the run's JSONL work file (replaced whole, never half-written)."""
    rows = _parquet_rows(source) if is_parquet(source) else _jsonl_rows(source)
    partial = work.with_name(work.name + ".partial")
    with partial.open("wb") as out:
        for row in rows:
            if isinstance(row, bytes):
                out.write(row.rstrip(b"\n") + b"\n")
                continue
            body = row.get("body")
            if isinstance(body, str):
                body = _json_or_text(body)
            if isinstance(body, dict) and model is not None:
                body = {**body, "model": model}
            line = {
                "custom_id": row.get("custom_id"),
                "method": row.get("method") or "POST",
                "url": row.get("url") or endpoint,
                "body": body,
            }
            out.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
    os.replace(partial, work)


def write_parquet(results: Path, out: Path) -> int:
    """The JSONL results as Parquet: custom_id, status_code, request_id and the body as JSON text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("custom_id", pa.string()),
            ("status_code", pa.int32()),
            ("request_id", pa.string()),
            ("body", pa.string()),
        ]
    )
    partial = out.with_name(out.name + ".partial")
    num_rows = 0
    with pq.ParquetWriter(partial, schema) as writer, results.open("rb") as file:
        chunk: list[dict[str, Any]] = []
        for raw in file:
            line = json.loads(raw)
            response = line["response"]
            chunk.append(
                {
                    "custom_id": line["custom_id"],
                    "status_code": response["status_code"],
                    "request_id": response["request_id"],
                    "body": json.dumps(response["body"]),
                }
            )
            if len(chunk) == PARQUET_ROWS_PER_BATCH:
                writer.write_batch(pa.RecordBatch.from_pylist(chunk, schema))
                num_rows += len(chunk)
                chunk = []
        if chunk:
            writer.write_batch(pa.RecordBatch.from_pylist(chunk, schema))
            num_rows += len(chunk)
    os.replace(partial, out)
    return num_rows
