"""The runner with a stand-in for the engine: every line committed once, across stops and resumes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from inferline.batch.lines import LineCheck, plan_file
from inferline.batch.runner import LineResult, OutputLog, run_lines

NUM_LINES = 3000


class SlowLog(OutputLog):
    """Commits that take a while, as on a slow disk: lines keep arriving while one is being written."""

    in_commit = False

    def commit(self, results: list[LineResult]) -> None:
        self.in_commit = True
        time.sleep(0.05)
        super().commit(results)
        self.in_commit = False


class Echo:
    """A LineExecutor whose prompt length is the text's length; run_line below answers at once."""

    async def wait_ready(self) -> None:
        return None

    def check(self, endpoint: str, body: dict[str, Any]) -> LineCheck:
        text = body["messages"][0]["content"]
        return LineCheck(body["model"], len(text), 4, 0.0, text[:8])

    async def run(self, endpoint: str, body: dict[str, Any], caller: Any) -> tuple[int, dict[str, Any]]:
        raise NotImplementedError


def write_input(path: Path) -> None:
    with path.open("w") as file:
        for i in range(NUM_LINES):
            prefix = "shared system prompt" if i % 2 else "another header"
            body = {"model": "m", "messages": [{"role": "user", "content": f"{prefix} {'x' * (i % 7)}"}]}
            line = {"custom_id": f"id{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            file.write(json.dumps(line) + "\n")


def test_lines_run_in_prefix_then_length_order_and_each_is_committed_once(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_input(source)
    plan = plan_file(source, "/v1/chat/completions", Echo())
    assert not plan.errors
    halves = [int(line.custom_id[2:]) % 2 for line in plan.lines]
    assert halves == sorted(halves) or halves == sorted(halves, reverse=True)  # one prefix, then the other
    log = SlowLog(tmp_path / "out.jsonl", tmp_path / "err.jsonl")
    stop = asyncio.Event()
    seen = 0

    async def run_line(line: Any, raw: dict[str, Any]) -> LineResult:
        nonlocal seen
        seen += 1
        if seen == NUM_LINES // 3:
            stop.set()  # as a cancel or a shutdown would, mid-run
        await asyncio.sleep(0)
        status = 400 if int(line.custom_id[2:]) % 100 == 0 else 200
        return LineResult(line.custom_id, status, {"n": line.number}, "r")

    asyncio.run(run_lines(plan.lines, source, log, run_line, 16, stop))
    first = log.num_completed + log.num_failed
    assert 0 < first < NUM_LINES
    resumed = SlowLog(log.output_path, log.error_path)
    remaining = NUM_LINES - first

    async def last_during_a_commit(line: Any, raw: dict[str, Any]) -> LineResult:
        nonlocal remaining
        remaining -= 1
        while remaining == 0 and not resumed.in_commit:  # the last line arrives while one is written
            await asyncio.sleep(0.001)
        return LineResult(line.custom_id, 400 if int(line.custom_id[2:]) % 100 == 0 else 200, {}, "r")

    asyncio.run(run_lines(plan.lines, source, resumed, last_during_a_commit, 16, asyncio.Event()))
    out = [json.loads(x)["custom_id"] for x in log.output_path.read_text().splitlines()]
    err = [json.loads(x)["custom_id"] for x in log.error_path.read_text().splitlines()]
    assert sorted(out + err) == sorted(f"id{i}" for i in range(NUM_LINES))
    assert len(err) == NUM_LINES // 100
    assert (resumed.num_completed, resumed.num_failed) == (len(out), len(err))
