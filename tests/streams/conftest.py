"""Real brokers (redis-server, nats-server with JetStream) on loopback, the fraud-style ONNX model, and a
router serving it, shared by the stream tests."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inferline.config import ServerConfig
from inferline.router.deployments import DeploymentPool
from inferline.router.limits import Limiter
from inferline.router.router import Router
from inferline.streams.service import StreamWorkers
from inferline.testing.brokers import nats_server, redis_server
from inferline.testing.fraud_model import NUM_FEATURES, write_fraud_mlp

SCENARIO_TIMEOUT_S = 180.0


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    with nats_server() as url:
        yield url


@pytest.fixture(scope="session")
def fraud_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fraud_mlp(tmp_path_factory.mktemp("models") / "fraud.onnx")


@pytest.fixture(scope="session")
def slow_fraud_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 10 ms a message on 2 cores: slow enough to build a backlog, or to be killed mid-batch."""
    return write_fraud_mlp(tmp_path_factory.mktemp("models") / "slow.onnx", hidden=1024, num_hidden_layers=6)


def features(num_messages: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((num_messages, NUM_FEATURES)).astype(np.float32)


def payload(row: np.ndarray) -> dict[str, Any]:
    return {"inputs": {"features": row.tolist()}}


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(
    config: ServerConfig, registry: CollectorRegistry, home: Path | None = None
) -> AsyncIterator[StreamWorkers]:
    """The config's deployments loaded and its stream workers running, in this process."""
    pool = DeploymentPool(config.deployments)
    await pool.load_all()
    router = Router(config, pool, Limiter.from_config(config))
    workers = StreamWorkers(config, router, registry, home or Path.home())
    workers.start()
    try:
        yield workers
    finally:
        await workers.close()
        await pool.unload_all()


def run(scenario: Coroutine[Any, Any, None], timeout_s: float = SCENARIO_TIMEOUT_S) -> None:
    """asyncio.run with a limit: a scenario that hangs (its cleanup included) fails, showing where each
    of its tasks waits, instead of holding the suite up."""

    async def limited() -> None:
        task = asyncio.ensure_future(scenario)
        await asyncio.wait([task], timeout=timeout_s)
        if task.done():
            return task.result()
        stacks = io.StringIO()
        for other in asyncio.all_tasks():
            if other is not asyncio.current_task():
                other.print_stack(file=stacks)
        task.cancel()
        await asyncio.wait([task], timeout=10)
        raise AssertionError(
            f"the scenario did not end within {timeout_s:g} s; its tasks:\n{stacks.getvalue()}"
        )

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(limited())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()  # after a timeout, tasks that would not stop are dropped rather than waited for
