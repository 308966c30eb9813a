"""`inferline batch run`: Parquet in and out, and a rerun that resumes after the lines already written."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from inferline.cli import main

from .conftest import CHAT_MODEL


def body(i: int) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": f"Say {i}"}], "max_tokens": 4, "temperature": 0}


def test_parquet_in_parquet_out(tmp_path: Path) -> None:
    rows = [{"custom_id": f"p{i}", "body": json.dumps(body(i))} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    assert main(["batch", "run", str(tmp_path / "in.parquet"), "-o", str(out), "--model", CHAT_MODEL]) == 0
    table = pq.read_table(out).to_pylist()
    assert sorted(r["custom_id"] for r in table) == ["p0", "p1", "p2", "p3"]
    assert all(r["status_code"] == 200 for r in table)
    assert json.loads(table[0]["body"])["object"] == "chat.completion"


def test_rerun_with_the_same_output_resumes(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"custom_id": f"j{i}", "body": body(i)}) + "\n" for i in range(4)))
    out = tmp_path / "out.jsonl"
    earlier = {"custom_id": "j0", "response": {"status_code": 200, "request_id": "earlier", "body": {}}}
    # what an interrupted run left: one whole line and half of the next
    out.write_text(json.dumps(earlier) + "\n" + '{"custom_id": "j1", "respo')
    assert main(["batch", "run", str(source), "-o", str(out), "--model", CHAT_MODEL]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["j0", "j1", "j2", "j3"]
    assert lines[0]["response"]["request_id"] == "earlier"  # not run again
