"""`inferline stream run` as a real process, SIGKILLed while it holds a batch, and a worker started again
(in this process: a second process start would only add seconds of imports): every message has exactly
one result in the sink, none is lost. One process test: Redis Streams in, the database table out;
tests/streams/test_workers.py covers both brokers' redelivery and the stream sinks in process, and the
streams benchmark's smoke run stops a worker process with SIGTERM."""

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
import yaml
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text

from inferline.bench.harness import free_port
from inferline.server.serve import load_server_config
from tests.streams.brokers import RedisBroker
from tests.streams.conftest import features, payload, run, running

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


def test_a_worker_killed_mid_batch_and_restarted_leaves_one_result_per_message(
    redis_url: str, slow_fraud_model: Path, tmp_path: Path
) -> None:
    name = f"killed-{secrets.token_hex(3)}"
    broker = RedisBroker(redis_url, name)
    stream = {
        "name": name,
        "source": broker.source(claim_idle_ms=500),
        "sink": {"kind": "database"},  # inferline.db in $INFERLINE_HOME
        "model": "fraud",
        "max_batch_size": 8,  # the slow model: about 80 ms a batch, so the kill lands while it holds one
    }
    config = {
        "deployments": [{"kind": "onnx", "name": "fraud", "source": str(slow_fraud_model)}],
        "streams": [stream],
    }
    config_path = tmp_path / "streams.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_path / "worker.log"

    async def results() -> list[tuple[str, Any]]:
        return database_results(tmp_path)

    async def wait_for(num_results: int, worker: subprocess.Popen[bytes] | None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (num_written := len(await results())) < num_results:
            exited = worker is not None and worker.poll() is not None
            if exited or time.monotonic() > deadline:
                raise AssertionError(f"{num_written} results of {num_results}; log:\n{log.read_text()}")
            await asyncio.sleep(0.05)

    async def produce(num_messages: int, seed: int) -> list[str]:
        return await broker.produce([json.dumps(payload(r)).encode() for r in features(num_messages, seed)])

    async def scenario() -> None:
        ids = await produce(300, 0)
        metrics_port = free_port()
        first = start(config_path, tmp_path, log, "--metrics-port", str(metrics_port))
        try:
            await wait_for(40, first)
            async with httpx.AsyncClient(timeout=10) as client:
                metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            processed = f'inferline_stream_messages_total{{outcome="processed",stream="{name}"}}'
            assert processed in metrics
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            first.kill()
        assert len(await results()) < len(ids), "the worker finished before it was killed: slow the model"
        assert await broker.in_flight() > 0  # the dead worker held messages it had not acknowledged
        ids += await produce(40, 1)
        # Started again (another consumer of the group): it scores the new messages and takes over the
        # dead one's after claim_idle_ms.
        async with running(load_server_config(str(config_path)), CollectorRegistry(), tmp_path):
            await wait_for(len(ids), None)
            await asyncio.sleep(0.5)  # a second result for a redelivered message would show up now
        written = [message_id for message_id, _ in await results()]
        assert sorted(written) == sorted(ids)  # each message exactly once
        assert await broker.in_flight() == 0
        await broker.close()

    run(scenario())
