"""One installed model version running as the server app, health-checked before it takes traffic.

Design note: the agent does not reimplement serving; it runs the ordinary server app with a single
deployment pointing at the bundle's GGUF file and enters the app's lifespan itself, so the model loads
beside the version already serving. The app factory is handed in by the CLI (`create_app`) because edge/
sits below server/ and may not import it; readiness is read from the app's own GET /ready. The health
check is one real chat completion sent through that app: the path a client's request takes (routing,
tokenizer, engine, sampling).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.applications import Starlette

from inferline.config import LLMDeploymentConfig, ServerConfig, TelemetryConfig
from inferline.errors import InferlineError

AppFactory = Callable[[ServerConfig], Starlette]
"""Builds the server app for a config: `inferline.server.app.create_app`."""

_HEALTH_PROMPT = "Say hello."


class HealthCheckError(InferlineError):
    """A new version failed to load or to answer its first request; the agent keeps the previous one."""


@dataclass(frozen=True)
class ModelSpec:
    """What to run: the public model name, the installed version and its weights."""

    name: str  # the name clients send as `model`
    version: str  # reported in x-inferline-version
    model_file: Path  # the bundle's GGUF file, or its folder when it is a Hugging Face model folder
    home: Path  # the agent home: the usage database lives there, on the device


class LocalModel:
    """A started app for one version. `start()` loads and health-checks it; `close()` drains and unloads."""

    def __init__(self, spec: ModelSpec, app_factory: AppFactory, load_timeout_s: float = 300.0) -> None:
        self.spec = spec
        self.load_timeout_s = load_timeout_s
        config = ServerConfig(
            deployments=[
                LLMDeploymentConfig(name=spec.name, source=str(spec.model_file), version=spec.version)
            ],
            # Every answer's confidence in its usage record: the agent flags the unsure ones (cases.py).
            telemetry=TelemetryConfig(
                database_url=f"sqlite:///{spec.home / 'usage.db'}",
                log_format="text",
                record_mean_logprob=True,
            ),
        )
        self.app = app_factory(config)
        self.in_flight = 0  # requests the edge app is forwarding to this version (for the drain)
        self._lifespan: AbstractAsyncContextManager[object] | None = None

    async def start(self) -> None:
        """Load the model and answer one request; HealthCheckError (after unloading) if either fails."""
        lifespan = self.app.router.lifespan_context(self.app)
        await lifespan.__aenter__()
        self._lifespan = lifespan
        try:
            await self._wait_loaded()
            await self._answer_one_request()
        except BaseException:
            await self.close(drain_s=0.0)
            raise

    async def close(self, drain_s: float = 10.0) -> None:
        """Wait up to `drain_s` for requests in flight (the app no longer gets new ones), then unload."""
        if self._lifespan is None:
            return
        deadline = time.monotonic() + drain_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        lifespan, self._lifespan = self._lifespan, None
        await lifespan.__aexit__(None, None, None)

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://edge.local")

    async def _wait_loaded(self) -> None:
        deadline = time.monotonic() + self.load_timeout_s
        async with self._client() as client:
            while (response := await client.get("/ready")).status_code != 200:
                state = response.json().get("models", {}).get(self.spec.name, "loading")
                if state != "loading":
                    raise HealthCheckError(f"version {self.spec.version} failed to load: {state}")
                if time.monotonic() > deadline:
                    raise HealthCheckError(
                        f"version {self.spec.version} did not load within {self.load_timeout_s:g} s"
                    )
                await asyncio.sleep(0.05)

    async def _answer_one_request(self) -> None:
        body = {
            "model": self.spec.name,
            "messages": [{"role": "user", "content": _HEALTH_PROMPT}],
            "max_tokens": 4,
            "temperature": 0,
        }
        async with self._client() as client:
            response = await client.post("/v1/chat/completions", json=body, timeout=60.0)
        if response.status_code != 200:
            raise HealthCheckError(
                f"version {self.spec.version} answered its health-check request with HTTP"
                f" {response.status_code}: {response.text[:300]}"
            )
        usage = response.json().get("usage", {})
        if not usage.get("completion_tokens"):
            raise HealthCheckError(f"version {self.spec.version} generated no tokens for its health check")
