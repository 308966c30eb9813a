"""Payload capture and feedback through the real app (in-process ASGI) in front of a stub upstream: planted
secrets never reach the database file or an export, flagged and sampled requests are kept with their
lineage, a tenant can rate only its own requests, and a batch job's lines are captured and rated alike
(but kept out of the drift windows)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferline.cli import main
from inferline.config import ServerConfig, StreamConfig
from inferline.quality.loop import QualityLoop
from inferline.registry.dataset import Dataset, parse_batch
from inferline.router.deployments import DeploymentPool
from inferline.server.app import create_app
from inferline.streams.scoring import Scorer
from inferline.testing.stub_upstream import StubProcess, start_stub
from tests.server.conftest import API_KEY, OTHER_KEY

SECRETS = {
    "email": "jane.roe@example.org",
    "card": "4111 1111 1111 1111",
    "key": "sk-live-9f8e7d6c5b4a39281716",
    "phone": "+1 415 555 0100",
    "custom": "EMP-424242",
}
REPLY_SECRET = "ops@corp-example.com"
ALPHA = {"authorization": f"Bearer {API_KEY}"}
BETA = {"authorization": f"Bearer {OTHER_KEY}"}


@pytest.fixture(scope="module")
def stub() -> Iterator[StubProcess]:
    # The answer itself leaks an address: answers are redacted too.
    process = start_stub("--reply", f"write to {REPLY_SECRET} today", "--tokens", "4")
    yield process
    process.stop()


def quality_config(tmp_path: Path, stub: StubProcess, drift: bool = False) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "tenants": [{"name": "alpha", "api_keys": [API_KEY]}, {"name": "beta", "api_keys": [OTHER_KEY]}],
            "deployments": [{"name": "stubbed", "kind": "remote", "base_url": f"{stub.url}/v1"}],
            "routes": [{"name": "quiet", "deployments": ["stubbed"]}],
            "telemetry": {"metering": False, "database_url": f"sqlite:///{tmp_path / 'inferline.db'}"},
            "quality": {
                "capture": {
                    "enabled": True,
                    "sample_rate": 1.0,
                    "route_sample_rates": {"quiet": 0.0},
                    "redact_patterns": [r"EMP-\d{6}"],
                },
                "drift": {"enabled": drift, "window": 20, "min_samples": 10},
            },
            "batch": {"data_dir": str(tmp_path / "files")},
        }
    )


@asynccontextmanager
async def quality_app(tmp_path: Path, stub: StubProcess) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    config = quality_config(tmp_path, stub)
    pool = DeploymentPool(config.deployments)
    await pool.load_all()
    app = create_app(config, pool)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://inferline"
        ) as client:
            yield client, app.state.quality
    finally:
        await pool.unload_all()


def planted_prompt() -> str:
    return "my details: " + ", ".join(SECRETS.values()) + ". Please keep them."


async def chat(
    client: httpx.AsyncClient, model: str, headers: dict[str, str], **extra: Any
) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": planted_prompt()}], **extra}
    response = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


def test_planted_secrets_never_reach_the_database_or_the_export(tmp_path: Path, stub: StubProcess) -> None:
    async def go() -> list[str]:
        async with quality_app(tmp_path, stub) as (client, quality):
            ids = []
            for extra in ({}, {"stream": True}):
                response = await chat(
                    client, "stubbed", {**ALPHA, "x-inferline-prompt-template": "support-v3"}, **extra
                )
                ids.append(response.headers["x-request-id"])
            quality.capture.drain()
            return ids

    request_ids = asyncio.run(go())
    database = tmp_path / "inferline.db"
    out = tmp_path / "export.jsonl"
    assert main(["data", "export", "-o", str(out), "--database-url", f"sqlite:///{database}"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["request_id"] for row in rows] == request_ids
    for row in rows:
        assert row["flags"] == ["sampled"]
        assert row["route"] == "stubbed"
        assert row["lineage"]["prompt_template"] == "support-v3"
        assert row["lineage"]["policy"] == "fixed"
        prompt = row["prompt"][0]["content"]
        for kind in ("email", "card", "key", "phone", "custom"):
            assert f"[REDACTED:{kind}]" in prompt, prompt
        assert row["completion"] == ["write to [REDACTED:email] today"]
    # Not in the exported file, and nowhere in the database's bytes (WAL included).
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("inferline.db*"))
    for secret in [*SECRETS.values(), REPLY_SECRET]:
        assert secret.encode() not in stored
        assert secret not in out.read_text()
    assert b"Please keep them" in stored  # the rest of the prompt is kept


def test_feedback_only_from_the_tenant_that_made_the_request(tmp_path: Path, stub: StubProcess) -> None:
    async def go() -> None:
        async with quality_app(tmp_path, stub) as (client, quality):
            # The route "quiet" samples nothing: the request is remembered, not captured.
            request_id = (await chat(client, "quiet", ALPHA)).headers["x-request-id"]
            quality.capture.drain()
            assert quality.capture.store.captured() == []
            rating = {"request_id": request_id, "score": -1, "comment": f"mail {SECRETS['email']}"}
            stolen = await client.post("/v1/feedback", json=rating, headers=BETA)
            assert stolen.status_code == 404, stolen.text
            unknown = await client.post("/v1/feedback", json={**rating, "request_id": "nope"}, headers=ALPHA)
            assert unknown.status_code == 404
            out_of_range = await client.post("/v1/feedback", json={**rating, "score": 3}, headers=ALPHA)
            assert out_of_range.status_code == 400
            assert "score" in out_of_range.json()["error"]["message"]
            own = await client.post("/v1/feedback", json=rating, headers=ALPHA)
            assert own.status_code == 200, own.text
            # The thumbs-down captured it after all, with its flag; the comment is redacted.
            [captured] = quality.capture.store.captured(flag="thumbs_down")
            assert captured.request_id == request_id
            assert captured.tenant == "alpha"
            [feedback] = quality.capture.store.feedback([request_id])
            assert (feedback.tenant, feedback.score) == ("alpha", -1)
            assert feedback.comment == "mail [REDACTED:email]"

    asyncio.run(go())


def test_batch_lines_are_captured_and_rated_but_not_drift(tmp_path: Path, stub: StubProcess) -> None:
    app = create_app(quality_config(tmp_path, stub, drift=True))
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "stubbed", "messages": [{"role": "user", "content": planted_prompt()}]},
        }
        for i in range(3)
    ]

    async def go() -> None:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://inferline") as client,
        ):
            quality = app.state.quality
            data = "".join(json.dumps(line) + "\n" for line in lines).encode()
            files = {"file": ("cases.jsonl", data, "application/jsonl")}
            upload = await client.post("/v1/files", data={"purpose": "batch"}, files=files, headers=ALPHA)
            assert upload.status_code == 200, upload.text
            body = {
                "input_file_id": upload.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            }
            batch = (await client.post("/v1/batches", json=body, headers=ALPHA)).json()
            for _ in range(300):
                batch = (await client.get(f"/v1/batches/{batch['id']}", headers=ALPHA)).json()
                if batch["status"] in ("completed", "failed", "expired", "cancelled"):
                    break
                await asyncio.sleep(0.05)
            assert batch["status"] == "completed", batch
            output = await client.get(f"/v1/files/{batch['output_file_id']}/content", headers=ALPHA)
            request_ids = sorted(
                json.loads(row)["response"]["request_id"] for row in output.text.splitlines()
            )
            quality.capture.drain()
            captured = quality.capture.store.captured()
            assert sorted(row.request_id for row in captured) == request_ids
            for row in captured:
                assert row.flags == ["sampled"]
                assert (row.tenant, row.route, row.endpoint) == ("alpha", "stubbed", "/v1/chat/completions")
                assert "[REDACTED:card]" in row.prompt[0]["content"]
                assert row.completion == ["write to [REDACTED:email] today"]
            rating = {"request_id": request_ids[0], "label": "wrong"}
            assert (await client.post("/v1/feedback", json=rating, headers=BETA)).status_code == 404
            assert (await client.post("/v1/feedback", json=rating, headers=ALPHA)).status_code == 200
            assert quality.drift.windows == {}  # one job's lines are not the route's live traffic

    asyncio.run(go())


def test_a_stream_workers_answers_are_captured_as_chats(tmp_path: Path, stub: StubProcess) -> None:
    redis = {"kind": "redis", "url": "redis://127.0.0.1:9", "stream": "tickets.in"}  # never connected here
    stream = StreamConfig.model_validate(
        {
            "name": "tickets",
            "source": redis,
            "sink": {**redis, "stream": "tickets.out"},
            "model": "stubbed",
            "task": "generate",
            "prompt_template": "Summarise for {customer}: {text}",
            "tenant": "alpha",
        }
    )

    async def go() -> None:
        async with quality_app(tmp_path, stub) as (client, quality):
            scorer = Scorer(stream, quality.router, quality.observe)  # as the server's stream workers do
            [scored] = await scorer.score([{"customer": SECRETS["email"], "text": "my card is broken"}])
            assert scored.result == {"text": f"write to {REPLY_SECRET} today"}
            quality.capture.drain()
            [row] = quality.capture.store.captured()
            assert (row.tenant, row.route, row.endpoint) == ("alpha", "stubbed", "stream:tickets")
            assert row.prompt == [
                {"role": "user", "content": "Summarise for [REDACTED:email]: my card is broken"}
            ]
            assert row.completion == ["write to [REDACTED:email] today"]

    asyncio.run(go())


def test_export_joins_the_edge_fleets_flagged_cases(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'inferline.db'}"
    case = {
        "seq": 7,
        "kind": "flagged",
        "model": "bot",
        "model_version": "3",
        "ts": 1000.0,
        "reason": "low_confidence",
        "request_id": "edge-1",
        "mean_logprob": -2.5,
        "prompt": [{"role": "user", "content": f"card {SECRETS['card']}"}],
        "completion": ["no idea"],
    }
    usage = {**case, "seq": 8, "kind": "usage"}
    body = json.dumps({"device_id": "robot-1", "num_dropped": 0, "records": [case, usage]}).encode()
    with Dataset(url) as dataset:
        dataset.store(parse_batch(body))
    out = tmp_path / "cases.parquet"
    argv = ["data", "export", "-o", str(out), "--format", "parquet", "--flag", "low_confidence"]
    assert main([*argv, "--database-url", url]) == 0
    import pyarrow.parquet as pq

    [row] = pq.read_table(out).to_pylist()
    assert (row["source"], row["route"], row["model_version"]) == ("edge", "bot", "3")
    assert json.loads(row["lineage"])["device_id"] == "robot-1"
    assert json.loads(row["prompt"]) == [{"role": "user", "content": "card [REDACTED:card]"}]


def test_capture_off_by_default_copies_nothing() -> None:
    from prometheus_client import CollectorRegistry

    loop = QualityLoop(ServerConfig(deployments=[]).quality, "sqlite://", CollectorRegistry())
    assert not loop.reads_bodies
