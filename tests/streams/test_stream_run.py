"""`inferline stream run` as a real process, SIGKILLed while it holds a batch and started again: every
message has exactly one result in the sink, none is lost. One process test (each start costs seconds of
imports): Redis Streams in, the database table out; tests/streams/test_workers.py covers both brokers'
redelivery and the stream sinks in process."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text

from inferline.bench.harness import free_port
from inferline.testing.fraud_model import write_fraud_mlp
from tests.streams.brokers import RedisBroker
from tests.streams.conftest import features, payload

START_TIMEOUT_S = 60.0


def start(config: Path, home: Path, log: Path, *options: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "INFERLINE_HOME": str(home)}
    command = [sys.executable, "-m", "inferline.cli", "stream", "run", str(config), *options]
    with log.open("ab") as output:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)


def database_results(home: Path) -> list[tuple[str, Any]]:
    path = home / "inferline.db"
    if not path.exists():
        return []
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT message_id, result FROM stream_results")).all()
    except Exception:  # the table is not there yet
        rows = []
    finally:
        engine.dispose()
    return [(message_id, json.loads(json.loads(fields)["result"])) for message_id, fields in rows]


@pytest.mark.slow  # two process starts: about 50 s on 2 loaded cores
def test_a_worker_killed_mid_batch_and_restarted_leaves_one_result_per_message(
    redis_url: str, tmp_path: Path
) -> None:
    name = f"killed-{secrets.token_hex(3)}"
    broker = RedisBroker(redis_url, name)
    # Slow enough (about 10 ms a message) that the kill lands while the worker holds a batch.
    model = write_fraud_mlp(tmp_path / "slow.onnx", hidden=1024, num_hidden_layers=6)
    stream = {
        "name": name,
        "source": broker.source(claim_idle_ms=500),
        "sink": {"kind": "database"},  # inferline.db in $INFERLINE_HOME
        "model": "fraud",
        "max_batch_size": 8,
    }
    config = {"deployments": [{"kind": "onnx", "name": "fraud", "source": str(model)}], "streams": [stream]}
    config_path = tmp_path / "streams.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_path / "worker.log"

    async def results() -> list[tuple[str, Any]]:
        return database_results(tmp_path)

    async def wait_for(num_results: int, worker: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (num_written := len(await results())) < num_results:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{num_written} results of {num_results}; log:\n{log.read_text()}")
            await asyncio.sleep(0.05)

    async def produce(num_messages: int, seed: int) -> list[str]:
        return await broker.produce([json.dumps(payload(r)).encode() for r in features(num_messages, seed)])

    async def scenario() -> None:
        ids = await produce(300, 0)
        first = start(config_path, tmp_path, log)
        try:
            await wait_for(40, first)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            first.kill()
        assert len(await results()) < len(ids), "the worker finished before it was killed: slow the model"
        assert await broker.in_flight() > 0  # the dead worker held messages it had not acknowledged
        ids += await produce(40, 1)
        metrics_port = free_port()
        second = start(config_path, tmp_path, log, "--metrics-port", str(metrics_port))
        try:
            await wait_for(len(ids), second)
            await asyncio.sleep(0.5)  # a second result for a redelivered message would show up now
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            # The restarted worker scored what the first left: the new messages and the reclaimed ones.
            processed = f'inferline_stream_messages_total{{outcome="processed",stream="{name}"}}'
            assert processed in metrics
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0
        finally:
            second.kill()
        written = [message_id for message_id, _ in await results()]
        assert sorted(written) == sorted(ids)  # each message exactly once
        assert await broker.in_flight() == 0
        await broker.close()

    asyncio.run(scenario())
