"""The local LLM engine as a Backend: tokenization in, the engine's deltas out."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import numpy as np

from inferline.backends.base import (
    BackendStats,
    EmbeddingResult,
    ModelMetadata,
    UnsupportedOperationError,
)
from inferline.config import LLMDeploymentConfig
from inferline.errors import InvalidRequestError, PromptTooLongError, QueueFullError
from inferline.models.tokenizer import Tokenizer
from inferline.telemetry.tracing import trace_engine
from inferline.types import Delta, Request

if TYPE_CHECKING:  # the engine imports torch: seconds that a server of remote deployments need not spend
    from inferline.engine.async_engine import AsyncEngine


class LLMBackend:
    def __init__(self, deployment: LLMDeploymentConfig) -> None:
        self.deployment = deployment
        self.engine_config = deployment.engine.model_copy(update={"model": deployment.source})
        self.engine: AsyncEngine | None = None
        self._metadata = ModelMetadata(
            name=deployment.name, kind="llm", version=deployment.version, platform="inferline-llm"
        )

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    @property
    def tokenizer(self) -> Tokenizer:
        return self._engine.core.tokenizer

    @property
    def max_model_len(self) -> int:
        return self._engine.core.max_model_len

    @property
    def _engine(self) -> AsyncEngine:
        if self.engine is None:
            raise RuntimeError(f"model {self.deployment.name!r} is not loaded")
        return self.engine

    async def load(self) -> None:
        from inferline.engine.async_engine import AsyncEngine

        self.engine = await AsyncEngine.load(self.engine_config)
        self._metadata.max_model_len = self.engine.core.max_model_len
        loaded = self.engine.core.loaded
        self._metadata.runtime = {
            "device": str(loaded.device),
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "quantization": loaded.quantization.mode,
            "quantization_reason": loaded.quantization.reason,
            "load_time_s": round(loaded.load_time_s, 3),
        }

    async def unload(self) -> None:
        if self.engine is not None:
            await self.engine.shutdown(drain_timeout_s=0)

    def encode_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        if not self.tokenizer.has_chat_template:
            raise InvalidRequestError(
                f"model {self.deployment.name!r} has no chat template: use /v1/completions with a prompt"
                + (" (and without tools: a model without a chat template cannot call them)" if tools else ""),
                "tools" if tools else "messages",
            )
        return self.tokenizer.encode_chat(messages, tools=tools)

    def prepare(self, request: Request) -> Request:
        """Encode the request's messages or text with this model's tokenizer and chat template, and check
        that prompt plus max_tokens fit in the context."""
        if request.messages is not None:
            request.prompt_token_ids = self.encode_chat(request.messages, request.tools)
            param = "messages"
        elif request.prompt_text is not None:
            request.prompt_token_ids = self.tokenizer.encode(request.prompt_text)
            param = "prompt"
        else:
            param = "prompt"
        num_prompt, limit = len(request.prompt_token_ids), self.max_model_len
        if num_prompt >= limit:
            raise PromptTooLongError(
                f"prompt has {num_prompt} tokens; this model's context is {limit} tokens: shorten it", param
            )
        max_tokens = request.sampling.max_tokens
        if max_tokens is not None and num_prompt + max_tokens > limit:
            raise InvalidRequestError(
                f"max_tokens is {max_tokens} but the prompt has {num_prompt} tokens and this model's "
                f"context is {limit}: ask for at most {limit - num_prompt} tokens",
                "max_tokens",
            )
        return request

    def generate(self, request: Request) -> AsyncGenerator[Delta, None]:
        engine = self._engine
        self.prepare(request)
        # Counted from accepted requests, not the scheduler's queue: a burst arrives before the engine
        # thread has seen any of it.
        waiting = engine.num_unfinished - engine.stats().num_running
        if waiting >= self.deployment.max_queued_requests:
            raise QueueFullError(
                f"model {self.deployment.name!r} has {self.deployment.max_queued_requests} requests waiting "
                "(max_queued_requests); retry shortly",
                retry_after_s=1.0,
            )
        return trace_engine(engine.generate(request))

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        raise UnsupportedOperationError(
            f"model {self.deployment.name!r} is a chat/completions model, not embeddings"
        )

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise UnsupportedOperationError(
            f"model {self.deployment.name!r} generates text: use /v1/chat/completions or /v1/completions"
        )

    def stats(self) -> BackendStats:
        if self.engine is None:
            return BackendStats(queue_depth=0, running=0, estimated_wait_s=0.0)
        stats = self.engine.stats()
        # Waiting requests drain max_num_seqs at a time, each batch taking about one request's time. Batch
        # work is left out: the scheduler serves the classes above it first (admission budgets are for
        # those classes; a batch line's own budget, admission.batch_max_wait_s, is long).
        slots = self.engine_config.max_num_seqs
        estimated_wait_s = -(-stats.num_waiting_above_batch // slots) * self.engine.mean_request_s
        return BackendStats(stats.num_waiting, stats.num_running, estimated_wait_s)

    def health(self) -> bool:
        return self.engine is not None and self.engine.is_alive()
