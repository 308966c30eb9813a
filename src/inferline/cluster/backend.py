"""A deployment served by Ray Serve replicas, as a Backend: the router and the server use it as they use
a local engine, and its calls go to a replica through the deployment's handle.

Faults. A replica that dies fails the calls in flight on it (Ray raises ActorDiedError at once; Serve's
router drops the replica and the controller starts a new one). A call that has given nothing to the
caller yet is sent again, to another replica: a non-streamed answer is asked for whole (`complete`), so
it is retried at any point of its generation; a stream is retried until its first delta. A stream that has
already sent tokens resumes on another replica, which is given the prompt and the tokens sent so far and
goes on after them: the client sees one stream (its usage counts the tokens as one replica would have).
Where that cannot give the same answer's continuation (n > 1, structured output), the stream ends with
BackendUnavailableError, which the server sends as an error frame. A resumed stream may differ from an
unbroken one in what depends on the completion's own history: presence and frequency penalties, and a
stop string that spans the break."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any, cast

import numpy as np
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from inferline.backends.base import BackendStats, EmbeddingResult, ModelMetadata
from inferline.cluster.affinity import affinity_key
from inferline.cluster.autoscaling import scaling_view
from inferline.cluster.board import ROUTERS
from inferline.cluster.deploy import deploy
from inferline.config import LocalDeploymentConfig
from inferline.errors import BackendUnavailableError
from inferline.types import Delta, Request

logger = logging.getLogger(__name__)

REPLICA_LOST = (RayActorError, ReplicaUnavailableError)
"""The replica went away (died, or its node did): the call may be retried on another one."""
MAX_TRIES = 3
"""Tries of one call on successive replicas; Serve routes each new try away from a replica that died."""
RETRY_BACKOFF_S = 0.5
"""Before the n-th retry, n times this: the tries span about one health check, time for Serve's router to
drop a replica that died or stops (0.05 s let a rolling update on a loaded machine fail three in a row)."""


class RayReplicaBackend:
    def __init__(self, deployment: LocalDeploymentConfig) -> None:
        self.deployment = deployment
        self._handle: DeploymentHandle | None = None
        self._metadata = ModelMetadata(
            name=deployment.name, kind=_kind(deployment), version=deployment.version
        )
        self._in_flight = 0

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    @property
    def handle(self) -> DeploymentHandle:
        if self._handle is None:
            raise RuntimeError(f"model {self.deployment.name!r} is not deployed")
        return self._handle

    async def load(self) -> None:
        """Deploy this version's replicas (a rolling update when another version serves) and ask one of
        them what it loaded."""
        handle = await deploy(self.deployment)
        if not handle.is_initialized:  # Serve hands a rolling update the handle it gave the first version
            # Its request router on this event loop, not on a thread of Ray's: a request and each of its
            # streamed items are then not handed between threads.
            handle._init(_run_router_in_separate_loop=False)
        self._handle = handle
        self._metadata = await self._call("metadata")
        self._metadata.runtime = {**self._metadata.runtime, "replicas": "ray-serve"}

    async def unload(self) -> None:
        """The replicas belong to the Serve application, which `inferline serve --ray` deletes on exit."""

    def generate(self, request: Request) -> AsyncGenerator[Delta, None]:
        key = affinity_key(request, self.deployment.replicas.affinity_prefix_chars)
        if not request.stream:
            return self._whole(request, key)
        return self._stream(request, key)

    async def _whole(self, request: Request, key: str | None) -> AsyncGenerator[Delta, None]:
        for delta in await self._call("complete", request, **self._routing(request, key)):
            yield delta

    async def _stream(self, request: Request, key: str | None) -> AsyncGenerator[Delta, None]:
        self._in_flight += 1
        sent_token_ids: list[int] = []
        try:
            for attempt in range(1, MAX_TRIES + 1):
                num_replayed = len(sent_token_ids)
                resume = {"resume_token_ids": list(sent_token_ids)} if num_replayed else {}
                call = self.handle.options(stream=True).generate.remote(
                    request, **self._routing(request, key), **resume
                )
                stream = cast("DeploymentResponseGenerator[list[Delta]]", call)  # stream=True: a generator
                try:
                    async for deltas in stream:  # those ready together on the replica (replica.py)
                        for delta in deltas:
                            sent_token_ids += delta.token_ids
                            yield _as_one_stream(delta, num_replayed)
                    return
                except REPLICA_LOST as error:
                    if sent_token_ids and not _resumable(request, len(sent_token_ids)):
                        raise BackendUnavailableError(
                            f"the replica serving model {self.deployment.name!r} failed mid-stream "
                            f"({error}); retry the request"
                        ) from None
                    self._lost(attempt, error)
                    if sent_token_ids:
                        logger.warning(
                            "resuming a stream after %d tokens on another replica", len(sent_token_ids)
                        )
                    await asyncio.sleep(RETRY_BACKOFF_S * attempt)
                except RayTaskError as error:
                    raise _cause(error) from None
                finally:
                    stream.cancel()  # the client left, or the stream ended: nothing more to ask for
        finally:
            self._in_flight -= 1

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        result: EmbeddingResult = await self._call("embed", texts)
        return result

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result: dict[str, np.ndarray] = await self._call("infer", inputs)
        return result

    def stats(self) -> BackendStats:
        """Across replicas, from the request router's view: what a new request would wait on the least
        loaded replica, and the replicas the load needs (shown in /admin/routes)."""
        router = ROUTERS.get(self.deployment.name)
        replicas = router.view()["replicas"] if router is not None else {}
        waits = [float(load.get("queue_wait_s", 0.0)) for load in replicas.values()]
        return BackendStats(
            queue_depth=0,
            running=self._in_flight,
            estimated_wait_s=min(waits) if waits else 0.0,
            scaling=scaling_view(self.deployment, replicas),
        )

    def health(self) -> bool:
        """Serve checks and replaces the replicas itself; this backend serves while the application does."""
        return True

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._in_flight += 1
        try:
            for attempt in range(1, MAX_TRIES + 1):
                try:
                    return await getattr(self.handle, method).remote(*args, **kwargs)
                except REPLICA_LOST as error:
                    self._lost(attempt, error)
                    await asyncio.sleep(RETRY_BACKOFF_S * attempt)
                except RayTaskError as error:
                    raise _cause(error) from None
            raise AssertionError("unreachable: the last try raises")
        finally:
            self._in_flight -= 1

    def _lost(self, attempt: int, error: Exception) -> None:
        if attempt == MAX_TRIES:
            raise BackendUnavailableError(
                f"model {self.deployment.name!r}: {MAX_TRIES} replicas failed in a row ({error}); "
                "retry shortly",
                retry_after_s=1.0,
            ) from None
        logger.warning("model %s: a replica failed (%s); trying another", self.deployment.name, error)

    def _routing(self, request: Request, key: str | None) -> dict[str, Any]:
        """What the request router reads (routing.py): the affinity key and the tokens the request adds."""
        max_tokens = request.sampling.max_tokens or 0
        estimated = len(request.prompt_token_ids) or len(request.prompt_text or "") // 4
        if request.messages is not None:
            estimated = sum(len(str(m.get("content", ""))) for m in request.messages) // 4
        return {"affinity_key": key, "load_tokens": estimated + request.sampling.n * max_tokens}


def _resumable(request: Request, num_sent: int) -> bool:
    """Whether another replica can go on with a stream after its `num_sent` tokens: one completion, no
    grammar whose state those tokens would have moved, and tokens still to come."""
    sampling = request.sampling
    left = sampling.max_tokens is None or num_sent < sampling.max_tokens
    return sampling.n == 1 and sampling.structured is None and left


def _as_one_stream(delta: Delta, num_replayed: int) -> Delta:
    """A resumed replica counts the `num_replayed` tokens it was given as prompt; the client's usage counts
    them as the completion's, as one unbroken stream would."""
    if delta.usage is None or not num_replayed:
        return delta
    usage = delta.usage
    prompt_tokens = usage.prompt_tokens - num_replayed
    return replace(
        delta,
        usage=replace(
            usage,
            prompt_tokens=prompt_tokens,
            completion_tokens=usage.completion_tokens + num_replayed,
            cached_prompt_tokens=min(usage.cached_prompt_tokens, prompt_tokens),
        ),
    )


def _cause(error: RayTaskError) -> BaseException:
    """The replica's own exception (an InferlineError the server maps to its status), not Ray's wrapper."""
    cause = error.cause
    return cause if isinstance(cause, BaseException) else error


def _kind(deployment: LocalDeploymentConfig) -> Any:
    return deployment.kind if deployment.kind != "onnx" else "tensor"
