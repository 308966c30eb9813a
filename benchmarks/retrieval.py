"""Vector search, ingest and response caches, measured on this machine's CPU.

1. Search: N chunks of 384-d vectors (100,000; MiniLM's width), random but clustered like sentence
   embeddings: 200 topic centres plus a 48-dimensional latent spread and a little isotropic noise, so
   the set has the low intrinsic dimension real embeddings have (uniform random 384-d points have none,
   and no approximate index finds neighbours among them). Queries are drawn the same way. Per
   backend: build or insert time, search p50/p99 at k=10 (one query at a time, one client), and
   recall@10 against exact (NumPy brute force). Backends: inferline's embedded store flat and HNSW
   (FAISS), usearch HNSW, sqlite-vec (when this Python's sqlite3 can load extensions), and pgvector
   HNSW (PostgreSQL from the pgserver package).
2. Ingest (embedding included): text chunks of ~200 words embedded with all-MiniLM-L6-v2 on the CPU
   and added to the embedded store; chunks/s.
3. Semantic cache quality: benchmarks/data/semantic_cache_pairs.jsonl, pairs of questions labelled
   "hit" (paraphrases) or "miss" (negations, other numbers, names, subjects or actions); MiniLM
   cosine similarity; precision and recall of "hit" per threshold.
4. Exact-cache hit: an in-process app (ASGI, no sockets) whose cached route fronts the stub upstream;
   p50 of the server's own time for a hit (`x-inferline-overhead-ms`: all of it, nothing waits on a
   deployment) beside that of a routed request to the stub, and the client's end-to-end p50 of both.

    .venv/bin/python benchmarks/retrieval.py            # ~20 min on 2 cores (HNSW builds dominate)
    .venv/bin/python benchmarks/retrieval.py --smoke    # seconds
    .venv/bin/python benchmarks/retrieval.py --backends embedded pgvector   # a subset of the search table
    .venv/bin/python benchmarks/retrieval.py --backends pgvector --num-vectors 10000   # minutes, loaded
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from inferline.config import ServerConfig, VectorStoresConfig
from inferline.db import open_engine
from inferline.retrieval.backend import Chunk
from inferline.retrieval.cache import same_specifics
from inferline.retrieval.embedded import EmbeddedBackend
from inferline.retrieval.index import StoreIndex
from inferline.router.deployments import DeploymentPool
from inferline.runners.embedding import EmbeddingRunner
from inferline.server.app import create_app
from inferline.stats import percentile
from inferline.testing.stub_upstream import start_stub

DATA = Path(__file__).parent / "data"
DIM = 384
K = 10
THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96)
CHOSEN_THRESHOLD = 0.92
"""The threshold README and CacheConfig suggest (see its line in the table)."""
FULL = {"num_vectors": 100_000, "num_queries": 200, "ingest_chunks": 2000, "cache_requests": 300}
SMOKE = {"num_vectors": 2000, "num_queries": 20, "ingest_chunks": 32, "cache_requests": 20}
API_KEY = "sk-bench"


def clustered(num: int, seed: int) -> np.ndarray:
    """Unit vectors: topic centre + latent spread + noise (see the module's note)."""
    structure = np.random.default_rng(0)
    centres = structure.standard_normal((200, DIM)).astype(np.float32)
    latent = (structure.standard_normal((48, DIM)) / np.sqrt(48)).astype(np.float32)
    rng = np.random.default_rng(seed)
    vectors = (
        0.3 * centres[rng.integers(0, 200, num)]
        + rng.standard_normal((num, 48)).astype(np.float32) @ latent
        + 0.05 * rng.standard_normal((num, DIM)).astype(np.float32)
    )
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def timed_search(search: Callable[[np.ndarray], list[int]], queries: np.ndarray, truth: np.ndarray) -> str:
    latencies, recalls = [], []
    for query, expected in zip(queries, truth, strict=True):
        started = time.perf_counter()
        found = search(query)
        latencies.append((time.perf_counter() - started) * 1000)
        recalls.append(len(set(found) & set(expected.tolist())) / K)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return f"{p50:8.2f} {p99:8.2f} {np.mean(recalls):10.3f}"


BACKENDS = ("embedded", "usearch", "sqlite-vec", "pgvector")


def search_table(num_vectors: int, num_queries: int, backends: list[str]) -> None:
    vectors, queries = clustered(num_vectors, 1), clustered(num_queries, 2)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]
    ids = np.arange(num_vectors, dtype=np.int64)
    print(f"\n== search: {num_vectors} x {DIM} clustered vectors, k={K}, {num_queries} queries ==")
    print(f"{'backend':46} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>10}")
    for kind in ("flat", "hnsw") if "embedded" in backends else ():
        index = StoreIndex(DIM, kind == "hnsw", ef_search=VectorStoresConfig().hnsw_ef_search)
        started = time.perf_counter()
        index.add(ids, [""] * num_vectors, vectors)
        build_s = time.perf_counter() - started

        def embedded(query: np.ndarray, index: StoreIndex = index) -> list[int]:
            return [i for i, _ in index.search(query, K, None, False)]

        print(f"{'inferline embedded ' + kind:46} {build_s:8.1f} {timed_search(embedded, queries, truth)}")
    rows = {"usearch": usearch_row, "sqlite-vec": sqlite_vec_row, "pgvector": pgvector_row}
    for name, row in rows.items():
        if name in backends:
            row(vectors, queries, truth)


def usearch_row(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> None:
    try:
        from usearch.index import Index
    except ImportError:
        print(f"{'usearch hnsw':46} not installed (pip install usearch)")
        return
    index = Index(
        ndim=DIM, metric="ip", dtype="f32", connectivity=32, expansion_add=128, expansion_search=128
    )
    started = time.perf_counter()
    index.add(np.arange(len(vectors)), vectors)
    build_s = time.perf_counter() - started
    row = timed_search(lambda q: [int(k) for k in index.search(q, K).keys], queries, truth)
    print(f"{'usearch hnsw (M=32)':46} {build_s:8.1f} {row}")


def sqlite_vec_row(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> None:
    connection = sqlite3.connect(":memory:")
    if not hasattr(connection, "enable_load_extension"):
        print(f"{'sqlite-vec (flat only)':46} cannot load: this Python's sqlite3 has no extension loading")
        return
    try:
        import sqlite_vec
    except ImportError:
        print(f"{'sqlite-vec (flat only)':46} not installed (pip install sqlite-vec)")
        return
    connection.enable_load_extension(True)
    sqlite_vec.load(connection)
    connection.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{DIM}] distance_metric=cosine)")
    started = time.perf_counter()
    connection.executemany(
        "INSERT INTO v(rowid, embedding) VALUES (?, ?)", ((i, v.tobytes()) for i, v in enumerate(vectors))
    )
    build_s = time.perf_counter() - started
    query = "SELECT rowid FROM v WHERE embedding MATCH ? AND k = ?"
    row = timed_search(lambda q: [r[0] for r in connection.execute(query, (q.tobytes(), K))], queries, truth)
    print(f"{'sqlite-vec (flat only)':46} {build_s:8.1f} {row}")


def pgvector_row(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> None:
    """A default pgvector store (VectorStoresConfig's ef_search) filled as files fill one: the first add
    (95% of the rows, a big first file) builds the HNSW index in one pass, the rest join it row by row
    in adds of 1,000. The row names the m, ef_construction and ef_search the searches ran with."""
    from inferline.retrieval.pgvector import PgvectorBackend
    from inferline.testing.postgres import pgvector_bin_dir, started_postgres

    try:
        bin_dir = pgvector_bin_dir()
    except RuntimeError as error:
        print(f"{'pgvector hnsw':46} {error}")
        return
    with started_postgres(bin_dir) as server:
        backend = PgvectorBackend(server.url, ef_search=VectorStoresConfig().hnsw_ef_search)
        backend.create("vs_be0c", DIM)
        chunks = [Chunk("f", i, "") for i in range(len(vectors))]
        first = len(vectors) * 95 // 100
        started = time.perf_counter()
        backend.add("vs_be0c", chunks[:first], vectors[:first])
        built = time.perf_counter()
        for start in range(first, len(vectors), 1000):
            backend.add("vs_be0c", chunks[start : start + 1000], vectors[start : start + 1000])
        finished = time.perf_counter()
        row = timed_search(lambda q: [h.chunk.index for h in backend.search("vs_be0c", q, K)], queries, truth)
        used = backend.index_settings("vs_be0c")
        label = f"pgvector hnsw (m={used['m']}, efc={used['ef_construction']}, ef={used['ef_search']})"
        print(f"{label:46} {finished - started:8.1f} {row}")
        per_s = (len(vectors) - first) / max(finished - built, 1e-9)
        print(f"{'':46} (first {first} rows at once: {built - started:.1f} s; then {per_s:.0f} rows/s)")
        backend.close()


def ingest_row(runner: EmbeddingRunner, num_chunks: int, tmp: Path) -> None:
    words = (DATA / "quality_text.txt").read_text().split()
    texts = [" ".join(words[(i * 37) % max(1, len(words) - 200) :][:200]) for i in range(num_chunks)]
    backend = EmbeddedBackend(
        open_engine(f"sqlite:///{tmp / 'ingest.db'}", "bench"), tmp / "idx", "auto", 50_000, 128
    )
    backend.create("vs_ingest", DIM)
    started = time.perf_counter()
    for start in range(0, num_chunks, 32):
        part = texts[start : start + 32]
        vectors = runner.embed(part).vectors
        backend.add("vs_ingest", [Chunk("f", start + i, t) for i, t in enumerate(part)], vectors)
    rate = num_chunks / (time.perf_counter() - started)
    print(f"\n== ingest ==\nchunks of 200 words, MiniLM on the CPU + embedded store: {rate:.1f} chunks/s")


def semantic_table(runner: EmbeddingRunner) -> None:
    pairs = [json.loads(line) for line in (DATA / "semantic_cache_pairs.jsonl").read_text().splitlines()]
    first = runner.embed([p["first"] for p in pairs]).vectors
    second = runner.embed([p["second"] for p in pairs]).vectors
    similarity = np.sum(first * second, axis=1)
    labels = np.array([p["label"] == "hit" for p in pairs])
    specifics = np.array([same_specifics(p["first"], p["second"]) for p in pairs])
    num_hits = int(labels.sum())
    print(f"\n== semantic cache: {num_hits} paraphrases, {len(pairs) - num_hits} near-misses, MiniLM ==")
    print("similarity alone | with the numbers-and-negation check (what the cache does)")
    print(
        f"{'threshold':>9} {'precision':>9} {'recall':>7} | {'precision':>9} {'recall':>7} {'false hits':>10}"
    )
    for threshold in THRESHOLDS:
        alone = similarity >= threshold
        checked = alone & specifics
        false = [p["kind"] for p, wrong in zip(pairs, checked & ~labels, strict=True) if wrong]
        mark = "  <- chosen" if threshold == CHOSEN_THRESHOLD else ""
        print(
            f"{threshold:9.2f} {_precision(alone, labels):9.3f} {(alone & labels).sum() / num_hits:7.3f} | "
            f"{_precision(checked, labels):9.3f} {(checked & labels).sum() / num_hits:7.3f} {len(false):10d} "
            f"{sorted(set(false))}{mark}"
        )


def _precision(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float((predicted & labels).sum() / max(1, int(predicted.sum())))


def cache_config(stub_url: str, tmp: Path) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "tenants": [{"name": "bench", "api_keys": [API_KEY]}],
            "deployments": [{"name": "stub", "kind": "remote", "base_url": f"{stub_url}/v1"}],
            "routes": [{"name": "cached", "deployments": ["stub"], "cache": {}}],
            "telemetry": {"metering": False, "database_url": f"sqlite:///{tmp / 'cache.db'}"},
            "batch": {"data_dir": str(tmp / "data")},
        }
    )


async def exact_cache_row(num_requests: int, tmp: Path) -> None:
    stub = start_stub("--reply", "a cached answer", "--tokens", "8")
    try:
        config = cache_config(stub.url, tmp)
        pool = DeploymentPool(config.deployments)
        await pool.load_all()
        app = create_app(config, pool)
        headers = {"authorization": f"Bearer {API_KEY}"}
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8,
            "temperature": 0,
        }
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://x") as client:
            rows = {}
            for name, model in (("hit (exact, memory)", "cached"), ("routed to the stub", "stub")):
                server_ms, client_ms = [], []
                for i in range(num_requests + 20):
                    started = time.perf_counter()
                    response = await client.post(
                        "/v1/chat/completions", json={**body, "model": model}, headers=headers
                    )
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    if i >= 20:  # the first fills the cache; then a warm-up
                        server_ms.append(float(response.headers["x-inferline-overhead-ms"]))
                        client_ms.append(elapsed_ms)
                assert model != "cached" or response.headers["x-inferline-cache"] == "hit"
                rows[name] = (percentile(server_ms, 50), percentile(client_ms, 50))
        await pool.unload_all()
    finally:
        stub.stop()
    print("\n== exact cache, in-process app (ASGI) ==")
    print(f"{'request':22} {'server p50 ms':>13} {'client p50 ms':>13}")
    for name, (server, client) in rows.items():
        print(f"{name:22} {server:13.3f} {client:13.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="every path in seconds; the figures mean nothing"
    )
    parser.add_argument(
        "--num-vectors", type=int, help=f"chunks in the search table (default {FULL['num_vectors']:,})"
    )
    parser.add_argument(
        "--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="search backends to measure"
    )
    args = parser.parse_args()
    sizes = {
        **(SMOKE if args.smoke else FULL),
        **({"num_vectors": args.num_vectors} if args.num_vectors else {}),
    }
    print(f"config: {sizes}; the machine is shared, so figures are indicative")
    search_table(sizes["num_vectors"], sizes["num_queries"], args.backends)
    runner = EmbeddingRunner.from_source("all-minilm-l6-v2")
    with tempfile.TemporaryDirectory() as tmp:
        ingest_row(runner, sizes["ingest_chunks"], Path(tmp))
        semantic_table(runner)
        asyncio.run(exact_cache_row(sizes["cache_requests"], Path(tmp)))


if __name__ == "__main__":
    main()
