"""Disconnects, full queues, graceful shutdown and safe start-up, on real server processes."""

import asyncio
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .conftest import (
    API_KEY,
    BIN,
    ServerProcess,
    free_port,
    kv_blocks_used,
    llm_deployment,
    read_port,
    start_server,
    write_config,
)

AUTH = {"authorization": f"Bearer {API_KEY}"}
LONG = {
    "model": "default",
    "prompt": "Tell me everything:",
    "max_tokens": 2000,
    "ignore_eos": True,
    "stream": True,
}


def test_client_disconnect_aborts_and_frees_kv_blocks(server: ServerProcess) -> None:
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json=LONG, headers=AUTH, timeout=30
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        assert kv_blocks_used(server) > 0
    deadline = time.monotonic() + 5
    while kv_blocks_used(server) > 0:
        assert time.monotonic() < deadline, "the abandoned request still holds KV blocks"
        time.sleep(0.05)


def test_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    deployment = {**llm_deployment(max_num_seqs=1), "max_queued_requests": 1}
    server = start_server({"deployments": [deployment]}, tmp_path)
    try:

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as client:
                body = {"model": "default", "prompt": "Count:", "max_tokens": 24, "ignore_eos": True}
                return await asyncio.gather(
                    *(client.post(f"{server.url}/v1/completions", json=body) for _ in range(6))
                )

        responses = asyncio.run(main())
        codes = sorted(r.status_code for r in responses)
        assert 429 in codes, codes
        assert 200 in codes, codes
        assert set(codes) <= {200, 429}
        refused = next(r for r in responses if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert "max_queued_requests" in refused.json()["error"]["message"]
    finally:
        assert server.stop() == 0


def test_sigterm_drains_in_flight_streams_then_exits_0(tmp_path: Path) -> None:
    server = start_server({"deployments": [llm_deployment()], "drain_timeout_s": 60}, tmp_path)
    received: list[str] = []
    first_chunk = threading.Event()

    def stream() -> None:
        body = {**LONG, "max_tokens": 40}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line:
                    received.append(line)
                    first_chunk.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first_chunk.wait(30)
    assert server.stop(timeout_s=90) == 0
    reader.join(10)
    assert received[-1] == "data: [DONE]"
    assert sum('"text"' in line for line in received) >= 39, "the stream was cut short by the shutdown"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/health", timeout=2)


def test_refuses_to_listen_beyond_loopback_without_keys() -> None:
    done = subprocess.run(
        [str(BIN), "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--api-key" in done.stderr
    assert "Traceback" not in done.stderr


def ready_after_s(port: int, started: float, deadline_s: float) -> float | None:
    """Seconds from `started` until GET /ready answers 200, polled every 50 ms; None past the deadline."""
    while time.monotonic() - started < deadline_s:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return None


def test_default_serve_is_ready_in_under_10_s() -> None:
    # Other processes on a shared machine only ever add to a start's time, so a start that misses 10 s
    # is tried again, up to three starts in all, and the fastest must make it (as timeit keeps the best
    # of its repeats): a server that needs longer than 10 s fails every try.
    ready_s: list[float] = []
    for _ in range(3):
        port = free_port()
        started = time.monotonic()
        process = subprocess.Popen(
            [str(BIN), "serve", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        try:
            took_s = ready_after_s(port, started, deadline_s=30)
            assert took_s is not None, "not ready within 30 s"
            ready_s.append(took_s)
            models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]
            assert {"smollm2-135m-instruct", "default", "all-minilm-l6-v2"} <= {m["id"] for m in models}
            # Nothing configured: quantization auto runs the default GGUF's Q4_1 blocks as int4.
            card = httpx.get(f"http://127.0.0.1:{port}/v1/models/default").json()
            (deployment,) = card["inferline"]["deployments"]
            assert (deployment["dtype"], deployment["quantization"]) == ("bfloat16", "int4")
            assert "Q4_1" in deployment["quantization_reason"]
        finally:
            process.terminate()
            assert process.wait(timeout=60) == 0
        if took_s < 10:
            break
    assert min(ready_s) < 10, f"ready after {', '.join(f'{s:.1f}' for s in ready_s)} s"


def test_http_stays_responsive_while_the_engine_computes(server: ServerProcess) -> None:
    body = {**LONG, "max_tokens": 60, "stream": False}
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(4) as pool:
        busy = [
            pool.submit(client.post, f"{server.url}/v1/completions", json=body, headers=AUTH)
            for _ in range(4)
        ]
        time.sleep(0.5)
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            assert client.get(f"{server.url}/health").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
        assert all(f.result().status_code == 200 for f in busy)
    assert sorted(latencies)[len(latencies) // 2] < 0.05, latencies


def test_metrics_expose_request_counts_and_latency_histograms(server: ServerProcess) -> None:
    httpx.post(
        f"{server.url}/v1/completions",
        json={"model": "default", "prompt": "Hi", "max_tokens": 1},
        headers=AUTH,
    )
    text = httpx.get(f"{server.url}/metrics").text
    assert re.search(r'inferline_http_requests_total\{route="/v1/completions",status="200"\} [1-9]', text)
    assert 'inferline_http_request_duration_seconds_bucket{le="0.005",route="/v1/completions"}' in text
    assert re.search(r'inferline_route_ttft_seconds_count\{deployment="[^"]+",route="default"\} [1-9]', text)
    assert re.search(r'inferline_tenant_tokens_total\{kind="completion",tenant="[^"]+"\} [1-9]', text)


def test_a_model_that_fails_to_load_stops_the_server_with_the_cause_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    broken = {"name": "broken", "kind": "onnx", "source": str(missing)}
    config_path = write_config(tmp_path, {"deployments": [broken]})
    done = subprocess.run(
        [str(BIN), "serve", "--config", str(config_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    message = next(line for line in done.stderr.splitlines() if line.startswith("error: "))
    assert f"deployment 'broken' (deployments[0], kind onnx, source '{missing}') failed to load" in message
    assert str(missing) in message.split("failed to load: ")[1]  # the cause, as the runner gave it
    assert "set `on_load_failure: serve_rest` in the config" in message


def test_with_serve_rest_a_model_that_fails_to_load_is_listed_and_the_others_serve(tmp_path: Path) -> None:
    broken = {"name": "broken", "kind": "onnx", "source": str(tmp_path / "missing.onnx")}
    config = {"deployments": [llm_deployment(), broken], "on_load_failure": "serve_rest"}
    config_path = write_config(tmp_path, config)
    process = subprocess.Popen(
        [str(BIN), "serve", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{read_port(tmp_path)}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "the chat model never became ready"
            try:
                states = httpx.get(f"{url}/ready", timeout=1).json()["models"]
                if states["smollm2-135m-instruct"] == "ready" and states["broken"] != "loading":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        for path in ("/ready", "/v2/health/ready"):
            ready = httpx.get(f"{url}{path}")
            assert ready.status_code == 200, path  # serve_rest: what loaded takes traffic
            assert list(ready.json()["failed"]) == ["broken"]
            assert "missing.onnx" in ready.json()["failed"]["broken"]
        response = httpx.post(f"{url}/v2/models/broken/infer", json={"inputs": []})
        assert response.status_code == 503
        assert "failed to load" in response.json()["error"]
        ok = httpx.post(f"{url}/v1/completions", json={"model": "default", "prompt": "Hi", "max_tokens": 1})
        assert ok.status_code == 200
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
