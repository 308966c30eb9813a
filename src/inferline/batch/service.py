"""Batch jobs from creation to their end: validate, check the budget, wait for the start, run, finalize.

One task per unfinished batch drives it through validating -> in_progress -> finalizing -> completed (or
failed, cancelled, expired). Everything it needs to carry on is in the database and the files, so a
restarted server picks every unfinished batch up where the output files say it was (`start`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from inferline.batch.files import FileStore
from inferline.batch.jobs import BatchRecord, BatchStore
from inferline.batch.lines import ENDPOINTS, IndexedLine, LineExecutor, Plan, plan_file
from inferline.batch.runner import LineResult, OutputLog, run_lines
from inferline.batch.schedule import deadline_s, measured, plan_start, window_s
from inferline.config import BatchConfig
from inferline.errors import InvalidRequestError, LimitExceededError
from inferline.router.limits import Limiter, Principal
from inferline.router.request import Caller
from inferline.types import Priority

logger = logging.getLogger(__name__)

RESUME_RETRY_S = 30.0
"""How often a server whose database was down at start tries again to resume unfinished batches."""

PROGRESS_INTERVAL_S = 1.0
"""How often a running batch's request_counts are written to the database."""
MAX_METADATA_PAIRS = 16


class BatchService:
    def __init__(
        self,
        config: BatchConfig,
        files: FileStore,
        store: BatchStore,
        executor: LineExecutor,
        limiter: Limiter,
    ) -> None:
        self.config = config
        self.files = files
        self.store = store
        self.executor = executor
        self.limiter = limiter
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Event] = {}
        self._resuming: asyncio.Task[None] | None = None

    # ---- the API ------------------------------------------------------------------------------

    def create(
        self,
        principal: Principal,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, Any] | None,
    ) -> BatchRecord:
        if endpoint not in ENDPOINTS:
            raise InvalidRequestError(
                f"endpoint {endpoint!r} is not batchable: use one of {', '.join(ENDPOINTS)}", "endpoint"
            )
        metadata = metadata or {}
        if len(metadata) > MAX_METADATA_PAIRS:
            raise InvalidRequestError(
                f"metadata has {len(metadata)} keys; at most {MAX_METADATA_PAIRS}", "metadata"
            )
        input_file = self.files.get(principal.tenant, input_file_id)
        if input_file.purpose != "batch":
            raise InvalidRequestError(
                f"file {input_file_id!r} has purpose {input_file.purpose!r}: upload the "
                "input with purpose 'batch'",
                "input_file_id",
            )
        created = time.time()
        expires_at = created + window_s(completion_window)
        deadline_s(metadata, expires_at)  # a malformed deadline is a 400 now, not a failed batch later
        record = self.store.create(
            tenant=principal.tenant,
            principal={
                "tenant": principal.tenant,
                "key": principal.key,
                "team": principal.team,
                "organisation": principal.organisation,
            },
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            expires_at=expires_at,
            metadata=metadata,
        )
        self._drive(record)
        return record

    def get(self, tenant: str, batch_id: str) -> BatchRecord:
        return self.store.get(tenant, batch_id)

    def page(self, tenant: str, after: str | None, limit: int) -> list[BatchRecord]:
        return self.store.page(tenant, after, limit)

    def cancel(self, tenant: str, batch_id: str) -> BatchRecord:
        record = self.store.get(tenant, batch_id)
        if record.status not in ("validating", "in_progress"):
            if record.status in ("cancelling", "cancelled"):
                return record
            raise InvalidRequestError(
                f"batch {batch_id} is {record.status}: only a validating or in-progress batch can be "
                "cancelled",
                "batch_id",
            )
        record = self.store.update(record, status="cancelling", cancelling_at=time.time())
        stop = self._stops.get(batch_id)
        if stop is not None:
            stop.set()
        return record

    # ---- tasks --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Carry on with every unfinished batch (after a restart: where its output files say it was), in
        the background: a database that is down delays the resume, not the server's start."""
        self._resuming = asyncio.create_task(self._resume(), name="batch resume")

    async def _resume(self) -> None:
        while True:
            try:
                records = await asyncio.to_thread(self.store.unfinished)
            except SQLAlchemyError as error:
                logger.warning(
                    "unfinished batches are not resumed yet (database unavailable: %s); retrying in %.0f s",
                    type(getattr(error, "orig", None) or error).__name__,
                    RESUME_RETRY_S,
                )
                await asyncio.sleep(RESUME_RETRY_S)
                continue
            for record in records:
                self._drive(record)
            return

    async def close(self) -> None:
        """Stop driving; unfinished batches stay as they are and resume on the next start."""
        if self._resuming is not None:
            self._resuming.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _drive(self, record: BatchRecord) -> None:
        self._stops[record.id] = asyncio.Event()
        task = asyncio.create_task(self._run(record), name=f"batch {record.id}")
        self._tasks[record.id] = task

        def forget(_: asyncio.Task[None]) -> None:
            self._tasks.pop(record.id, None)
            self._stops.pop(record.id, None)

        task.add_done_callback(forget)

    async def _run(self, record: BatchRecord) -> None:
        try:
            await self._lifecycle(record)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug, or the database or disk failing: the batch says so
            logger.exception("batch %s failed", record.id)
            current = await asyncio.to_thread(self.store.get, None, record.id)
            await asyncio.to_thread(
                self.store.update,
                current,
                status="failed",
                failed_at=time.time(),
                errors=[
                    {
                        "code": "internal_error",
                        "message": f"{type(error).__name__}: {error}",
                        "param": None,
                        "line": None,
                    }
                ],
            )

    async def _lifecycle(self, record: BatchRecord) -> None:
        stop = self._stops[record.id]
        if record.status != "cancelling":
            await self.executor.wait_ready()
            input_file = await asyncio.to_thread(self.files.get, record.tenant, record.input_file_id)
            plan = await asyncio.to_thread(plan_file, input_file.path, record.endpoint, self.executor)
            if record.status == "validating":
                record = await self._validated(record, plan)
            if record.status == "in_progress" and record.in_progress_at is None:  # waiting for its window
                await _sleep_unless((record.carbon or {}).get("window_start", 0) - time.time(), stop)
                record = await asyncio.to_thread(self._current, record)
                if record.status == "in_progress":
                    record = await asyncio.to_thread(self.store.update, record, in_progress_at=time.time())
            if record.status in ("in_progress", "finalizing"):  # finalizing: the server died finishing it
                await self._execute(record, plan, input_file.path, stop)
                return
        if record.status == "cancelling":
            await self._end(record, "cancelled")

    def _current(self, record: BatchRecord) -> BatchRecord:
        return self.store.get(None, record.id)

    async def _validated(self, record: BatchRecord, plan: Plan) -> BatchRecord:
        """The batch failed (errors naming lines, or over budget), or in progress with its output files."""
        now = time.time()
        if plan.errors:
            return await asyncio.to_thread(
                self.store.update,
                record,
                status="failed",
                failed_at=now,
                errors=plan.errors,
                num_total=len(plan.lines) + len(plan.errors),
            )
        over_quota = self._quota_error(_principal(record).tenant, plan)
        if over_quota is not None:
            return await asyncio.to_thread(
                self.store.update,
                record,
                status="failed",
                failed_at=now,
                errors=[over_quota],
                num_total=len(plan.lines),
            )
        refusal = await self._budget_refusal(_principal(record), plan.cost_usd)
        if refusal is not None:
            error = {
                "code": "budget_exceeded",
                "message": f"the batch's worst case (every line using its "
                f"max_tokens) does not fit: {refusal}",
                "param": None,
                "line": None,
            }
            return await asyncio.to_thread(
                self.store.update,
                record,
                status="failed",
                failed_at=now,
                errors=[error],
                num_total=len(plan.lines),
            )
        model = sorted(plan.models)[0]
        lines_per_s = await asyncio.to_thread(self.store.last_lines_per_s, model)
        start = await plan_start(
            self.config.carbon, record.metadata, len(plan.lines), lines_per_s, now, record.expires_at
        )
        output = await asyncio.to_thread(
            self.files.create, record.tenant, "batch_output", f"{record.id}_output.jsonl"
        )
        errors = await asyncio.to_thread(
            self.files.create, record.tenant, "batch_output", f"{record.id}_error.jsonl"
        )
        current = await asyncio.to_thread(self._current, record)
        status = "cancelling" if current.status == "cancelling" else "in_progress"
        return await asyncio.to_thread(
            self.store.update,
            current,
            status=status,
            model=model,
            num_total=len(plan.lines),
            carbon=start.report,
            output_file_id=output.id,
            error_file_id=errors.id,
            in_progress_at=now if start.at_s <= now else None,
        )

    def _quota_error(self, tenant: str, plan: Plan) -> dict[str, Any] | None:
        """A line that can never pass the tenant's tokens-per-minute quota fails the batch up front: it
        would otherwise wait for a bucket that never holds enough tokens."""
        quota = self.limiter.quotas.get(tenant)
        number, tokens = plan.largest_line
        if quota is None or quota.tokens_per_minute is None or tokens <= quota.tokens_per_minute:
            return None
        return {
            "code": "quota_exceeded",
            "message": f"line {number}: its prompt plus max_tokens ({tokens} tokens) is over tenant "
            f"{tenant!r}'s tokens_per_minute quota of {quota.tokens_per_minute}, so it could never run: "
            "lower the line's max_tokens or raise the quota",
            "param": "max_tokens",
            "line": number,
        }

    async def _budget_refusal(self, principal: Principal, cost_usd: float) -> str | None:
        """Why the tenant's budgets cannot take the batch's worst-case cost now, or None when they can."""
        try:
            admission = await self.limiter.acquire(principal)
        except LimitExceededError:
            return None  # a rate quota, not a budget: the lines wait for it as they run
        try:
            await self.limiter.hold_budget(admission, cost_usd)
        except LimitExceededError as error:
            return str(error)
        finally:
            await self.limiter.finish(admission, 0, 0.0)
        return None

    async def _execute(self, record: BatchRecord, plan: Plan, input_path: Path, stop: asyncio.Event) -> None:
        assert record.output_file_id is not None  # both are set with in_progress
        assert record.error_file_id is not None
        output = await asyncio.to_thread(self.files.get, record.tenant, record.output_file_id)
        errors = await asyncio.to_thread(self.files.get, record.tenant, record.error_file_id)
        log = OutputLog(output.path, errors.path)
        principal = _principal(record)
        expired = asyncio.Event()

        def expire() -> None:
            expired.set()
            stop.set()

        expiry = asyncio.get_running_loop().call_later(max(0.0, record.expires_at - time.time()), expire)

        async def run_line(line: IndexedLine, raw: dict[str, Any]) -> LineResult:
            caller = Caller(
                f"{record.id}-{line.number}",
                principal,
                Priority.BATCH,
                endpoint=record.endpoint,
                batch_id=record.id,
            )
            status, body = await self.executor.run(record.endpoint, raw["body"], caller)
            return LineResult(line.custom_id, status, body, caller.request_id)

        written = time.monotonic()
        num_ran = 0  # by this process: the throughput measured is this run's, not a resumed batch's whole

        def progress(results: list[LineResult]) -> None:
            nonlocal written, num_ran
            num_ran += len(results)
            if time.monotonic() - written >= PROGRESS_INTERVAL_S:
                written = time.monotonic()
                self.store.update(record, num_completed=log.num_completed, num_failed=log.num_failed)

        started, cpu_started = time.monotonic(), time.process_time()
        try:
            await run_lines(
                plan.lines,
                input_path,
                log,
                run_line,
                self.config.max_in_flight_lines or self.executor.window(plan.models),
                stop,
                progress,
            )
        finally:
            expiry.cancel()
        elapsed_s, cpu_s = time.monotonic() - started, time.process_time() - cpu_started
        record = await asyncio.to_thread(self._current, record)
        record = await asyncio.to_thread(
            self.store.update, record, num_completed=log.num_completed, num_failed=log.num_failed
        )
        if record.status == "cancelling":
            await self._end(record, "cancelled")
        elif expired.is_set():
            await self._end(record, "expired")
        else:
            record = await asyncio.to_thread(
                self.store.update, record, status="finalizing", finalizing_at=time.time()
            )
            carbon = (
                None
                if record.carbon is None
                else measured(record.carbon, cpu_s, self.config.carbon.power_watts)
            )
            await asyncio.to_thread(
                self.store.update,
                record,
                status="completed",
                completed_at=time.time(),
                carbon=carbon,
                lines_per_s=num_ran / elapsed_s if num_ran and elapsed_s > 0 else None,
            )

    async def _end(self, record: BatchRecord, status: str) -> None:
        stamp = {"cancelled": "cancelled_at", "expired": "expired_at"}[status]
        await asyncio.to_thread(self.store.update, record, status=status, **{stamp: time.time()})


def _principal(record: BatchRecord) -> Principal:
    given = record.principal
    return Principal(str(given["tenant"]), given.get("key"), given.get("team"), given.get("organisation"))


async def _sleep_unless(seconds: float, stop: asyncio.Event) -> None:
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
