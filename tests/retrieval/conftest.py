"""One in-process app for the cache and rag tests (the default chat and embedding models, a Redis, a
PostgreSQL with pgvector, tenants alpha and beta), served over ASGI on an event loop of its own that
the tests hand coroutines to."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import openai
import pytest

from inferline.config import ServerConfig
from inferline.router.deployments import DeploymentPool
from inferline.server.app import create_app
from inferline.types import UsageRecord
from tests.server.conftest import API_KEY, OTHER_KEY, llm_deployment

T = TypeVar("T")
LLM = "smollm2-135m-instruct"


@dataclass
class InProcess:
    loop: asyncio.AbstractEventLoop
    pool: DeploymentPool
    http: httpx.AsyncClient
    records: list[UsageRecord] = field(default_factory=list)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout=120)

    def openai(self, key: str = API_KEY) -> openai.AsyncOpenAI:
        """The official client, over the same ASGI transport; call it inside `run`."""
        return openai.AsyncOpenAI(
            base_url="http://inferline/v1", api_key=key, http_client=self.http, max_retries=0
        )

    def post(self, path: str, body: dict[str, Any], key: str = API_KEY) -> httpx.Response:
        return self.run(self.http.post(path, json=body, headers={"authorization": f"Bearer {key}"}))


@pytest.fixture(scope="session")
def retrieval_app(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, pgvector_url: str
) -> Iterator[InProcess]:
    """Its vector stores on pgvector (the suite's shared server covers the embedded backend)."""
    tmp_path = tmp_path_factory.mktemp("retrieval")
    cache = {"semantic_threshold": 0.92}
    config = ServerConfig.model_validate(
        {
            "tenants": [{"name": "alpha", "api_keys": [API_KEY]}, {"name": "beta", "api_keys": [OTHER_KEY]}],
            "deployments": [
                llm_deployment(),
                {"name": "all-minilm-l6-v2", "kind": "embedding", "source": "all-minilm-l6-v2"},
            ],
            "routes": [
                {"name": "cached", "deployments": [LLM], "cache": cache},
                {"name": "shared-cache", "deployments": [LLM], "cache": {**cache, "store": "redis"}},
                {"name": "docs", "policy": "rag", "deployments": [LLM], "rag": {"vector_store": "handbook"}},
            ],
            "redis_url": redis_url,
            "vector_stores": {"backend": "pgvector", "pgvector_url": pgvector_url},
            "telemetry": {"metering": False, "database_url": f"sqlite:///{tmp_path / 'inferline.db'}"},
            "batch": {"data_dir": str(tmp_path / "data")},
        }
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    pool = DeploymentPool(config.deployments)
    app = create_app(config, pool)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://inferline", timeout=120)
    served = InProcess(loop, pool, http)
    app.state.router.listeners.append(served.records.append)
    lifespan = app.router.lifespan_context(app)  # as a server runs it: loads, and closes what it opened
    served.run(lifespan.__aenter__())
    served.run(_until_ready(pool))
    yield served
    served.run(http.aclose())
    served.run(lifespan.__aexit__(None, None, None))
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


async def _until_ready(pool: DeploymentPool) -> None:
    while not pool.is_ready(allow_failed=False):
        await asyncio.sleep(0.05)
