"""One stream worker: gather a batch, score it, write results and dead letters, then acknowledge.

Design note: the order of the last three steps is the whole guarantee. Results and dead letters are in
their sinks before the source hears `ack`; a worker killed anywhere before the ack leaves its messages
pending, another worker (or this one, restarted) gets them again, and the sinks drop the second write of
a message id: at least once in, one result per message out.

The write and ack of one batch overlap the gathering and scoring of the next (their round trips are
off the next batch's path), and a batch is written only once the one before it is acknowledged. So a
worker holds two batches at most: a model that cannot keep up slows consumption (the messages wait in
the broker, where they are safe) rather than piling up in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from inferline.config import StreamConfig
from inferline.router.router import Router
from inferline.streams.message import Message, Output, Sink, Source
from inferline.streams.metrics import StreamMetrics
from inferline.streams.scoring import BadPayloadError, Observe, Scored, Scorer, decode_payload

logger = logging.getLogger(__name__)

POLL_S = 1.0
"""Longest a fetch waits for a first message: how soon an idle worker notices it is stopped."""
LAG_INTERVAL_S = 1.0
"""How often the source's lag is read for the metric and /admin."""
READY_POLL_S = 0.2
MAX_BACKOFF_S = 10.0


@dataclass(frozen=True)
class ScoredBatch:
    """A batch once scored: what to write, to dead-letter and to try again."""

    num_messages: int
    processed: list[tuple[Message, dict[str, Any]]]
    """The messages with a result, and the result."""
    retry: list[Message]
    """Scoring failed; delivered again later."""
    dead: list[tuple[Message, str]]
    """Poison messages and why."""


@dataclass
class WorkerState:
    """What /admin/streams shows of a worker."""

    state: str = "starting"
    """starting, waiting for model, running, backing off (the broker or sink failed), stopped."""
    num_processed: int = 0
    num_failed: int = 0
    num_dead_lettered: int = 0
    lag: int | None = None
    last_batch_size: int = 0
    last_error: str | None = None


class StreamWorker:
    def __init__(
        self,
        config: StreamConfig,
        router: Router,
        source: Source,
        sink: Sink,
        metrics: StreamMetrics,
        allow_failed: bool = False,
        observe: Observe | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.source = source
        self.sink = sink
        self.dead_letters = source.dead_letter_sink()
        self.scorer = Scorer(config, router, observe)
        self.metrics = metrics
        self.allow_failed = allow_failed
        self.status = WorkerState()
        self._finishing: asyncio.Task[None] | None = None
        """The last batch's write and ack, while the next batch is gathered and scored."""

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "source": self.source.description,
            "model": self.config.model,
            "task": self.config.task,
            "priority": self.config.priority,
            **vars(self.status),
        }

    async def run(self) -> None:
        """Until cancelled; a failing broker or sink is retried with back-off."""
        backoff_s = 0.5
        opened = False
        watching: asyncio.Task[None] | None = None
        this_task = asyncio.current_task()
        try:
            # A cancel that something swallowed (asyncio.wait_for on 3.11 did) still stops the worker.
            while this_task is None or not this_task.cancelling():
                try:
                    if not opened:
                        await self._open()
                        opened = True
                        watching = asyncio.create_task(self._watch_lag())
                    await self._step()
                    backoff_s = 0.5
                except Exception as error:  # Redis, NATS or the database down: wait and go on
                    self.status.state = "backing off"
                    self.status.last_error = f"{type(error).__name__}: {error}"
                    logger.warning("stream %s: %s; retrying in %.1f s", self.config.name, error, backoff_s)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(MAX_BACKOFF_S, backoff_s * 2)
        finally:
            self.status.state = "stopped"
            # A batch being written when stopped is not acknowledged: it is delivered again.
            for task in (watching, self._finishing):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            for closing in (self.source, self.sink, self.dead_letters):
                try:
                    await closing.close()
                except Exception as error:
                    logger.warning("stream %s: closing failed: %s", self.config.name, error)

    async def _open(self) -> None:
        await self.source.open()
        await self.sink.open()
        await self.dead_letters.open()
        self.status.state = "waiting for model"
        while not self.router.pool.is_ready(self.allow_failed):
            await asyncio.sleep(READY_POLL_S)
        self.status.state = "running"

    async def _step(self) -> None:
        batch = await self._gather()
        scored = await self._score(batch) if batch else None
        if self._finishing is not None and (scored is not None or self._finishing.done()):
            # A failure to write or ack the batch before stops this one too: both are delivered again.
            finishing, self._finishing = self._finishing, None
            await finishing
        if scored is not None:
            self._finishing = asyncio.create_task(self._finish(scored))
            self.status.state = "running"

    async def _gather(self) -> list[Message]:
        """The first message(s), then more for up to max_wait_ms, until max_batch_size."""
        limit = self.config.max_batch_size
        batch = await self.source.fetch(limit, POLL_S)
        if not batch:
            return batch
        deadline = time.monotonic() + self.config.max_wait_ms / 1000
        while len(batch) < limit:
            left_s = deadline - time.monotonic()
            if left_s < 0.001:
                break
            batch += await self.source.fetch(limit - len(batch), left_s)
        return batch

    async def _score(self, batch: list[Message]) -> ScoredBatch:
        config = self.config
        dead: list[tuple[Message, str]] = []
        todo: list[tuple[Message, Any]] = []
        for message in batch:
            if message.num_deliveries > config.max_deliveries:
                # A message that stops (kills) the worker scoring it never reaches the failure count.
                reason = f"delivered {message.num_deliveries} times without a result"
                dead.append((message, reason))
                continue
            try:
                todo.append((message, decode_payload(message.data)))
            except BadPayloadError as error:
                dead.append((message, f"bad payload: {error}"))
        scored = await self.scorer.score([payload for _, payload in todo])
        processed, retry = self._sort(todo, scored, dead)
        return ScoredBatch(len(batch), processed, retry, dead)

    async def _finish(self, batch: ScoredBatch) -> None:
        """Results and dead letters written, then acknowledged: the order that makes the guarantee."""
        await self.sink.write([self._result(m, result) for m, result in batch.processed])
        await self.dead_letters.write([self._dead_letter(m, reason) for m, reason in batch.dead])
        written_s = time.time()
        await self.source.ack([m for m, _ in batch.processed] + [m for m, _ in batch.dead])
        await self.source.retry_later(batch.retry)
        processed = [m for m, _ in batch.processed]
        self._count(batch.num_messages, processed, len(batch.retry), len(batch.dead), written_s)

    def _sort(
        self, todo: list[tuple[Message, Any]], scored: list[Scored], dead: list[tuple[Message, str]]
    ) -> tuple[list[tuple[Message, dict[str, Any]]], list[Message]]:
        """The messages with a result, and those to try again; dead letters are added to `dead`."""
        processed: list[tuple[Message, dict[str, Any]]] = []
        retry: list[Message] = []
        for (message, _), outcome in zip(todo, scored, strict=True):
            if outcome.result is not None:
                processed.append((message, outcome.result))
            elif outcome.bad_payload or message.num_deliveries >= self.config.max_deliveries:
                dead.append((message, f"{outcome.error} (delivery {message.num_deliveries})"))
            else:
                logger.info("stream %s: message %s failed: %s", self.config.name, message.id, outcome.error)
                self.status.last_error = f"message {message.id}: {outcome.error}"
                retry.append(message)
        return processed, retry

    def _result(self, message: Message, result: dict[str, Any]) -> Output:
        fields = {"id": message.id, "result": json.dumps(result, separators=(",", ":"))}
        return Output(self.config.name, message.id, fields)

    def _dead_letter(self, message: Message, reason: str) -> Output:
        fields = {
            "id": message.id,
            "reason": reason,
            "deliveries": str(message.num_deliveries),
            "data": message.data.decode("utf-8", errors="replace"),
            "stream": self.config.name,
        }
        return Output(self.config.name, message.id, fields)

    def _count(
        self, batch_size: int, processed: list[Message], num_failed: int, num_dead: int, written_s: float
    ) -> None:
        name = self.config.name
        latency = self.metrics.latency.labels(name)
        for message in processed:
            latency.observe(max(0.0, written_s - message.published_s))
        self.metrics.messages.labels(name, "processed").inc(len(processed))
        self.metrics.messages.labels(name, "failed").inc(num_failed)
        self.metrics.messages.labels(name, "dead_lettered").inc(num_dead)
        self.metrics.batch_size.labels(name).observe(batch_size)
        self.status.num_processed += len(processed)
        self.status.num_failed += num_failed
        self.status.num_dead_lettered += num_dead
        self.status.last_batch_size = batch_size

    async def _watch_lag(self) -> None:
        gauge = self.metrics.lag.labels(self.config.name)
        while True:
            try:
                self.status.lag = await self.source.lag()
                if self.status.lag is not None:
                    gauge.set(self.status.lag)
            except Exception as error:  # the run loop reports the broker's failures
                logger.debug("stream %s: lag unavailable: %s", self.config.name, error)
            await asyncio.sleep(LAG_INTERVAL_S)
