"""Stream workers on a real Redis server: a consumer group in, results once out, poison messages to the
dead-letter stream, a dead consumer's messages reclaimed, lag and back-pressure, through the router."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from inferline.config import OnnxDeploymentConfig, RedisSinkConfig, ServerConfig
from inferline.router.deployments import DeploymentPool
from inferline.router.limits import Limiter
from inferline.router.router import Router
from inferline.streams.message import Output
from inferline.streams.redis_streams import RedisSink
from inferline.streams.service import StreamWorkers
from inferline.testing.fraud_model import fraud_probabilities
from tests.streams.conftest import features, payload, until


def stream_config(redis_url: str, model: Path, name: str, **stream: Any) -> ServerConfig:
    source = {"kind": "redis", "url": redis_url, "stream": f"{name}.in", "claim_idle_ms": 300}
    return ServerConfig.model_validate(
        {
            "deployments": [OnnxDeploymentConfig(name="fraud", source=str(model)).model_dump()],
            "streams": [
                {
                    "name": name,
                    "source": source | stream.pop("source", {}),
                    "sink": {"kind": "redis", "url": redis_url, "stream": f"{name}.out"},
                    "model": "fraud",
                    "max_batch_size": 16,
                    **stream,
                }
            ],
        }
    )


@asynccontextmanager
async def running(config: ServerConfig, registry: CollectorRegistry) -> AsyncIterator[StreamWorkers]:
    pool = DeploymentPool(config.deployments)
    await pool.load_all()
    router = Router(config, pool, Limiter.from_config(config))
    workers = StreamWorkers(config, router, registry, Path("/nonexistent"))
    workers.start()
    try:
        yield workers
    finally:
        await workers.close()
        await pool.unload_all()


async def produce(client: aioredis.Redis, stream: str, bodies: list[bytes]) -> list[str]:
    async with client.pipeline(transaction=False) as pipe:
        for body in bodies:
            pipe.xadd(stream, {"data": body})
        return [i.decode() for i in await pipe.execute()]


async def results(client: aioredis.Redis, stream: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (fields[b"id"].decode(), json.loads(fields[b"result"])) for _, fields in await client.xrange(stream)
    ]


def test_each_message_gets_one_result_poison_is_dead_lettered_and_a_dead_consumers_are_reclaimed(
    redis_url: str, fraud_model: Path
) -> None:
    name = f"fraud-{secrets.token_hex(3)}"
    config = stream_config(redis_url, fraud_model, name, max_deliveries=2)
    rows = features(60)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        bodies = [json.dumps(payload(row)).encode() for row in rows]
        poison = [b"not json", json.dumps({"inputs": {"features": [1.0, 2.0]}}).encode()]
        ids = await produce(client, f"{name}.in", [*bodies[:30], *poison, *bodies[30:]])
        good_ids = ids[:30] + ids[32:]
        # A consumer that read eight messages, wrote the first one's result, and died before its ack.
        await client.xgroup_create(f"{name}.in", "inferline", id="0")
        await client.xreadgroup("inferline", "dead", {f"{name}.in": ">"}, count=8)
        sink = RedisSink(RedisSinkConfig(url=redis_url, stream=f"{name}.out"))
        await sink.write([Output(name, ids[0], {"id": ids[0], "result": json.dumps({"outputs": "first"})})])
        await sink.close()

        registry = CollectorRegistry()
        async with running(config, registry) as workers:

            async def all_written() -> bool:
                return len(await results(client, f"{name}.out")) >= len(good_ids)

            await until(all_written, 30, "every good message has a result")
            async def no_lag() -> bool:
                return registry.get_sample_value("inferline_stream_lag_messages", {"stream": name}) == 0

            await until(no_lag, 5, "lag back to 0")
            snapshot = workers.snapshot()[0]
        written = await results(client, f"{name}.out")
        assert sorted(i for i, _ in written) == sorted(good_ids)  # each exactly once, the reclaimed too
        by_id = dict(written)
        assert by_id[ids[0]] == {"outputs": "first"}  # written before the crash: not written again
        expected = fraud_probabilities(rows)
        for index, message_id in enumerate(good_ids[1:], start=1):
            got = by_id[message_id]["outputs"]["probabilities"]
            np.testing.assert_allclose(got, expected[index], rtol=1e-4, atol=1e-6)
        dead = {f[b"id"].decode(): f[b"reason"].decode() for _, f in await client.xrange(f"{name}.in.dead")}
        assert dead.keys() == set(ids[30:32])
        assert dead[ids[30]].startswith("bad payload: not JSON")
        assert "has shape [2]; one row of the model is [30]" in dead[ids[31]]
        assert (await client.xpending(f"{name}.in", "inferline"))["pending"] == 0
        assert snapshot["num_processed"] == len(good_ids)  # the pre-written one counts: it was scored
        assert snapshot["num_dead_lettered"] == 2
        assert snapshot["state"] == "running"
        await client.aclose()

    asyncio.run(scenario())

