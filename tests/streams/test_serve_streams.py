"""`inferline serve` with `streams:` runs the workers beside the APIs: results written, the workers'
state in /admin/streams, their counts, lag and latency in /metrics, their requests metered, and their
model calls captured and watched for drift like online OIP requests."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import httpx
import pytest

from inferline.config import ServerConfig
from inferline.server.app import create_app
from tests.streams.brokers import RedisBroker
from tests.streams.conftest import features, payload, run, until


def test_serve_runs_the_stream_workers_and_shows_them(
    redis_url: str, fraud_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERLINE_HOME", str(tmp_path))
    broker = RedisBroker(redis_url, f"served-{secrets.token_hex(3)}")
    config = ServerConfig.model_validate(
        {
            "admin_api_keys": ["admin"],
            "deployments": [{"kind": "onnx", "name": "fraud", "source": str(fraud_model)}],
            "streams": [
                {
                    "name": broker.name,
                    "source": broker.source(),
                    "sink": broker.sink(),
                    "model": "fraud",
                    "priority": "interactive",
                }
            ],
            "quality": {"capture": {"enabled": True, "sample_rate": 1.0}, "drift": {"enabled": True}},
        }
    )
    app = create_app(config)

    async def scenario() -> None:
        ids = await broker.produce([json.dumps(payload(r)).encode() for r in features(20)])
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://inferline") as client,
        ):

            async def all_written() -> bool:
                return len(await broker.results()) == len(ids)

            await until(all_written, 30, "every message has a result")
            admin = await client.get("/admin/streams", headers={"authorization": "Bearer admin"})
            metrics = (await client.get("/metrics")).text
        assert admin.status_code == 200
        (worker,) = admin.json()["streams"]
        assert worker["name"] == broker.name
        assert worker["source"].startswith(f"redis stream {broker.name}.in (group inferline, consumer ")
        assert (worker["model"], worker["priority"], worker["state"]) == ("fraud", "interactive", "running")
        assert worker["num_processed"] == len(ids)
        assert worker["num_dead_lettered"] == 0
        label = f'stream="{broker.name}"'
        assert f'inferline_stream_messages_total{{outcome="processed",{label}}} 20.0' in metrics
        assert f"inferline_stream_latency_seconds_count{{{label}}} 20.0" in metrics
        assert f"inferline_stream_lag_messages{{{label}}}" in metrics
        # Each batch is one routed request, metered like any other.
        assert 'inferline_route_requests_total{deployment="fraud",outcome="ok",route="fraud"}' in metrics
        # Each model call is captured with its input rows, and its features feed the drift windows.
        quality = app.state.quality
        quality.capture.drain()
        captured = quality.capture.store.captured()
        assert {row.endpoint for row in captured} == {f"stream:{broker.name}"}
        assert sum(tensor["shape"][0] for row in captured for tensor in row.prompt) == len(ids)
        [windows] = quality.drift.windows.values()
        assert sum(len(o.features["features[0]"]) for o in windows.reference) == len(ids)
        await broker.close()

    run(scenario())
