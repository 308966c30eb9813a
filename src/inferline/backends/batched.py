"""What the embedding and ONNX backends share: a runner behind a DynamicBatcher.

Subclasses load their runner and call `_start_batcher(run_batch)`; this class answers stats, health
and unload from the batcher, and refuses text generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

from inferline.backends.base import BackendStats, ModelMetadata, UnsupportedOperationError
from inferline.config import BatchedDeploymentBase
from inferline.runners.batcher import DynamicBatcher
from inferline.types import Delta, Request


class BatchedBackend:
    def __init__(self, deployment: BatchedDeploymentBase, metadata: ModelMetadata) -> None:
        self.deployment = deployment
        self._metadata = metadata
        self._batcher: DynamicBatcher[Any, Any] | None = None

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    @property
    def batcher(self) -> DynamicBatcher[Any, Any]:
        if self._batcher is None:
            raise RuntimeError(f"model {self.deployment.name!r} is not loaded")
        return self._batcher

    def _start_batcher(
        self, run_batch: Callable[[list[Any]], list[Any]], max_batch_size: int | None = None
    ) -> None:
        self._batcher = DynamicBatcher(
            run_batch,
            max_batch_size=max_batch_size or self.deployment.max_batch_size,
            max_queue_delay_us=self.deployment.max_queue_delay_us,
            max_queued=self.deployment.max_queued_requests,
            name=f"model {self.deployment.name!r}",
        )

    async def unload(self) -> None:
        """Run the requests already queued, then stop the batcher's worker."""
        if self._batcher is not None:
            await asyncio.to_thread(self._batcher.close)
            self._batcher = None

    def generate(self, request: Request) -> AsyncGenerator[Delta, None]:
        raise UnsupportedOperationError(
            f"model {self.deployment.name!r} is a {self.deployment.kind} model; it cannot generate text"
        )

    def stats(self) -> BackendStats:
        if self._batcher is None:
            return BackendStats(queue_depth=0, running=0, estimated_wait_s=0.0)
        stats = self._batcher.stats()
        return BackendStats(
            queue_depth=stats.queue_depth, running=stats.running, estimated_wait_s=stats.estimated_wait_s
        )

    def health(self) -> bool:
        return self._batcher is not None and self._batcher.is_alive()
