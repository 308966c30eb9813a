"""A real `inferline serve` process on a loopback port, as users run it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

BIN = Path(sys.executable).with_name("inferline")
API_KEY = "sk-test-alpha"
OTHER_KEY = "sk-test-beta"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


def start_server(config: dict[str, Any], tmp_path: Path, ready_timeout_s: float = 90) -> ServerProcess:
    port = free_port()
    config_path = tmp_path / "inferline.yaml"
    config_path.write_text(yaml.safe_dump({**config, "port": port}))
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(BIN), "serve", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready in {ready_timeout_s} s:\n{server.log()}")


def llm_deployment(**engine: Any) -> dict[str, Any]:
    return {
        "name": "smollm2-135m-instruct",
        "kind": "llm",
        "source": "default",
        "aliases": ["default"],
        "engine": {"kv_cache_bytes": 256 << 20, **engine},
    }


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared server: the default chat model with tenants "alpha" and "beta"."""
    tmp_path = tmp_path_factory.mktemp("server")
    config = {
        "tenants": [
            {"name": "alpha", "api_keys": [API_KEY], "priority": "interactive"},
            {"name": "beta", "api_keys": [OTHER_KEY]},
        ],
        "models": [llm_deployment()],
    }
    process = start_server(config, tmp_path)
    yield process
    process.stop()
