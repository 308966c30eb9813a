"""Stream workers on real brokers (Redis Streams, NATS JetStream), in process: every message one result,
poison messages to the dead-letter stream with their reason, a dead consumer's messages taken over,
lag that moves, and a slow model that slows consumption without losing anything."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

import nats
import numpy as np
import pytest
from nats.js.api import RetentionPolicy
from prometheus_client import CollectorRegistry

from inferline.config import OnnxDeploymentConfig, ServerConfig
from inferline.testing.fraud_model import fraud_probabilities
from tests.streams.brokers import NatsBroker, RedisBroker, write_result
from tests.streams.conftest import features, payload, run, running, until

Broker = RedisBroker | NatsBroker


@pytest.fixture(params=["redis", "nats"])
def broker(request: pytest.FixtureRequest) -> Broker:
    name = f"fraud-{secrets.token_hex(3)}"
    if request.param == "redis":
        return RedisBroker(request.getfixturevalue("redis_url"), name)
    return NatsBroker(request.getfixturevalue("nats_url"), name)


def server_config(broker: Broker, model: Path, **stream: Any) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "deployments": [OnnxDeploymentConfig(name="fraud", source=str(model)).model_dump()],
            "streams": [
                {
                    "name": broker.name,
                    "source": broker.source(**stream.pop("source", {})),
                    "sink": broker.sink(),
                    "model": "fraud",
                    **({"max_batch_size": 16} | stream),
                }
            ],
        }
    )


def sample(registry: CollectorRegistry, metric: str, stream: str, **labels: str) -> float | None:
    return registry.get_sample_value(metric, {"stream": stream, **labels})


def test_every_message_one_result_poison_dead_lettered_dead_consumer_reclaimed(
    broker: Broker, fraud_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Batches of up to 48 against the deployment's max_batch_size of 32: scored in two calls.
    source = {"delete_consumer_idle_ms": 1000} if broker.kind == "redis" else {}
    config = server_config(broker, fraud_model, max_deliveries=2, max_batch_size=48, source=source)
    caplog.set_level(logging.INFO, "inferline.streams")
    name = broker.name
    rows = features(60)

    async def scenario() -> None:
        bodies = [json.dumps(payload(row)).encode() for row in rows]
        poison = [b"not json", json.dumps({"inputs": {"features": [1.0, 2.0]}}).encode()]
        ids = await broker.produce([*bodies[:30], *poison, *bodies[30:]])
        good_ids = ids[:30] + ids[32:]
        # A consumer took eight messages, wrote the first one's result and was killed before its ack.
        await broker.die_holding(8)
        await write_result(broker.sink(), name, ids[0], {"outputs": "first"})
        registry = CollectorRegistry()
        async with running(config, registry) as workers:

            async def all_written() -> bool:
                return len(await broker.results()) >= len(good_ids)

            async def no_lag() -> bool:
                return sample(registry, "inferline_stream_lag_messages", name) == 0

            await until(all_written, 30, "every good message has a result")
            await until(no_lag, 10, "lag back to 0")
            snapshot = workers.snapshot()[0]
            if isinstance(broker, RedisBroker):
                live = workers.workers[0].source.consumer  # type: ignore[attr-defined]

                async def only_the_live_consumer() -> bool:
                    # The dead one's messages were claimed: idle past the limit, it is deleted.
                    return await broker.consumers() == [live]

                await until(only_the_live_consumer, 10, "the dead consumer deleted")
        written = await broker.results()
        assert sorted(i for i, _ in written) == sorted(good_ids)  # each exactly once, the reclaimed too
        by_id = dict(written)
        assert by_id[ids[0]] == {"outputs": "first"}  # written before the crash: not written again
        expected = fraud_probabilities(rows)
        for index, message_id in enumerate(good_ids[1:], start=1):
            got = by_id[message_id]["outputs"]["probabilities"]
            np.testing.assert_allclose(got, expected[index], rtol=1e-4, atol=1e-6)
        dead = await broker.dead_letters()
        assert dead.keys() == set(ids[30:32])
        assert dead[ids[30]].startswith("bad payload: not JSON")
        assert "has shape [2]; one row of the model is [30]" in dead[ids[31]]
        assert await broker.in_flight() == 0
        assert "one by one" not in caplog.text  # no model call was refused
        assert snapshot["num_processed"] == len(good_ids)  # the pre-written one was scored, not written
        assert snapshot["num_dead_lettered"] == 2
        assert snapshot["state"] == "running"
        assert sample(registry, "inferline_stream_messages_total", name, outcome="processed") == len(good_ids)
        assert sample(registry, "inferline_stream_latency_seconds_count", name) == len(good_ids)
        await broker.close()

    run(scenario())


def test_a_slow_model_slows_consumption_and_loses_nothing(broker: Broker, slow_fraud_model: Path) -> None:
    config = server_config(broker, slow_fraud_model, max_batch_size=4)
    num_messages = 80

    async def scenario() -> None:
        ids = await broker.produce([json.dumps(payload(r)).encode() for r in features(num_messages)])
        registry = CollectorRegistry()
        lags: list[float] = []
        in_flight: list[int] = []
        async with running(config, registry):

            async def all_written() -> bool:
                # The worker holds two batches at most: the rest waits in the broker, not in memory.
                in_flight.append(await broker.in_flight())
                lag = sample(registry, "inferline_stream_lag_messages", broker.name)
                if lag is not None:
                    lags.append(lag)
                return len(await broker.results()) >= num_messages

            async def no_lag() -> bool:
                lags.append(sample(registry, "inferline_stream_lag_messages", broker.name) or 0.0)
                return lags[-1] == 0

            await until(all_written, 60, "every message has a result")
            await until(no_lag, 10, "lag back to 0")
        assert sorted(i for i, _ in await broker.results()) == sorted(ids)
        # Redis: the batch being scored and the one being written. NATS: a pull request that expired on
        # the client side may still deliver up to one more batch into the client's buffer, scored next.
        assert max(in_flight) <= (8 if broker.kind == "redis" else 12), in_flight
        peak = lags.index(max(lags))
        assert lags[peak] > num_messages / 2, lags  # a backlog built up while the model worked
        assert lags[peak:] == sorted(lags[peak:], reverse=True), lags  # and then only shrank
        await broker.close()

    run(scenario())


def test_a_nats_source_stream_the_worker_creates_is_a_work_queue(nats_url: str, fraud_model: Path) -> None:
    # Acknowledged messages leave it: a stream that kept them grew for good and stalled nats-server.
    broker = NatsBroker(nats_url, f"fraud-{secrets.token_hex(3)}")
    config = server_config(broker, fraud_model)

    async def scenario() -> None:
        js = await broker._js()
        async with running(config, CollectorRegistry()):

            async def created() -> bool:
                try:
                    await js.stream_info(f"{broker.name}_IN")
                except nats.js.errors.NotFoundError:
                    return False
                return True

            await until(created, 10, "the worker created its source stream")
            ids = await broker.produce([json.dumps(payload(row)).encode() for row in features(20)])

            async def all_written() -> bool:
                return len(await broker.results()) == len(ids)

            await until(all_written, 30, "every message has a result")

            async def drained() -> bool:
                return (await js.stream_info(f"{broker.name}_IN")).state.messages == 0

            await until(drained, 10, "the acknowledged messages left the source stream")
        info = await js.stream_info(f"{broker.name}_IN")
        assert info.config.retention == RetentionPolicy.WORK_QUEUE
        await broker.close()

    run(scenario())
