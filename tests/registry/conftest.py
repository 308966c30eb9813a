"""A registry catalog with signed versions of the default chat model, built once per test run (the GGUF is
about 100 MB: every copy and hash of it costs time)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferline.models.store import resolve
from inferline.registry.bundle import BundleMetadata, build_bundle
from inferline.registry.catalog import Catalog
from inferline.registry.signing import generate_key_pair, sign_bundle
from tests.server.conftest import API_KEY, BIN, ServerProcess, read_port, write_config

ADMIN_KEY = "sk-test-admin"


@dataclass(frozen=True)
class ServedRegistry:
    """A catalog with `bot` versions 1 and 2 (the same SmolLM2 weights, `prod` -> 1), signed by
    `public_key`."""

    database_url: str
    catalog_root: Path
    private_key: Path
    public_key: Path
    scratch: Path

    def catalog(self) -> Catalog:
        return Catalog(self.database_url, self.catalog_root)

    def push(self, source: Path, name: str, version: str, private_key: Path, public_key: Path) -> Path:
        """Bundle, sign and push `source`; returns the bundle's folder in the registry."""
        bundle = build_bundle(
            source, self.scratch / f"{name}-{version}", BundleMetadata(name=name, version=version)
        )
        sign_bundle(bundle.path, private_key)
        with self.catalog() as catalog:
            return catalog.push(bundle.path, public_key).path

    def server_config(self, deployments: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "api_keys": [API_KEY],
            "admin_api_keys": [ADMIN_KEY],
            "deployments": deployments,
            "registry": {"trusted_public_keys": [str(self.public_key)], "database_url": self.database_url},
            "telemetry": {"metering": False, "access_log": False},
        }


def registry_deployment(name: str, source: str) -> dict[str, Any]:
    return {"name": name, "kind": "llm", "source": source, "engine": {"kv_cache_bytes": 128 << 20}}


@pytest.fixture(scope="session")
def served_registry(tmp_path_factory: pytest.TempPathFactory) -> ServedRegistry:
    root = tmp_path_factory.mktemp("served-registry")
    keys = generate_key_pair(root / "keys")
    registry = ServedRegistry(
        database_url=f"sqlite:///{root / 'registry.db'}",
        catalog_root=root / "bundles",
        private_key=keys.private_key,
        public_key=keys.public_key,
        scratch=root / "scratch",
    )
    gguf = resolve("default").path
    for version in ("1", "2"):
        registry.push(gguf, "bot", version, keys.private_key, keys.public_key)
    with registry.catalog() as catalog:
        catalog.promote("bot", "1", "prod")
    return registry


def start_until_loaded(config: dict[str, Any], tmp_path: Path, timeout_s: float = 120) -> ServerProcess:
    """`inferline serve` with `config`, once every deployment has loaded or failed to (a server with a
    refused deployment is never /ready, so this waits on the admin API instead)."""
    config_path = write_config(tmp_path, config)
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(BIN), "--verbose", "serve", "--config", str(config_path)],  # INFO: swaps are logged
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = ServerProcess(process, f"http://127.0.0.1:{read_port(tmp_path)}", log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            states = admin_get(server, "/admin/deployments")["deployments"]
            if all(d["state"] != "loading" for d in states):
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"deployments not loaded in {timeout_s} s:\n{server.log()}")


def admin_get(server: ServerProcess, path: str) -> dict[str, Any]:
    reply = httpx.get(f"{server.url}{path}", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=5)
    reply.raise_for_status()
    result: dict[str, Any] = reply.json()
    return result


def set_version(server: ServerProcess, deployment: str, version: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/admin/deployments/{deployment}/version",
        json={"version": version},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=120,
    )


def chat(server: ServerProcess, model: str, max_tokens: int = 4) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
