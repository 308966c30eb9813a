"""The edge agent's telemetry outbox: a bounded on-disk queue of usage records and flagged cases, and the
uploader that drains it into the registry's dataset.

Design note: the queue is one SQLite file in WAL mode with `synchronous=FULL`, so an `append` that returned
is on disk and survives a crash or power loss. Records leave the queue only after the registry acknowledged
the batch holding them (at-least-once); each carries the id (device_id, seq) under which the registry
stores it once, so a batch re-sent after a lost acknowledgement adds nothing (no loss, no duplicates).
When the queue is full the oldest records are dropped and counted; the running total is kept in the same
file and sent with every upload. Sequence numbers start from the clock when the file is created, so a
device whose queue file was deleted does not reuse ids the registry already holds. An `append` waits for
that fsync, so the agent's event loop hands records to an `OutboxWriter` instead: one thread appends them
in the order they came, and a record is on disk a moment later (what a crash in that moment loses).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from inferline.errors import InferlineError
from inferline.registry.dataset import MAX_BATCH_RECORDS, RECORD_KINDS, UploadedRecord
from inferline.registry.tuf_serve import TELEMETRY_PATH

logger = logging.getLogger(__name__)

# Columns of the upload itself; a record's own copy of them would be ambiguous.
_RESERVED_FIELDS = ("seq", "device_id")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


class OutboxError(InferlineError):
    """A record cannot be queued (wrong fields) or the queue file cannot be opened."""


@dataclass(frozen=True)
class OutboxBatch:
    """The oldest queued records, ready to upload; `remove(batch)` once the registry acknowledged it."""

    records: list[dict[str, Any]]
    """Each record with its `seq`, oldest first."""
    num_dropped: int
    """Records this queue dropped for lack of room, since it was created."""

    @property
    def last_seq(self) -> int | None:
        return self.records[-1]["seq"] if self.records else None


class Outbox:
    """At most `max_records` records in the SQLite file `path`; safe to share between threads."""

    def __init__(self, path: Path, max_records: int) -> None:
        if max_records < 1:
            raise OutboxError(f"max_records={max_records}: the outbox must hold at least 1 record")
        self.path = path
        self.max_records = max_records
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is fsync'ed before it returns, which is what makes `append` durable.
            self._db.execute("PRAGMA synchronous=FULL")
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._db.execute(
                    "INSERT INTO sqlite_sequence (name, seq) SELECT 'records', ? "
                    "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'records')",
                    (time.time_ns() // 1000,),
                )
        except (sqlite3.Error, OSError) as error:
            raise OutboxError(
                f"cannot open the telemetry outbox {path} ({error}): check the path is writable, or remove "
                "a corrupt file (its queued records are lost)"
            ) from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, record: dict[str, Any]) -> None:
        """Queue one record ({"kind": "usage"|"flagged", "model", "model_version", "ts", ...}); it is on
        disk when this returns. A full queue drops its oldest record first."""
        try:
            # The registry's own schema: a record queued here is one the registry will accept.
            UploadedRecord.model_validate({**record, "seq": 0})
            body = json.dumps({k: v for k, v in record.items() if k not in _RESERVED_FIELDS})
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise OutboxError(
                f"telemetry record field {where!r}: {first['msg']}; every record needs kind "
                f"({' or '.join(RECORD_KINDS)}), model, model_version and ts (Unix seconds)"
            ) from None
        except (TypeError, ValueError) as error:
            raise OutboxError(
                f"telemetry record is not JSON-serialisable ({error}): send plain values"
            ) from None
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO records (body) VALUES (?)", (body,))
            (num_queued,) = self._db.execute("SELECT count(*) FROM records").fetchone()
            excess = num_queued - self.max_records
            if excess > 0:
                self._db.execute(
                    "DELETE FROM records WHERE seq IN (SELECT seq FROM records ORDER BY seq LIMIT ?)",
                    (excess,),
                )
                self._db.execute(
                    "INSERT INTO counters (name, value) VALUES ('num_dropped', ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                    (excess,),
                )

    def __len__(self) -> int:
        with self._lock:
            (num_queued,) = self._db.execute("SELECT count(*) FROM records").fetchone()
        return int(num_queued)

    @property
    def num_dropped(self) -> int:
        with self._lock:
            return self._num_dropped()

    def _num_dropped(self) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = 'num_dropped'").fetchone()
        return 0 if row is None else int(row[0])

    def peek(self, max_records: int) -> OutboxBatch:
        """The oldest `max_records` queued records, left in the queue."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body FROM records ORDER BY seq LIMIT ?", (max_records,)
            ).fetchall()
            records = [{**json.loads(body), "seq": seq} for seq, body in rows]
            return OutboxBatch(records=records, num_dropped=self._num_dropped())

    def remove(self, batch: OutboxBatch) -> None:
        """Forget an acknowledged batch (records dropped meanwhile are already gone)."""
        if batch.last_seq is None:
            return
        with self._lock, self._db:
            self._db.execute("DELETE FROM records WHERE seq <= ?", (batch.last_seq,))


class OutboxWriter:
    """Appends to `outbox` from one background thread, in the order records were submitted; `close()` once
    at the end waits until every submitted record is on disk."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        # One worker keeps the order: the queue's seq numbers follow the order of submission.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telemetry-outbox")

    def submit(self, record: dict[str, Any]) -> Future[None]:
        """Queue `record` without waiting on the disk; the future is done once it is appended. A record the
        outbox refuses (or a database error) is logged, and raised by the future."""
        future = self._executor.submit(self.outbox.append, record)
        future.add_done_callback(_log_refusal)
        return future

    def close(self) -> None:
        """Append everything submitted, then stop the thread; blocking, so call it off the event loop."""
        self._executor.shutdown(wait=True)


def _log_refusal(future: Future[None]) -> None:
    error = future.exception()
    if error is not None:
        logger.error("telemetry record not queued: %s", error)


class Uploader:
    """Drains `outbox` into the registry at `registry_url` in batches: `upload_once()` now, or every
    `interval_s` in a background thread (`start()` / `stop()`)."""

    def __init__(
        self,
        outbox: Outbox,
        registry_url: str,
        device_id: str,
        *,
        batch_size: int = 500,
        interval_s: float = 10.0,
        timeout_s: float = 10.0,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_RECORDS:
            raise OutboxError(f"batch_size={batch_size}: use 1 to {MAX_BATCH_RECORDS} records per upload")
        self.outbox = outbox
        self.url = registry_url.rstrip("/") + TELEMETRY_PATH
        self.device_id = device_id
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.last_error: str | None = None
        """Why the latest upload failed (registry unreachable, refused); None after a success."""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def upload_once(self) -> int:
        """Upload until the queue is empty or the registry fails; returns the records acknowledged. A
        registry that is down is expected at the edge: the records stay queued and `last_error` says why."""
        num_uploaded = 0
        while True:
            batch = self.outbox.peek(self.batch_size)
            if not batch.records:
                return num_uploaded
            try:
                self._send(batch)
            except (urllib.error.URLError, HTTPException, OSError) as error:
                self.last_error = f"telemetry upload to {self.url} failed: {_describe(error)}"
                logger.warning("%s; %d record(s) stay queued", self.last_error, len(self.outbox))
                return num_uploaded
            self.outbox.remove(batch)
            self.last_error = None
            num_uploaded += len(batch.records)

    def _send(self, batch: OutboxBatch) -> None:
        body = {"device_id": self.device_id, "num_dropped": batch.num_dropped, "records": batch.records}
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            response.read()  # a 2xx status is the acknowledgement; urlopen raises on any other

    def start(self) -> None:
        """Upload every `interval_s` in a daemon thread until `stop()`."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="telemetry-uploader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.upload_once()
            self._stopping.wait(self.interval_s)

    def stop(self) -> None:
        """Stop the thread after its current upload (queued records stay on disk for the next start)."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join()
        self._thread = None


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        detail = error.read().decode(errors="replace").strip()
        error.close()
        return f"HTTP {error.code} {detail}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}"
