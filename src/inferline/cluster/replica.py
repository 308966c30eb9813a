"""One Ray Serve replica of a local deployment: one backend (an engine or a runner) and the load it reports.

Ray Serve builds the class in its replica actor (`serve.deployment(Replica)`), calls `generate` as a
streaming method and `complete`, `embed`, `infer` as plain ones, polls `record_routing_stats` for the
request router and `record_autoscaling_stats` for the autoscaling policy, and replaces the replica when
`check_health` raises or the actor dies.

A stream crosses to the caller one Ray object per item, each serialised, reported and awaited on its
own: `generate` yields the deltas that are ready together as one list (the n completions of one step, and
whatever queued while the previous item was on its way), never waiting for a second one, so the first
token leaves as soon as it exists."""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import AsyncGenerator
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from inferline.backends.base import EmbeddingResult, ModelMetadata
from inferline.backends.llm import LLMBackend
from inferline.cluster.load import ReplicaLoad
from inferline.config import LocalDeploymentConfig
from inferline.router.deployments import build_backend
from inferline.types import Delta, Request

MAX_REMEMBERED_KEYS = 4096
"""Affinity keys a replica remembers having served, to count affinity hits (a bounded LRU)."""


class Replica:
    async def __init__(self, deployment: LocalDeploymentConfig) -> None:  # type: ignore[misc]  # Serve awaits it
        self.backend = build_backend(deployment)
        await self.backend.load()
        self._ids = itertools.count()
        self._tokens_in_flight: dict[int, int] = {}
        self._keys_seen: OrderedDict[str, None] = OrderedDict()
        self._num_affinity_hits = 0

    def metadata(self) -> ModelMetadata:
        return self.backend.metadata

    async def generate(
        self,
        request: Request,
        affinity_key: str | None = None,
        load_tokens: int = 0,
        resume_token_ids: list[int] | None = None,
    ) -> AsyncGenerator[list[Delta], None]:
        """The request's deltas, those ready together in one list. `affinity_key` and `load_tokens` are what
        the request router chose by (routing.py); the key also counts this replica's affinity hits.
        `resume_token_ids`: what another replica had streamed of this request before it died; the answer
        goes on after them (they are appended to the prompt, and max_tokens shrinks by as many)."""
        self._remember(affinity_key)
        if resume_token_ids:
            request = self._resumed(request, resume_token_ids)
        stream = self.backend.generate(request)  # a local engine encodes the prompt here, or refuses it
        tokens = self._worst_case_tokens(request)
        key = next(self._ids)
        self._tokens_in_flight[key] = tokens
        batches = ready_together(stream)
        try:
            async for deltas in batches:
                tokens -= sum(len(delta.token_ids) for delta in deltas)
                self._tokens_in_flight[key] = max(tokens, 0)
                yield deltas
        finally:
            del self._tokens_in_flight[key]
            await batches.aclose()

    async def complete(
        self, request: Request, affinity_key: str | None = None, load_tokens: int = 0
    ) -> list[Delta]:
        """The whole answer at once: what a caller that may retry it elsewhere asks for."""
        return [delta async for deltas in self.generate(request, affinity_key) for delta in deltas]

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        key = next(self._ids)
        self._tokens_in_flight[key] = len(texts)
        try:
            return await self.backend.embed(texts)
        finally:
            del self._tokens_in_flight[key]

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = next(self._ids)
        self._tokens_in_flight[key] = max((len(a) for a in inputs.values()), default=0)
        try:
            return await self.backend.infer(inputs)
        finally:
            del self._tokens_in_flight[key]

    def load(self) -> ReplicaLoad:
        kv_usage = 0.0
        if isinstance(self.backend, LLMBackend) and self.backend.engine is not None:
            kv_usage = self.backend.engine.stats().kv_usage
        return ReplicaLoad(
            load_tokens=sum(self._tokens_in_flight.values()),
            kv_usage=kv_usage,
            queue_wait_s=self.backend.stats().estimated_wait_s,
            num_in_flight=len(self._tokens_in_flight),
            num_affinity_hits=self._num_affinity_hits,
        )

    def record_routing_stats(self) -> dict[str, Any]:
        return asdict(self.load())

    def record_autoscaling_stats(self) -> dict[str, float]:
        load = self.load()
        return {"load_tokens": load.load_tokens, "kv_usage": load.kv_usage, "queue_wait_s": load.queue_wait_s}

    def check_health(self) -> None:
        if not self.backend.health():
            raise RuntimeError(f"the backend of {self.backend.metadata.name!r} stopped")

    async def __del__(self) -> None:
        await self.backend.unload()

    def _resumed(self, request: Request, token_ids: list[int]) -> Request:
        if not isinstance(self.backend, LLMBackend):
            raise TypeError(f"{self.backend.metadata.name!r} does not generate tokens: nothing to resume")
        prepared = self.backend.prepare(request)  # the prompt's tokens, through the chat template
        max_tokens = request.sampling.max_tokens
        return replace(
            prepared,
            prompt_token_ids=[*prepared.prompt_token_ids, *token_ids],
            messages=None,
            prompt_text=None,
            sampling=replace(
                request.sampling, max_tokens=None if max_tokens is None else max_tokens - len(token_ids)
            ),
        )

    def _worst_case_tokens(self, request: Request) -> int:
        """Prompt plus the most the completions may produce: the load this request adds until it ends."""
        num_prompt = len(request.prompt_token_ids)
        max_tokens = request.sampling.max_tokens
        if max_tokens is None:
            max_tokens = max((self.backend.metadata.max_model_len or num_prompt) - num_prompt, 0)
        return num_prompt + request.sampling.n * max_tokens

    def _remember(self, affinity_key: str | None) -> None:
        if affinity_key is None:
            return
        if affinity_key in self._keys_seen:
            self._num_affinity_hits += 1
            self._keys_seen.move_to_end(affinity_key)
            return
        self._keys_seen[affinity_key] = None
        if len(self._keys_seen) > MAX_REMEMBERED_KEYS:
            self._keys_seen.popitem(last=False)


async def ready_together(stream: AsyncGenerator[Delta, None]) -> AsyncGenerator[list[Delta], None]:
    """`stream`'s deltas, each list holding the next one and every one that arrived while the caller was
    busy with the list before (it never waits for more); closing this closes `stream`."""
    ready: asyncio.Queue[Delta | Exception | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for delta in stream:
                ready.put_nowait(delta)
        except Exception as error:  # raised to the caller after the deltas before it
            ready.put_nowait(error)
            return
        ready.put_nowait(None)

    pumping = asyncio.create_task(pump())
    try:
        while True:
            items = [await ready.get()]
            while not ready.empty():
                items.append(ready.get_nowait())
            deltas = [item for item in items if isinstance(item, Delta)]
            if deltas:
                yield deltas
            if isinstance(items[-1], Exception):
                raise items[-1]
            if items[-1] is None:
                return
    finally:
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        await stream.aclose()
