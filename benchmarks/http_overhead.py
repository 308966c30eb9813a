"""What the HTTP layer costs, and what dynamic batching buys for embeddings.

1. HTTP overhead: a short completion (1 prompt token in, 1 token out), (a) straight through
   AsyncEngine.generate in this process, (b) as POST /v1/completions to a real `inferline serve`
   process on loopback over a keep-alive connection, with a raw-socket client (inferline.bench.loopback)
   and with httpx. The three alternate, request by request, and the overhead is each pair's difference
   (b) - (a), reported at p50 / p99 / mean: the engine work is the same, so the difference is the
   client, the socket, parsing, routing, validation, serialisation and the event loop.
2. Embeddings/s of the server's /v1/embeddings (one sentence per request) with 1 and 32 concurrent
   clients, beside sentence-transformers encoding one request at a time in this process.

    .venv/bin/pip install -e '.[bench]'   # sentence-transformers, the peer
    .venv/bin/python benchmarks/http_overhead.py
    .venv/bin/python benchmarks/http_overhead.py --smoke   # seconds; the peer only if installed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from inferline.bench.harness import inferline_server
from inferline.bench.loopback import connect, post
from inferline.bench.report import git_commit
from inferline.config import EngineConfig, ServerConfig
from inferline.engine.async_engine import AsyncEngine
from inferline.models.store import resolve
from inferline.stats import percentile
from inferline.types import Request, SamplingParams

SENTENCES = [
    f"Sentence number {i} is about {topic}." for i, topic in enumerate(["cats", "rain", "code", "tea"] * 64)
]
CONFIG = {
    "deployments": [
        {"name": "smollm2", "kind": "llm", "source": "default", "engine": {"kv_cache_bytes": 64 << 20}},
        {"name": "minilm", "kind": "embedding", "source": "all-minilm-l6-v2", "max_batch_size": 64},
    ],
}
SMOKE = {"requests": 5, "warmup": 2, "embeddings": 16}
"""--smoke: every code path in seconds (the figures mean nothing)."""


async def paired_latencies(url: str, port: int, n: int, warmup: int) -> dict[str, list[float]]:
    """Alternate a direct engine call with each client's HTTP call, so drift in engine time cancels."""
    engine = await AsyncEngine.load(EngineConfig(kv_cache_bytes=64 << 20))
    prompt = engine.core.tokenizer.encode("Hi")
    params = SamplingParams(max_tokens=1, temperature=0)
    body = {"model": "smollm2", "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    raw = await connect(port)
    raw_request = post("/v1/completions", json.dumps(body).encode(), {})
    times: dict[str, list[float]] = {"direct": [], "raw": [], "httpx": []}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for i in range(n + warmup):
            started = time.perf_counter()
            async for _ in engine.generate(Request(f"d{i}", prompt, params)):
                pass
            after_direct = time.perf_counter()
            reply = await raw.request(raw_request)
            if reply.status != 200:
                raise RuntimeError(f"POST /v1/completions answered {reply.status}: {reply.body[:300]!r}")
            after_raw = time.perf_counter()
            (await client.post("/v1/completions", json=body)).raise_for_status()
            if i >= warmup:
                times["direct"].append(after_direct - started)
                times["raw"].append(after_raw - after_direct)
                times["httpx"].append(time.perf_counter() - after_raw)
    raw.close()
    await engine.shutdown(0)
    return times


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
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("peer skipped: sentence-transformers is not installed (pip install -e '.[bench]')", flush=True)
        return None
    model = SentenceTransformer(str(resolve("all-minilm-l6-v2").path), device="cpu")
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
    parser.add_argument("--warmup", type=int, default=10, help="untimed completions per side first")
    parser.add_argument("--embeddings", type=int, default=512, help="embedding requests per measurement")
    parser.add_argument("--smoke", action="store_true", help=f"tiny run: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()

    config = ServerConfig.model_validate(CONFIG)
    with tempfile.TemporaryDirectory() as tmp, inferline_server(config, Path(tmp)) as server:
        times = asyncio.run(paired_latencies(server.url, server.port, args.requests, args.warmup))
        embed = {c: asyncio.run(embeddings_per_s(server.url, c, args.embeddings)) for c in (1, 32)}
    peer = sentence_transformers_per_s(min(args.embeddings, 256))

    print(f"http_overhead  commit={git_commit()}  cpus={os.cpu_count()}  requests={args.requests}")
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
