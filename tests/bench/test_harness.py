"""The benchmarks' servers: a real `inferline serve` from a validated config, and servers that fail."""

import sys
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from inferline.bench.harness import free_port, inferline_server, spawned
from inferline.config import ServerConfig
from inferline.testing.stub_upstream import start_stub


def test_inferline_server_serves_its_config_and_stops_on_exit(tmp_path: Path) -> None:
    stub = start_stub()
    try:
        deployments = [{"name": "stub", "kind": "remote", "base_url": f"{stub.url}/v1"}]
        config = ServerConfig.model_validate({"deployments": deployments})
        with inferline_server(config, tmp_path, "front") as server:
            # What the caller set, on the port the harness picked; the server fills in the defaults.
            written = yaml.safe_load((tmp_path / "front.yaml").read_text())
            assert written == {"port": server.port, "deployments": deployments}
            reply = httpx.post(
                f"{server.url}/v1/chat/completions",
                json={"model": "stub", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["usage"]["completion_tokens"] == 4
        assert server.process.returncode is not None
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/health", timeout=1)
    finally:
        stub.stop()


def test_a_server_that_exits_before_it_is_ready_raises_with_what_it_said(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; sys.exit('models: extra inputs are not permitted')"]
    with (
        pytest.raises(RuntimeError, match=r"exited with 1 before it was ready(.|\n)*models: extra inputs"),
        spawned(command, free_port(), "/ready", tmp_path / "server.log"),
    ):
        pytest.fail("a server that exited was yielded")


def test_a_server_never_ready_is_killed_and_the_error_has_its_log(tmp_path: Path) -> None:
    script = "import time; print('loading weights', flush=True); time.sleep(60)"
    with (
        pytest.raises(
            RuntimeError, match=r"not ready in 3 s; its last answer: .*refused(.|\n)*loading weights"
        ),
        spawned(
            [sys.executable, "-c", script], free_port(), "/ready", tmp_path / "server.log", ready_timeout_s=3
        ),
    ):
        pytest.fail("a server that never answered was yielded")
    assert not [p for p in psutil.Process().children() if script in p.cmdline()]
