"""The stream workers of a config: built from `streams:`, run as tasks beside the server (or alone, by
`inferline stream run`), stopped with it. Messages in flight when they stop stay unacknowledged and are
delivered again; their results are written once."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from inferline.config import (
    NatsSinkConfig,
    NatsSourceConfig,
    RedisSinkConfig,
    ServerConfig,
    SinkConfig,
    SourceConfig,
)
from inferline.db import database_url
from inferline.errors import needs_extra
from inferline.router.router import Router
from inferline.streams.database_sink import DatabaseSink
from inferline.streams.message import Sink, Source
from inferline.streams.metrics import StreamMetrics
from inferline.streams.scoring import Observe
from inferline.streams.worker import StreamWorker

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 10.0
"""How long close() waits for cancelled workers before it goes on without them (a worker also stops at the
end of a step whose cancellation a library swallowed: StreamWorker.run)."""


def open_source(config: SourceConfig) -> Source:
    if isinstance(config, NatsSourceConfig):
        with needs_extra("streams", "nats", f"the NATS source of stream {config.stream!r}"):
            from inferline.streams.nats_streams import NatsSource

        return NatsSource(config)
    from inferline.streams.redis_streams import RedisSource  # the client: 0.07 s a start without streams

    return RedisSource(config)


def open_sink(config: SinkConfig, server: ServerConfig, home: Path) -> Sink:
    if isinstance(config, NatsSinkConfig):
        with needs_extra("streams", "nats", f"the NATS sink of stream {config.stream!r}"):
            from inferline.streams.nats_streams import NatsSink

        return NatsSink(config)
    if isinstance(config, RedisSinkConfig):
        from inferline.streams.redis_streams import RedisSink

        return RedisSink(config)
    return DatabaseSink(database_url(config.database_url or server.telemetry.database_url, home))


class StreamWorkers:
    def __init__(
        self,
        config: ServerConfig,
        router: Router,
        registry: CollectorRegistry,
        home: Path,
        observe: Observe | None = None,
    ) -> None:
        """`observe`: the quality loop's hook for each model call (streams/scoring.py)."""
        metrics = StreamMetrics(registry)
        allow_failed = config.on_load_failure == "serve_rest"
        self.workers = [
            StreamWorker(
                stream,
                router,
                open_source(stream.source),
                open_sink(stream.sink, config, home),
                metrics,
                allow_failed,
                observe,
            )
            for stream in config.streams
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(w.run(), name=f"stream {w.config.name}") for w in self.workers]

    async def wait(self) -> None:
        """Until every worker has stopped (they stop only when cancelled)."""
        await asyncio.gather(*self._tasks)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if not self._tasks:
            return
        _, stuck = await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT_S)
        for task in stuck:
            logger.warning("%s did not stop within %.0f s of cancel", task.get_name(), CLOSE_TIMEOUT_S)
        for task in self._tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a worker's own failure was logged where it happened

    def snapshot(self) -> list[dict[str, Any]]:
        return [w.snapshot() for w in self.workers]
