"""The deployments the router may send requests to: their backends, loading state and live state."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

from inferline.backends.base import Backend
from inferline.config import DeploymentConfig
from inferline.errors import BackendUnavailableError, ModelNotFoundError, ModelNotReadyError
from inferline.router.arm_stats import ArmStats
from inferline.router.circuit import CircuitBreaker

logger = logging.getLogger(__name__)

T = TypeVar("T")


def build_backend(deployment: DeploymentConfig) -> Backend:
    if deployment.kind == "llm":
        from inferline.backends.llm import LLMBackend

        return LLMBackend(deployment)
    if deployment.kind == "embedding":
        from inferline.backends.embedding import EmbeddingBackend

        return EmbeddingBackend(deployment)
    if deployment.kind == "remote":
        from inferline.backends.remote import RemoteBackend

        return RemoteBackend(deployment)
    from inferline.backends.onnx import OnnxBackend

    return OnnxBackend(deployment)


class Deployment:
    """One deployment: its backend, whether it is loaded, its circuit breaker, its live figures, and the
    router-side gate that keeps at most `max_concurrency` requests in flight."""

    def __init__(self, config: DeploymentConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.ready = False
        self.error: str | None = None
        self.breaker = CircuitBreaker(config.circuit_breaker)
        self.stats = ArmStats()
        self.in_flight = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def headers(self) -> dict[str, str]:
        return {
            "x-inferline-model": self.config.name,
            "x-inferline-deployment": f"{self.config.name}@{self.config.version}",
            "x-inferline-version": self.config.version,
        }

    @property
    def blended_price_per_1m(self) -> float:
        return self.config.price_input_per_1m + self.config.price_output_per_1m

    def estimated_wait_s(self) -> float:
        """How long a request sent now would wait before it starts: the backend's own queue estimate,
        or the router's queue ahead of it when the deployment is at max_concurrency."""
        backend_wait = self.backend.stats().estimated_wait_s if self.ready else 0.0
        limit = self.config.max_concurrency
        if limit is None or self.in_flight + self.waiting < limit:
            return backend_wait
        # With no latency seen yet we cannot promise a short wait: assume the worst, the timeout.
        per_request = self.stats.latency_s if self.stats.latency_s is not None else self.config.timeout_s
        rounds = math.ceil((self.waiting + 1) / limit)
        return max(backend_wait, rounds * per_request)

    def estimated_first_result_s(self) -> float:
        """Live estimate of time to first token: queue wait plus recent time to first token. Before any
        sample, the deployment's own objective (or 0, so that an unknown deployment gets explored)."""
        objective = (self.config.latency_objective_ms or 0.0) / 1000
        seen = self.stats.first_result_s if self.stats.first_result_s is not None else objective
        return self.estimated_wait_s() + seen

    async def within(self, work: Awaitable[T]) -> T:
        """`work`, or BackendUnavailableError (so the router falls back) past the deployment's timeout."""
        try:
            return await asyncio.wait_for(work, self.config.timeout_s)
        except TimeoutError:
            raise BackendUnavailableError(
                f"deployment {self.name!r} did not answer within {self.config.timeout_s:g} s (timeout_s)"
            ) from None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the deployment's concurrency slots for the duration of a request."""
        if self._slots is None:
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1
            return
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()


class DeploymentPool:
    """Every configured deployment by name and alias, and their loading."""

    def __init__(self, configs: list[DeploymentConfig], backends: list[Backend] | None = None) -> None:
        built = backends if backends is not None else [build_backend(c) for c in configs]
        self.deployments = [Deployment(c, b) for c, b in zip(configs, built, strict=True)]
        self.by_name: dict[str, Deployment] = {}
        for deployment in self.deployments:
            for name in [deployment.config.name, *deployment.config.aliases]:
                if name in self.by_name:
                    raise ValueError(f"model name {name!r} is used by two deployments; names must be unique")
                self.by_name[name] = deployment

    def find(self, name: str) -> Deployment:
        """The deployment of that name or alias, ready or not; ModelNotFoundError for unknown names."""
        deployment = self.by_name.get(name)
        if deployment is None:
            known = ", ".join(sorted(self.by_name))
            raise ModelNotFoundError(f"model {name!r} does not exist; this server serves: {known}")
        return deployment

    def get(self, name: str) -> Deployment:
        """A ready deployment; ModelNotReadyError while it is loading or after it failed to load."""
        deployment = self.find(name)
        if not deployment.ready:
            reason = f"failed to load: {deployment.error}" if deployment.error else "is still loading"
            raise ModelNotReadyError(f"model {name!r} {reason}")
        return deployment

    @property
    def all_ready(self) -> bool:
        return all(d.ready for d in self.deployments)

    async def load_all(self) -> None:
        """Load every deployment; one that fails is reported and the others still serve."""

        async def load(deployment: Deployment) -> None:
            try:
                await deployment.backend.load()
                deployment.ready = True
                logger.info("model %s ready", deployment.config.name)
            except Exception as error:
                deployment.error = str(error)
                logger.exception("model %s failed to load", deployment.config.name)

        await asyncio.gather(*(load(d) for d in self.deployments))

    async def unload_all(self) -> None:
        for deployment in self.deployments:
            deployment.ready = False
            await deployment.backend.unload()
