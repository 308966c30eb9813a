"""`inferline batch run --ray ADDRESS`: the lines on a Ray Data engine actor of the tests' Ray instance, the
output of `inferline batch run`, and a rerun that resumes after the lines already written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.ray_cluster import RayCluster
from tests.server.conftest import BIN

pytestmark = pytest.mark.slow


def body(i: int) -> dict[str, object]:
    return {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": f"Say {i}"}],
        "max_tokens": 4,
        "temperature": 0,
    }


def test_batch_lines_run_on_ray_data_and_resume(tmp_path: Path, ray_cluster: RayCluster) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"custom_id": f"j{i}", "body": body(i)}) + "\n" for i in range(6)))
    out = tmp_path / "out.jsonl"
    earlier = {"custom_id": "j0", "response": {"status_code": 200, "request_id": "earlier", "body": {}}}
    # what an interrupted run left: one whole line and half of the next
    out.write_text(json.dumps(earlier) + "\n" + '{"custom_id": "j1", "respo')
    command = [str(BIN), "batch", "run", str(source), "-o", str(out), "--ray", ray_cluster.address]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["j0", "j1", "j2", "j3", "j4", "j5"]  # each once
    assert lines[0]["response"]["request_id"] == "earlier"  # not run again
    answers = [line["response"] for line in lines[1:]]  # the rest in the plan's order
    assert all(a["status_code"] == 200 for a in answers)
    assert all(a["body"]["object"] == "chat.completion" and a["body"]["choices"] for a in answers)
    assert "5 lines answered" in done.stderr or "6 lines answered" in done.stderr
