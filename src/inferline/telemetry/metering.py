"""The usage writer: records leave the request path through a deque and reach the database in batches.

Design note: `submit` runs on the event loop once per finished request, so it only appends to a deque
under a lock that either side holds for microseconds. One background thread makes every database call:
it wakes every flush_interval_s, or as soon as a batch fills, and writes each batch in one transaction; a
record is kept for good once that transaction commits. When a write fails (disk full, lost connection,
locked file) the batch goes back to the front of the deque and the thread backs off exponentially; the
deque's bound (buffer_max_records) then decides what is lost: the oldest records first, counted. One log
line says the database went away and one that it came back; requests never see any of it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge

from inferline.config import TelemetryConfig
from inferline.db import describe_error
from inferline.telemetry.usage_store import UsageStore
from inferline.types import UsageRecord

logger = logging.getLogger(__name__)


class UsageWriter:
    """`start()`, then `submit(record)` per finished request from any thread, then `close()` once."""

    def __init__(
        self,
        store: UsageStore,
        registry: CollectorRegistry,
        *,
        flush_interval_s: float = 1.0,
        buffer_max_records: int = 100_000,
        batch_max_records: int = 1000,
        max_retry_interval_s: float = 30.0,
        close_timeout_s: float = 30.0,
    ) -> None:
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.buffer_max_records = buffer_max_records
        self.batch_max_records = batch_max_records
        self.max_retry_interval_s = max_retry_interval_s
        self.close_timeout_s = close_timeout_s
        self._pending: deque[UsageRecord] = deque()
        self._num_in_flight = 0
        """Records taken out of `_pending` by a write still running."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="inferline-usage-writer", daemon=True)

        self.buffered = Gauge(
            "inferline_usage_buffered_records",
            "Usage records accepted and not yet committed to the usage database.",
            registry=registry,
        )
        self.buffered.set_function(self._num_buffered)
        self.dropped = Counter(
            "inferline_usage_dropped_records",
            "Usage records lost because the in-memory buffer was full (telemetry.buffer_max_records).",
            registry=registry,
        )
        self.write_failures = Counter(
            "inferline_usage_write_failures",
            "Batches of usage records the database refused (they are retried).",
            registry=registry,
        )
        self.database_up = Gauge(
            "inferline_usage_database_up",
            "1 while the last write to the usage database succeeded, 0 while writes fail.",
            registry=registry,
        )
        self.database_up.set(1)

    @classmethod
    def from_config(
        cls, store: UsageStore, config: TelemetryConfig, registry: CollectorRegistry
    ) -> UsageWriter:
        return cls(
            store,
            registry,
            flush_interval_s=config.flush_interval_s,
            buffer_max_records=config.buffer_max_records,
        )

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: UsageRecord) -> None:
        """O(1), no I/O, never raises: called on the request path."""
        with self._lock:
            if len(self._pending) >= self.buffer_max_records:
                self._pending.popleft()
                self.dropped.inc()
            self._pending.append(record)
            # While the database is failing the buffer stays full: waking then would defeat the backoff.
            full = len(self._pending) >= self.batch_max_records and not self._failing
        if full and not self._wake.is_set():
            self._wake.set()

    def close(self) -> None:
        """Write what is left (one last try) and stop the thread; blocking, so call it off the event loop."""
        self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(self.close_timeout_s)
        elif self._pending:  # never started: write here
            self._write_pending()

    def _num_buffered(self) -> int:
        with self._lock:
            return len(self._pending) + self._num_in_flight

    def _run(self) -> None:
        delay_s = self.flush_interval_s
        while True:
            self._wake.wait(delay_s)
            self._wake.clear()
            closing = self._closing  # read before writing: everything submitted before close() is written
            written = self._write_pending()
            if closing:
                break
            delay_s = self.flush_interval_s if written else min(delay_s * 2, self.max_retry_interval_s)
        if not written:
            logger.error(
                "usage database %s unavailable at shutdown: %d usage records were not written",
                self.store.url,
                len(self._pending),
            )

    def _write_pending(self) -> bool:
        """Every pending record in batches; False at the first batch the database refuses."""
        while batch := self._take_batch():
            try:
                self.store.insert_many(batch)
            except Exception as error:  # whatever the database does, this thread and the requests go on
                self._put_back(batch)
                self._on_failure(error)
                return False
            with self._lock:
                self._num_in_flight = 0
            self._on_success()
        return True

    def _take_batch(self) -> list[UsageRecord]:
        with self._lock:
            batch = [self._pending.popleft() for _ in range(min(self.batch_max_records, len(self._pending)))]
            self._num_in_flight = len(batch)
        return batch

    def _put_back(self, batch: list[UsageRecord]) -> None:
        # The batch is older than anything pending, so when the buffer is full it is what gets dropped.
        with self._lock:
            room = self.buffer_max_records - len(self._pending)
            kept = batch[max(0, len(batch) - room) :] if room > 0 else []
            self._pending.extendleft(reversed(kept))
            self._num_in_flight = 0
        if len(kept) < len(batch):
            self.dropped.inc(len(batch) - len(kept))

    # The gauge changes after the log line, so whoever sees it change finds the line written.
    def _on_failure(self, error: Exception) -> None:
        self.write_failures.inc()
        if not self._failing:
            self._failing = True
            logger.error(
                "usage database %s cannot be written (%s); keeping up to %d usage records in memory "
                "(telemetry.buffer_max_records) and retrying; requests are not affected",
                self.store.url,
                describe_error(error, self.store.engine.url),
                self.buffer_max_records,
            )
        self.database_up.set(0)

    def _on_success(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning(
                "usage database %s is writable again; buffered usage records are being written",
                self.store.url,
            )
        self.database_up.set(1)
