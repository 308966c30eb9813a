"""The deployments the router may send requests to: their backends, loading state and live state."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from inferline.backends.base import Backend
from inferline.config import (
    DeploymentConfig,
    EmbeddingDeploymentConfig,
    LLMDeploymentConfig,
    RemoteDeploymentConfig,
)
from inferline.errors import BackendUnavailableError, InferlineError, ModelNotFoundError, ModelNotReadyError
from inferline.router.arm_stats import ArmStats
from inferline.router.circuit import CircuitBreaker

logger = logging.getLogger(__name__)

T = TypeVar("T")


def build_backend(deployment: DeploymentConfig) -> Backend:
    if isinstance(deployment, LLMDeploymentConfig):
        from inferline.backends.llm import LLMBackend

        return LLMBackend(deployment)
    if isinstance(deployment, EmbeddingDeploymentConfig):
        from inferline.backends.embedding import EmbeddingBackend

        return EmbeddingBackend(deployment)
    if isinstance(deployment, RemoteDeploymentConfig):
        from inferline.backends.remote import RemoteBackend

        return RemoteBackend(deployment)
    from inferline.backends.onnx import OnnxBackend

    return OnnxBackend(deployment)


@dataclass
class Generation:
    """One loaded version of a deployment and the requests that entered while it was the current one."""

    config: DeploymentConfig
    backend: Backend
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when `in_flight` drops to 0; a swap clears it, then waits on it to drain this generation."""

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no request of this generation is in flight; False if some still were at the timeout."""
        if self.in_flight == 0:
            return True
        self.idle.clear()  # it may still be set from an earlier moment with nothing in flight
        try:
            async with asyncio.timeout(timeout_s):
                await self.idle.wait()
        except TimeoutError:
            return False
        return True


class Deployment:
    """One deployment: its backend, whether it is loaded, its circuit breaker, its live figures, and the
    router-side gate that keeps at most `max_concurrency` requests in flight.

    Hot swap: requests read `backend` after entering `slot()`, which counts them against the generation
    current at entry. A swap makes the new generation current and then waits for the old one's count to
    reach zero before unloading it, so a request never finds its backend unloaded. One swap at a time (the
    lock), so a request counted in a generation never sees a backend two generations on."""

    def __init__(self, config: DeploymentConfig, backend: Backend) -> None:
        self.current = Generation(config, backend)
        self.draining: Generation | None = None
        self._swap_lock = asyncio.Lock()
        self.ready = False
        self.error: str | None = None
        self.breaker = CircuitBreaker(config.circuit_breaker)
        self.stats = ArmStats()
        self.in_flight = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None

    @property
    def config(self) -> DeploymentConfig:
        return self.current.config

    @property
    def backend(self) -> Backend:
        return self.current.backend

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def swapping(self) -> bool:
        return self._swap_lock.locked()

    async def swap(self, config: DeploymentConfig, backend: Backend, drain_timeout_s: float) -> None:
        """Load `backend` (the version `config` describes) beside the current one, send new requests to it,
        let the old one's requests finish (at most `drain_timeout_s`), then unload the old one. If the
        load fails the current version keeps serving and the error propagates."""
        async with self._swap_lock:
            await backend.load()
            old, was_ready = self.current, self.ready
            self.current, self.ready, self.error = Generation(config, backend), True, None
            if not was_ready:
                logger.info("model %s now serves version %s", config.name, config.version)
                return  # the old generation never loaded: nothing of it is serving or to drain
            logger.info(
                "model %s now serves version %s; draining %d requests from version %s",
                config.name,
                config.version,
                old.in_flight,
                old.config.version,
            )
            self.draining = old
            try:
                if not await old.drain(drain_timeout_s):
                    logger.warning(
                        "model %s: %d requests on version %s still in flight after %g s (drain_timeout_s): "
                        "unloading it anyway",
                        config.name,
                        old.in_flight,
                        old.config.version,
                        drain_timeout_s,
                    )
                await old.backend.unload()
                logger.info("model %s: version %s drained and unloaded", config.name, old.config.version)
            finally:
                self.draining = None

    @property
    def headers(self) -> dict[str, str]:
        return {
            "x-inferline-model": self.config.name,
            "x-inferline-deployment": f"{self.config.name}@{self.config.version}",
            "x-inferline-version": self.config.version,
        }

    @property
    def max_output_tokens(self) -> int:
        """The most tokens one completion may produce here, for budget holds: the loaded model's context
        length, else a remote's configured `max_output_tokens` (0 for a local model not loaded yet)."""
        known = self.backend.metadata.max_model_len
        if known:
            return known
        return self.config.max_output_tokens if isinstance(self.config, RemoteDeploymentConfig) else 0

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
        """`work`, or BackendUnavailableError (so the router falls back) past the deployment's timeout.

        asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result of work that finishes in
        the loop iteration its caller is cancelled in, and the cancellation is lost. A stream worker that
        lost one that way kept running after its shutdown, its close() waiting for good."""
        try:
            async with asyncio.timeout(self.config.timeout_s):
                return await work
        except TimeoutError:
            raise BackendUnavailableError(
                f"deployment {self.name!r} did not answer within {self.config.timeout_s:g} s (timeout_s)"
            ) from None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the deployment's concurrency slots for the duration of a request."""
        if self._slots is None:
            async with self._counted():
                yield
            return
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            async with self._counted():
                yield
        finally:
            self._slots.release()

    @asynccontextmanager
    async def _counted(self) -> AsyncIterator[None]:
        generation = self.current
        generation.enter()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            generation.leave()


class DeploymentPool:
    """Every configured deployment by name and alias, and their loading."""

    def __init__(
        self,
        configs: list[DeploymentConfig],
        backends: list[Backend] | None = None,
        prepare: Callable[[DeploymentConfig], DeploymentConfig] | None = None,
        build: Callable[[DeploymentConfig], Backend] = build_backend,
    ) -> None:
        """`prepare` (blocking; run on a thread at load) turns a configured deployment into the one to load,
        e.g. a registry source into its verified bundle folder; it raises to refuse the deployment.
        `build` makes a deployment's backend, at start and for each new version (`inferline serve --ray`
        builds handles to Ray Serve replicas)."""
        self.prepare = prepare
        self.build = build
        built = backends if backends is not None else [build(c) for c in configs]
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

    def is_ready(self, allow_failed: bool) -> bool:
        """Whether this server should be sent traffic (GET /ready, /v2/health/ready).

        Strict by default, as Triton's --strict-readiness: ready once every deployment has loaded (a failed
        one ends the process, on_load_failure: exit). With `allow_failed` (on_load_failure: serve_rest) the
        operator has chosen to serve a partial set, so this is Triton's --exit-on-error=false with strict
        readiness off: ready once loading is over and at least one deployment serves. Staying 503 there
        would keep load balancers and Kubernetes from ever sending the traffic the server can answer."""
        if not allow_failed:
            return all(d.ready for d in self.deployments)
        return not self.loading and any(d.ready for d in self.deployments)

    @property
    def loading(self) -> bool:
        """Whether some deployment has neither loaded nor failed yet."""
        return any(not d.ready and d.error is None for d in self.deployments)

    @property
    def failed(self) -> dict[str, str]:
        """Deployments that failed to load, by name, with the cause."""
        return {d.name: d.error for d in self.deployments if not d.ready and d.error is not None}

    async def load_all(self, on_failure: Callable[[], None] | None = None) -> None:
        """Load every deployment; one that fails is reported (and `on_failure` called at once) and the
        others still load."""

        async def load(deployment: Deployment) -> None:
            try:
                prepared = deployment.config
                if self.prepare is not None:
                    prepared = await asyncio.to_thread(self.prepare, deployment.config)
                if prepared == deployment.config:
                    await deployment.backend.load()
                    deployment.ready = True
                else:
                    await deployment.swap(prepared, self.build(prepared), drain_timeout_s=0)
                logger.info("model %s ready", deployment.config.name)
            except Exception as error:
                deployment.error = str(error)
                if isinstance(error, InferlineError):  # a cause the user can act on: its message says it all
                    logger.error("model %s failed to load: %s", deployment.config.name, error)
                else:
                    logger.exception("model %s failed to load", deployment.config.name)
                if on_failure is not None:
                    on_failure()

        await asyncio.gather(*(load(d) for d in self.deployments))
        # What the start imported and the models loaded (modules, vocabularies, merges, metadata: ~300k
        # objects for the two defaults) lives as long as the process. Out of the collector's sight, a full
        # collection takes well under a millisecond instead of ~190 ms (a pause every request in flight
        # would feel), and the exit walks none of it (2.6 s of SIGTERM-to-exit before). No collection
        # first: it would hold /ready back ~0.2 s to free the few thousand objects of garbage the start
        # left (under 2 MB). `serve` turns collection off for its start; it resumes here.
        gc.freeze()
        gc.enable()

    async def unload_all(self) -> None:
        for deployment in self.deployments:
            deployment.ready = False
            await deployment.backend.unload()
            if deployment.draining is not None:  # a swap in progress: its old version is still loaded
                await deployment.draining.backend.unload()
