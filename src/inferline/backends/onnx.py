"""An ONNX model as a Backend: `infer(inputs)` with concurrent requests stacked along dimension 0.

Requests are validated before they queue (a bad one never fails a batch it would have shared). A
batch stacks requests whose non-batch dimensions agree (a model with a dynamic sequence length
gets one stacked run per distinct shape) and splits every output back by each request's rows. A
model whose inputs or outputs lack a dynamic first dimension runs one request at a time.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from inferline.backends.base import EmbeddingResult, ModelMetadata, TensorSpec, UnsupportedOperationError
from inferline.backends.batched import BatchedBackend
from inferline.config import OnnxDeploymentConfig
from inferline.errors import InvalidRequestError
from inferline.runners.onnx import OnnxRunner, TensorInfo

logger = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]


class OnnxBackend(BatchedBackend):
    def __init__(self, deployment: OnnxDeploymentConfig) -> None:
        super().__init__(
            deployment,
            ModelMetadata(
                name=deployment.name, kind="tensor", version=deployment.version, platform="onnxruntime_onnx"
            ),
        )
        self.runner: OnnxRunner | None = None

    async def load(self) -> None:
        self.runner = runner = await asyncio.to_thread(OnnxRunner, self.deployment.source)
        self._metadata.inputs = [_spec(info) for info in runner.inputs]
        self._metadata.outputs = [_spec(info) for info in runner.outputs]
        if not runner.batchable:
            logger.info(
                "%s: inputs or outputs lack a dynamic batch dimension; no dynamic batching", runner.path
            )
        self._start_batcher(self._run_batch, max_batch_size=None if runner.batchable else 1)

    async def unload(self) -> None:
        await super().unload()
        self.runner = None

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        raise UnsupportedOperationError(
            f"model {self.deployment.name!r} is an ONNX tensor model; send tensors to its OIP infer route"
        )

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        runner = self._runner
        feeds = runner.validate(inputs)
        num_rows = _num_rows(feeds) if runner.batchable else 1
        return await self.batcher.submit(feeds, num_rows=num_rows)

    @property
    def _runner(self) -> OnnxRunner:
        if self.runner is None:
            raise RuntimeError(f"model {self.deployment.name!r} is not loaded")
        return self.runner

    def _run_batch(self, requests: list[Tensors]) -> list[Tensors]:
        """Worker thread: one session run per group of requests with the same non-batch shapes."""
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for index, feeds in enumerate(requests):
            groups.setdefault(tuple(a.shape[1:] for a in feeds.values()), []).append(index)
        results: list[Tensors] = [{} for _ in requests]
        for indexes in groups.values():
            for index, outputs in zip(
                indexes, self._run_stacked([requests[i] for i in indexes]), strict=True
            ):
                results[index] = outputs
        return results

    def _run_stacked(self, requests: list[Tensors]) -> list[Tensors]:
        runner = self._runner
        if len(requests) == 1:
            return [runner.run(requests[0])]
        stacked = {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}
        outputs = runner.run(stacked)
        rows = [_num_rows(r) for r in requests]
        if any(array.shape[0] != sum(rows) for array in outputs.values()):
            # An output with a dynamic first dimension that is not the batch (e.g. NonZero's count).
            return [runner.run(r) for r in requests]
        bounds = np.cumsum(rows)[:-1]
        split = {name: np.split(array, bounds) for name, array in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(requests))]


def _spec(info: TensorInfo) -> TensorSpec:
    return TensorSpec(info.name, info.datatype, list(info.shape))


def _num_rows(feeds: Tensors) -> int:
    """The batch dimension every input shares (validated inputs all have rank >= 1 here)."""
    rows = {name: array.shape[0] for name, array in feeds.items()}
    if len(set(rows.values())) > 1:
        listed = ", ".join(f"{name}: {n}" for name, n in rows.items())
        raise InvalidRequestError(f"inputs disagree on the batch dimension (first dimension): {listed}")
    return next(iter(rows.values()))
