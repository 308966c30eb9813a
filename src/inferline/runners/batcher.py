"""Dynamic batching for runners that compute a whole batch in one call (Triton's semantics).

Design note: callers `await submit(item, num_rows)` on the event loop; one worker thread takes the
waiting items in arrival order and runs `run_batch` on as many as fit in `max_batch_size` rows. A
batch starts as soon as it is full, or once its oldest item has waited `max_queue_delay_us`, so a
lone request pays at most that delay and a burst shares one forward pass. Items are never
reordered: an item that does not fit waits for the next batch rather than letting later ones
overtake it. `run_batch` runs on the worker thread (heavy numpy/torch work releases the GIL, so
the event loop keeps serving), and a batch that raises fails only its own callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from inferline.errors import InferlineError, InvalidRequestError, QueueFullError

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class BatcherClosedError(InferlineError):
    """The batcher is shutting down and takes no new items."""


@dataclass
class BatcherStats:
    queue_depth: int
    """Items waiting for a batch."""
    queued_rows: int
    """Rows of the waiting items."""
    running: int
    """Items in the batch now running."""
    num_batches: int
    """Batches run since start (failed ones included)."""
    mean_batch_size: float
    """Mean rows per batch; 0 before the first batch."""
    mean_batch_s: float
    """Moving average of one batch's run time; 0 before the first batch."""
    estimated_wait_s: float
    """Rough time a new item would wait before its batch starts."""


@dataclass
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    num_rows: int
    enqueued_s: float
    """time.monotonic() when submitted: the batch delay counts from the oldest item's."""
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[ResultT]


class DynamicBatcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        run_batch: Callable[[list[ItemT]], list[ResultT]],
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queued: int,
        name: str = "batcher",
    ) -> None:
        """`run_batch` gets the items of one batch and returns one result per item, in order."""
        if max_batch_size < 1 or max_queue_delay_us < 0 or max_queued < 1:
            raise ValueError(
                f"need max_batch_size >= 1, max_queue_delay_us >= 0 and max_queued >= 1; got "
                f"{max_batch_size}, {max_queue_delay_us} and {max_queued}"
            )
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_us / 1e6
        self.max_queued = max_queued
        self._run_batch = run_batch
        self._cond = threading.Condition()
        self._waiting: deque[_Pending[ItemT, ResultT]] = deque()
        self._running = 0
        self._closed = False
        self._num_batches = 0
        self._num_batched_rows = 0
        self._mean_batch_s = 0.0
        self._thread = threading.Thread(target=self._run, name=f"inferline-{name}", daemon=True)
        self._thread.start()

    # ---- the caller's side --------------------------------------------------------------------

    async def submit(self, item: ItemT, num_rows: int = 1) -> ResultT:
        """Run `item` in the next batch with room for its `num_rows` rows and return its result.

        Raises QueueFullError at once when `max_queued` items are already waiting.
        """
        self._check_rows(num_rows)
        loop = asyncio.get_running_loop()
        pending = _Pending(item, num_rows, time.monotonic(), loop, loop.create_future())
        with self._cond:
            if self._closed:
                raise BatcherClosedError(f"{self.name} is shutting down and takes no new requests")
            if len(self._waiting) >= self.max_queued:
                raise QueueFullError(
                    f"{self.name}: {len(self._waiting)} requests are already waiting "
                    f"(max_queued_requests={self.max_queued}); retry shortly",
                    retry_after_s=max(1.0, self._estimated_wait_s()),
                )
            self._waiting.append(pending)
            self._cond.notify()
        try:
            return await pending.future
        except asyncio.CancelledError:
            with self._cond:  # a caller that gave up before its batch started costs nothing
                if pending in self._waiting:
                    self._waiting.remove(pending)
            raise

    def stats(self) -> BatcherStats:
        with self._cond:
            return BatcherStats(
                queue_depth=len(self._waiting),
                queued_rows=sum(p.num_rows for p in self._waiting),
                running=self._running,
                num_batches=self._num_batches,
                mean_batch_size=self._num_batched_rows / self._num_batches if self._num_batches else 0.0,
                mean_batch_s=self._mean_batch_s,
                estimated_wait_s=self._estimated_wait_s(),
            )

    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def close(self, timeout_s: float = 30.0) -> None:
        """Take no new items, run those already waiting, then stop the worker (blocks; call it from
        a thread, e.g. `await asyncio.to_thread(batcher.close)`)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout_s)

    def _check_rows(self, num_rows: int) -> None:
        if num_rows < 1:
            raise InvalidRequestError(f"{self.name}: a request needs at least one row, got {num_rows}")
        if num_rows > self.max_batch_size:
            raise InvalidRequestError(
                f"{self.name}: a request of {num_rows} rows is larger than max_batch_size "
                f"({self.max_batch_size}); split it into requests of at most {self.max_batch_size} rows "
                "or raise max_batch_size in the deployment config"
            )

    def _estimated_wait_s(self) -> float:
        # Caller holds self._cond. Batches ahead of a new item, each taking about mean_batch_s.
        queued_rows = sum(p.num_rows for p in self._waiting)
        batches_ahead = -(-queued_rows // self.max_batch_size) + (1 if self._running else 0)
        return batches_ahead * self._mean_batch_s

    # ---- the worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._execute(batch)

    def _next_batch(self) -> list[_Pending[ItemT, ResultT]] | None:
        """Block until a batch is due (full, or its oldest item has waited long enough); None once
        closed and drained."""
        with self._cond:
            while True:
                if not self._waiting:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                delay_left_s = self._waiting[0].enqueued_s + self.max_queue_delay_s - time.monotonic()
                if self._closed or delay_left_s <= 0 or self._batch_is_full():
                    break
                self._cond.wait(timeout=delay_left_s)
            batch = self._take_batch()
            self._running = len(batch)
            return batch

    def _batch_is_full(self) -> bool:
        rows = 0
        for pending in self._waiting:
            rows += pending.num_rows
            if rows >= self.max_batch_size:
                return True  # exactly full, or the next item would not fit anyway
        return False

    def _take_batch(self) -> list[_Pending[ItemT, ResultT]]:
        batch, rows = [], 0
        while self._waiting and rows + self._waiting[0].num_rows <= self.max_batch_size:
            pending = self._waiting.popleft()
            rows += pending.num_rows
            batch.append(pending)
        return batch

    def _execute(self, batch: list[_Pending[ItemT, ResultT]]) -> None:
        started_s = time.perf_counter()
        outcomes: list[ResultT] | list[BaseException]
        try:
            outcomes = self._run_batch([p.item for p in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(
                    f"{self.name}: run_batch returned {len(outcomes)} results for {len(batch)}"
                )
        except Exception as error:  # a failed batch fails its callers, never the worker
            if not isinstance(error, InferlineError):
                logger.exception("%s: a batch of %d requests failed", self.name, len(batch))
            outcomes = [error] * len(batch)
        # Stats first, so a caller that reads them after its result sees its own batch counted.
        self._record(batch, time.perf_counter() - started_s)
        for pending, outcome in zip(batch, outcomes, strict=True):
            _deliver(pending, outcome)

    def _record(self, batch: list[_Pending[ItemT, ResultT]], elapsed_s: float) -> None:
        with self._cond:
            self._running = 0
            self._num_batches += 1
            self._num_batched_rows += sum(p.num_rows for p in batch)
            self._mean_batch_s = (
                elapsed_s if self._num_batches == 1 else 0.9 * self._mean_batch_s + 0.1 * elapsed_s
            )


def _deliver(pending: _Pending[ItemT, ResultT], outcome: ResultT | BaseException) -> None:
    def resolve() -> None:
        if pending.future.done():  # the caller was cancelled while its batch ran
            return
        if isinstance(outcome, BaseException):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)

    # RuntimeError: the caller's event loop is closed, so nobody is listening any more.
    with contextlib.suppress(RuntimeError):
        pending.loop.call_soon_threadsafe(resolve)
