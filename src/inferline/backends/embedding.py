"""An embedding model as a Backend: `embed(texts)` for the OpenAI API, `infer({"text": ...})` for OIP.

Each request is one batcher item whose rows are its texts, so concurrent requests share a forward
pass; a request with more texts than max_batch_size is refused with a message saying so.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from inferline.backends.base import EmbeddingResult, ModelMetadata, TensorSpec
from inferline.backends.batched import BatchedBackend
from inferline.config import EmbeddingDeploymentConfig
from inferline.errors import InvalidRequestError
from inferline.runners.embedding import EmbeddingOutput, EmbeddingRunner
from inferline.runners.openmp import release_thread_pool

logger = logging.getLogger(__name__)

TEXT_INPUT = "text"
EMBEDDING_OUTPUT = "embedding"


class EmbeddingBackend(BatchedBackend):
    def __init__(self, deployment: EmbeddingDeploymentConfig) -> None:
        super().__init__(
            deployment,
            ModelMetadata(
                name=deployment.name,
                kind="embedding",
                version=deployment.version,
                platform="inferline-embedding",
                inputs=[TensorSpec(TEXT_INPUT, "BYTES", [-1])],
            ),
        )
        self.runner: EmbeddingRunner | None = None

    async def load(self) -> None:
        self.runner = runner = await asyncio.to_thread(_load_runner, self.deployment.source)
        dim = runner.embedding_dim
        self._metadata.embedding_dim = dim
        self._metadata.outputs = [TensorSpec(EMBEDDING_OUTPUT, "FP32", [-1, dim])]
        self._start_batcher(self._run_batch)

    async def unload(self) -> None:
        await super().unload()
        self.runner = None

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        if not texts:
            raise InvalidRequestError("input must hold at least one text", "input")
        if not all(isinstance(text, str) for text in texts):
            raise InvalidRequestError("every input must be a string", "input")
        # OpenAI clients send hundreds of inputs at once: split them into batch-sized pieces, run together.
        size = self.deployment.max_batch_size
        pieces = [texts[i : i + size] for i in range(0, len(texts), size)]
        outputs: list[EmbeddingOutput] = await asyncio.gather(
            *(self.batcher.submit(piece, num_rows=len(piece)) for piece in pieces)
        )
        return EmbeddingResult(
            vectors=np.concatenate([o.vectors for o in outputs]),
            num_tokens=sum(sum(o.num_tokens) for o in outputs),
        )

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """OIP: one BYTES input "text" of shape [n] (or [n, 1]) -> "embedding" FP32 [n, dim]."""
        result = await self.embed(_texts_of(inputs))
        return {EMBEDDING_OUTPUT: result.vectors}

    def _run_batch(self, requests: list[list[str]]) -> list[EmbeddingOutput]:
        """Worker thread: one forward pass over every text of every request, split back per request."""
        assert self.runner is not None, "the batcher runs only while the model is loaded"
        output = self.runner.embed([text for texts in requests for text in texts])
        release_thread_pool()  # an LLM engine's steps beside this one must not pay for an idle pool
        results, start = [], 0
        for texts in requests:
            end = start + len(texts)
            results.append(EmbeddingOutput(output.vectors[start:end], output.num_tokens[start:end]))
            start = end
        return results


def _load_runner(source: str) -> EmbeddingRunner:
    runner = EmbeddingRunner.from_source(source)
    runner.embed(["warm up the kernels before the first request"])
    release_thread_pool()
    logger.info("embedding model %s loaded (dim %d)", source, runner.embedding_dim)
    return runner


def _texts_of(inputs: dict[str, np.ndarray]) -> list[str]:
    unknown = [name for name in inputs if name != TEXT_INPUT]
    if unknown:
        raise InvalidRequestError(
            f"unknown input {unknown[0]!r}; this model takes one BYTES input {TEXT_INPUT!r} of shape [n]",
            unknown[0],
        )
    if TEXT_INPUT not in inputs:
        raise InvalidRequestError(f"missing input {TEXT_INPUT!r} (BYTES, shape [n])", TEXT_INPUT)
    array = np.asarray(inputs[TEXT_INPUT])
    if array.dtype.kind not in "OSU":
        raise InvalidRequestError(
            f"input {TEXT_INPUT!r} has dtype {array.dtype}; the model expects BYTES (strings)", TEXT_INPUT
        )
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]  # Triton clients often send [n, 1]
    if array.ndim != 1:
        raise InvalidRequestError(
            f"input {TEXT_INPUT!r} has shape {list(array.shape)}; the model expects [n]", TEXT_INPUT
        )
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.tolist()]
    except UnicodeDecodeError:
        raise InvalidRequestError(
            f"input {TEXT_INPUT!r}: an element is not valid UTF-8", TEXT_INPUT
        ) from None
