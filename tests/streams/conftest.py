"""Real brokers (redis-server, nats-server with JetStream) on loopback, the fraud-style ONNX model, and a
router serving it, shared by the stream tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferline.testing.brokers import nats_server, redis_server
from inferline.testing.fraud_model import NUM_FEATURES, write_fraud_mlp


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
