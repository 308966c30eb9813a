"""Running a batch's lines: a bounded window of lines in flight, results committed to the output files.

Design note: what is done is what the output and error files hold. Results are appended as whole lines
and fsync'd in groups (one fsync per commit, not per line); a line whose result was not committed when
the process died simply runs again, and one that was is never run again, so each custom_id appears
exactly once. A process killed mid-write leaves at most one partial last line, which `recover` cuts off.
The window (max_in_flight) keeps the engine's decode slots full without handing it the whole file: the
input is read line by line at the index's offsets, so memory does not grow with the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferline.batch.files import complete_size
from inferline.batch.lines import IndexedLine, read_line_at

COMMIT_INTERVAL_S = 0.2
"""Longest a finished line waits to be committed: a crash re-runs at most this much work."""


@dataclass(frozen=True)
class LineResult:
    custom_id: str
    status_code: int
    body: dict[str, Any]
    request_id: str

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def completion_tokens(self) -> int:
        usage = self.body.get("usage") or {}
        return int(usage.get("completion_tokens") or 0)

    def to_json(self) -> bytes:
        line = {
            "id": f"batch_req_{secrets.token_hex(12)}",
            "custom_id": self.custom_id,
            "response": {"status_code": self.status_code, "request_id": self.request_id, "body": self.body},
            "error": None,
        }
        return json.dumps(line, separators=(",", ":")).encode() + b"\n"


class OutputLog:
    """A batch's output file (answered lines) and error file (refused or failed ones)."""

    def __init__(self, output_path: Path, error_path: Path) -> None:
        self.output_path = output_path
        self.error_path = error_path
        self.num_completed = 0
        self.num_failed = 0

    def recover(self) -> set[str]:
        """Cut off a partial last line a crash left, count what is there, and return its custom_ids."""
        done: set[str] = set()
        for path, ok in ((self.output_path, True), (self.error_path, False)):
            path.touch()
            with path.open("r+b") as file:
                file.truncate(complete_size(path))
                for raw in file:
                    done.add(json.loads(raw)["custom_id"])
                    self.num_completed += ok
                    self.num_failed += not ok
        return done

    def commit(self, results: list[LineResult]) -> None:
        """Append and fsync (blocking: call it off the event loop)."""
        for path, ok in ((self.output_path, True), (self.error_path, False)):
            chosen = [r for r in results if r.ok == ok]
            if chosen:
                with path.open("ab") as file:
                    file.write(b"".join(r.to_json() for r in chosen))
                    file.flush()
                    os.fsync(file.fileno())
        self.num_completed += sum(r.ok for r in results)
        self.num_failed += sum(not r.ok for r in results)


RunLine = Callable[[IndexedLine, dict[str, Any]], Awaitable[LineResult]]


async def run_lines(
    lines: list[IndexedLine],
    input_path: Path,
    log: OutputLog,
    run_line: RunLine,
    max_in_flight: int,
    stop: asyncio.Event,
    on_commit: Callable[[list[LineResult]], None] | None = None,
) -> None:
    """Run every line of `lines` not already in `log` (recover it first), until done or `stop` is set;
    lines in flight when it is set are aborted and run again if the batch is resumed."""
    done = log.recover()
    pending: list[LineResult] = []
    finished = asyncio.Event()

    async def committer() -> None:
        # The one writer, never cancelled mid-write. Nothing is delivered once `finished` is set, so the
        # commit that follows seeing it set is the last one and holds everything.
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(COMMIT_INTERVAL_S):
                    await finished.wait()
            last = finished.is_set()
            if pending:
                results = pending[:]
                del pending[:]
                await asyncio.to_thread(log.commit, results)
                if on_commit is not None:
                    on_commit(results)
            if last:
                return

    committing = asyncio.create_task(committer())
    try:
        todo = [line for line in lines if line.custom_id not in done]
        await _feed(todo, input_path, run_line, pending.append, max_in_flight, stop)
    finally:
        finished.set()
        await committing


async def _feed(
    lines: list[IndexedLine],
    input_path: Path,
    run_line: RunLine,
    deliver: Callable[[LineResult], None],
    max_in_flight: int,
    stop: asyncio.Event,
) -> None:
    """`max_in_flight` workers take the lines in order until all are delivered or `stop` is set; lines
    in flight then are aborted (cancelling a line's task aborts its engine request)."""
    todo = iter(lines)  # shared: each line is taken by one worker

    with input_path.open("rb") as file:

        async def worker() -> None:
            for line in todo:
                deliver(await run_line(line, read_line_at(file, line.offset)))

        workers = [asyncio.create_task(worker()) for _ in range(max_in_flight)]
        everything = asyncio.gather(*workers)
        stopping = asyncio.create_task(stop.wait())
        try:
            either: list[asyncio.Future[Any]] = [everything, stopping]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if everything.done():
                everything.result()  # a line that raised (a bug: the executor answers errors as statuses)
        finally:
            stopping.cancel()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            everything.cancel()
