"""The one Backend protocol: what the server and the router may ask of anything that serves a model.

A backend serves one model version: a local LLM engine, an embedding or ONNX runner, or (later) a
remote OpenAI-compatible upstream. Each kind implements the calls that make sense for it and raises
`UnsupportedOperationError` for the others, so the server can answer "this model does not do that"
with a 400 instead of guessing from the type.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from inferline.errors import InferlineError
from inferline.types import Delta, Request

BackendKind = Literal["llm", "embedding", "tensor"]


class UnsupportedOperationError(InferlineError):
    """The model exists but does not do what was asked (e.g. chat with an embedding model)."""


@dataclass
class TensorSpec:
    """One named input or output of a model (Open Inference Protocol metadata)."""

    name: str
    datatype: str
    """OIP datatype: BOOL, INT8..INT64, UINT8..UINT64, FP16, FP32, FP64, BYTES."""
    shape: list[int]
    """-1 for a dimension of any size (the batch dimension first)."""


@dataclass
class ModelMetadata:
    name: str
    kind: BackendKind
    version: str = "1"
    platform: str = ""
    """"inferline-llm", "onnxruntime_onnx", "inferline-embedding" (OIP `platform`)."""
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    max_model_len: int | None = None
    """LLMs: longest prompt plus completion in tokens."""
    embedding_dim: int | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    """How the loaded model runs (device, dtype, quantization and why): the `inferline` field of
    GET /v1/models/{id}."""


@dataclass
class EmbeddingResult:
    vectors: np.ndarray
    """[n, dim] float32, one row per input text, L2-normalised when the model says so."""
    num_tokens: int
    """Tokens processed over all inputs (billed as prompt tokens)."""


@dataclass
class BackendStats:
    queue_depth: int
    """Requests accepted but not yet running."""
    running: int
    estimated_wait_s: float
    """Rough time a new request would wait before it starts."""
    scaling: dict[str, Any] | None = None
    """A backend on several replicas (Ray): how many serve, how many its load needs and why; else None."""


@dataclass
class WaitMeter:
    """How long a request waited on an upstream outside this process: from the moment its request was
    sent to the arrival of the latest bytes read, the longest where several go at once. What inferline
    itself added (x-inferline-overhead-ms) is the rest, our own client and decoding included."""

    upstream_s: float = 0.0
    measured: bool = False
    """False where the backend has no upstream to wait on (local models are waiting time throughout)."""

    def waited(self, sent_at: float, arrived_at: float) -> None:
        self.upstream_s = max(self.upstream_s, arrived_at - sent_at)
        self.measured = True


wait_meter: ContextVar[WaitMeter | None] = ContextVar("inferline_wait_meter", default=None)
"""The current attempt's meter; the router sets it, a backend that calls an upstream adds to it."""


@runtime_checkable
class Backend(Protocol):
    @property
    def metadata(self) -> ModelMetadata: ...

    async def load(self) -> None:
        """Make the model ready to serve (weights in memory, warmed up)."""

    async def unload(self) -> None:
        """Finish or abort in-flight work and release memory."""

    def generate(self, request: Request) -> AsyncGenerator[Delta, None]:
        """LLMs: the request's deltas as they are produced; leaving the iteration aborts it."""
        ...

    async def embed(self, texts: list[str]) -> EmbeddingResult: ...

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Tensor models: named arrays in, named arrays out; the first dimension is the batch."""
        ...

    def stats(self) -> BackendStats: ...

    def health(self) -> bool:
        """True while the backend can serve requests."""
        ...
