"""A real server with its own database and data dir, tenants alpha and beta, and the default chat and
embedding models; the batch tests share it."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.server.conftest import API_KEY, OTHER_KEY, ServerProcess, llm_deployment, start_server

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"
GAMMA_KEY = "sk-test-gamma"
TERMINAL = ("completed", "failed", "expired", "cancelled")


def batch_config(tmp_path: Path, **batch: Any) -> dict[str, Any]:
    return {
        "tenants": [
            {"name": "alpha", "api_keys": [API_KEY]},
            {"name": "beta", "api_keys": [OTHER_KEY]},
            {
                "name": "gamma",
                "api_keys": [GAMMA_KEY],
                "budget": {"limit_usd": 0.001, "period": "total"},
                "quotas": {"tokens_per_minute": 1000},
            },
        ],
        "deployments": [
            {**llm_deployment(), "price_output_per_1m": 10.0},
            {"name": EMBEDDING_MODEL, "kind": "embedding", "source": EMBEDDING_MODEL},
        ],
        "telemetry": {"database_url": f"sqlite:///{tmp_path / 'inferline.db'}"},
        "batch": {"data_dir": str(tmp_path / "data"), **batch},
    }


def chat_line(custom_id: str, content: str, max_tokens: int = 4, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
            **body,
        },
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def upload(client: openai.OpenAI, data: bytes, name: str = "input.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="batch").id


def wait_for(
    client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...] = TERMINAL, timeout_s: float = 120
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout_s} s")


def output_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


@pytest.fixture(scope="session")
def forecast_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Carbon Aware SDK forecast: dirty for the next hour, clean from 1 h to 2 h, dirty after."""
    start = int(time.time() // 300 * 300)
    points = [
        {"location": "test", "timestamp": _iso(start + i * 1800), "duration": 30, "value": value}
        for i, value in enumerate([500, 500, 100, 100, 450, 450, 450, 450])
    ]
    path = tmp_path_factory.mktemp("forecast") / "forecast.json"
    path.write_text(json.dumps([{"location": "test", "forecastData": points}]))
    return path


def _iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


@pytest.fixture(scope="session")
def batch_server(tmp_path_factory: pytest.TempPathFactory, forecast_path: Path) -> Iterator[ServerProcess]:
    tmp_path = tmp_path_factory.mktemp("batch-server")
    config = batch_config(
        tmp_path, max_file_bytes=64 << 10, carbon={"forecast": str(forecast_path), "default_lines_per_s": 1.0}
    )
    server = start_server(config, tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def alpha(batch_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{batch_server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="session")
def beta(batch_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{batch_server.url}/v1", api_key=OTHER_KEY, max_retries=0)


@pytest.fixture(scope="session")
def gamma(batch_server: ServerProcess) -> openai.OpenAI:
    """A tenant with a total budget of $0.001 (the chat model costs $10 per million output tokens)."""
    return openai.OpenAI(base_url=f"{batch_server.url}/v1", api_key=GAMMA_KEY, max_retries=0)
