"""Batch inference against the same prompts sent online, to the same `inferline serve` process.

1. Chat: output tokens/s of one batch of N lines (POST /v1/files + /v1/batches, timed from creation to
   `completed`, validation included) beside the best that the same requests reach sent online at
   concurrency 1..64 (greedy, EOS ignored, so every line generates exactly --max-tokens).
2. Embeddings: sentences/s of an embeddings batch beside /v1/embeddings online at the best client
   concurrency, and sentence-transformers `encode` (batches of 64) in this process when installed.
   Beside them, the engine's ceiling: the same conversations through `inferline.LLM` in this process.
3. Interactive TTFT p95 (streamed chat, an `interactive` tenant, one at a time) with no other load, and
   while a chat batch runs in the batch class.

    .venv/bin/python benchmarks/batch.py                # the issue's sizes: minutes on a GPU, long on CPU
    .venv/bin/python benchmarks/batch.py --smoke        # seconds; the figures mean nothing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from inferline.bench.harness import inferline_server
from inferline.bench.report import git_commit
from inferline.config import ServerConfig
from inferline.models.store import resolve
from inferline.stats import percentile

BATCH_KEY, ONLINE_KEY = "sk-bench-batch", "sk-bench-online"
SYSTEM = "You are a helpful assistant. Answer in one short paragraph."
TOPICS = ["cats", "rain", "code", "tea", "ships", "maps", "bread", "stars"]
SMOKE = {
    "lines": 8,
    "max_tokens": 4,
    "embeddings": 32,
    "ttft_requests": 4,
    "concurrency": [1, 4],
    "ceiling_seqs": [32],
}
"""--smoke: every code path in seconds (the figures mean nothing)."""


def config(tmp: Path) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "tenants": [
                # the same class online as in the batch: conversational admission would refuse c=64 with 429
                {"name": "batch", "api_keys": [BATCH_KEY], "priority": "batch"},
                {"name": "online", "api_keys": [ONLINE_KEY], "priority": "interactive"},
            ],
            "deployments": [
                {
                    "name": "smollm2",
                    "kind": "llm",
                    "source": "default",
                    "engine": {"kv_cache_bytes": 256 << 20},
                },
                {"name": "minilm", "kind": "embedding", "source": "all-minilm-l6-v2", "max_batch_size": 64},
            ],
            "telemetry": {"database_url": f"sqlite:///{tmp / 'bench.db'}", "access_log": False},
            "batch": {"data_dir": str(tmp / "data")},
        }
    )


def chat_body(i: int, max_tokens: int) -> dict[str, Any]:
    question = f"Question {i}: tell me something about {TOPICS[i % len(TOPICS)]}."
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return {
        "model": "smollm2",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }


def sentence(i: int) -> str:
    return f"Sentence number {i} is about {TOPICS[i % len(TOPICS)]}."


async def online_rate(
    url: str, path: str, bodies: list[dict[str, Any]], concurrency: int
) -> tuple[float, int]:
    """(seconds, output tokens) for every body sent with `concurrency` clients."""
    queue = list(reversed(bodies))
    tokens = 0
    headers = {"authorization": f"Bearer {BATCH_KEY}"}
    async with httpx.AsyncClient(base_url=url, timeout=600, headers=headers) as client:

        async def worker() -> None:
            nonlocal tokens
            while queue:
                reply = await client.post(path, json=queue.pop())
                reply.raise_for_status()
                tokens += reply.json()["usage"].get("completion_tokens", 0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, tokens


async def submit(client: httpx.AsyncClient, path: str, bodies: list[dict[str, Any]]) -> str:
    lines = b"".join(
        json.dumps({"custom_id": f"l{i}", "method": "POST", "url": path, "body": b}).encode() + b"\n"
        for i, b in enumerate(bodies)
    )
    uploaded = await client.post("/v1/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"})
    uploaded.raise_for_status()
    created = await client.post(
        "/v1/batches",
        json={"input_file_id": uploaded.json()["id"], "endpoint": path, "completion_window": "24h"},
    )
    created.raise_for_status()
    return str(created.json()["id"])


async def batch_rate(url: str, path: str, bodies: list[dict[str, Any]]) -> tuple[float, int]:
    """(seconds from creation to completed, output tokens) for one batch of `bodies`."""
    async with httpx.AsyncClient(
        base_url=url, timeout=600, headers={"authorization": f"Bearer {BATCH_KEY}"}
    ) as c:
        started = time.perf_counter()
        batch_id = await submit(c, path, bodies)
        while (batch := (await c.get(f"/v1/batches/{batch_id}")).json())["status"] not in (
            "completed",
            "failed",
        ):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        if batch["status"] != "completed" or batch["request_counts"]["failed"]:
            raise RuntimeError(f"batch {batch_id} ended {batch['status']}: {batch}")
        output = (await c.get(f"/v1/files/{batch['output_file_id']}/content")).text.splitlines()
    tokens = sum(json.loads(line)["response"]["body"]["usage"].get("completion_tokens", 0) for line in output)
    return elapsed, tokens


async def ttfts(url: str, n: int) -> list[float]:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "stream": True,
    }
    times = []
    async with httpx.AsyncClient(
        base_url=url, timeout=120, headers={"authorization": f"Bearer {ONLINE_KEY}"}
    ) as c:
        for _ in range(n):
            started = time.perf_counter()
            first: float | None = None
            async with c.stream("POST", "/v1/chat/completions", json=body) as reply:
                async for line in reply.aiter_lines():  # read to the end: the next request starts idle
                    if first is None and '"content":"' in line and '"content":""' not in line:
                        first = time.perf_counter() - started
            if first is None:
                raise RuntimeError("a streamed chat completion carried no content")
            times.append(first)
    return times


async def ttft_during_batch(url: str, bodies: list[dict[str, Any]], n: int) -> list[float]:
    async with httpx.AsyncClient(
        base_url=url, timeout=600, headers={"authorization": f"Bearer {BATCH_KEY}"}
    ) as c:
        batch_id = await submit(c, "/v1/chat/completions", bodies)
        while (await c.get(f"/v1/batches/{batch_id}")).json()["in_progress_at"] is None:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the engine full of batch lines
        measured = await ttfts(url, n)
        await c.post(f"/v1/batches/{batch_id}/cancel")
    return measured


def engine_ceiling(bodies: list[dict[str, Any]], max_tokens: int, seqs: list[int]) -> dict[int, float]:
    """Output tok/s of the same conversations through `inferline.LLM` in this process, per max_num_seqs:
    no server, no HTTP, no event loop, nothing else on the cores. No served path, batch or online, can
    beat the best of these on this machine, so it bounds the batch/online ratio the hardware allows."""
    from inferline import LLM
    from inferline.types import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    conversations = [body["messages"] for body in bodies]
    rates = {}
    for max_num_seqs in seqs:
        llm = LLM("default", max_num_seqs=max_num_seqs, kv_cache_bytes=256 << 20)
        llm.chat(conversations[:4], params)  # warm-up
        started = time.perf_counter()
        outputs = llm.chat(conversations, params)
        elapsed = time.perf_counter() - started
        rates[max_num_seqs] = sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed
        del llm
    return rates


def sentence_transformers_per_s(texts: list[str]) -> float | None:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("peer skipped: sentence-transformers is not installed (pip install -e '.[bench]')", flush=True)
        return None
    model = SentenceTransformer(str(resolve("all-minilm-l6-v2").path), device="cpu")
    model.encode(texts[:64], batch_size=64)
    started = time.perf_counter()
    model.encode(texts, batch_size=64)
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=2000, help="chat lines")
    parser.add_argument("--max-tokens", type=int, default=32, help="generated tokens per chat line")
    parser.add_argument("--embeddings", type=int, default=20_000, help="embedding lines")
    parser.add_argument("--ttft-requests", type=int, default=40, help="interactive requests per TTFT figure")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64], help="online clients")
    parser.add_argument(
        "--ceiling-seqs", type=int, nargs="+", default=[32, 64], help="max_num_seqs of the in-process runs"
    )
    parser.add_argument("--smoke", action="store_true", help=f"tiny run: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()

    chats = [chat_body(i, args.max_tokens) for i in range(args.lines)]
    texts = [sentence(i) for i in range(args.embeddings)]
    embeds = [{"model": "minilm", "input": t} for t in texts]
    with tempfile.TemporaryDirectory() as tmp, inferline_server(config(Path(tmp)), Path(tmp)) as server:
        url = server.url
        asyncio.run(online_rate(url, "/v1/chat/completions", chats[:4], 4))  # warm-up
        online = {
            c: asyncio.run(online_rate(url, "/v1/chat/completions", chats, c)) for c in args.concurrency
        }
        batch_s, batch_tokens = asyncio.run(batch_rate(url, "/v1/chat/completions", chats))
        online_embed = {
            c: asyncio.run(online_rate(url, "/v1/embeddings", embeds, c)) for c in args.concurrency
        }
        embed_batch_s, _ = asyncio.run(batch_rate(url, "/v1/embeddings", embeds))
        idle = asyncio.run(ttfts(url, args.ttft_requests))
        busy = asyncio.run(
            ttft_during_batch(url, [chat_body(i, 64) for i in range(max(64, args.lines))], args.ttft_requests)
        )
    ceiling = engine_ceiling(chats, args.max_tokens, args.ceiling_seqs)
    peer = sentence_transformers_per_s(texts)

    print(
        f"batch  commit={git_commit()}  cpus={os.cpu_count()}  lines={args.lines}  "
        f"max_tokens={args.max_tokens}  embeddings={args.embeddings}"
    )
    rates = {c: tokens / s for c, (s, tokens) in online.items()}
    best_c = max(rates, key=rates.__getitem__)
    batch_tok_s = batch_tokens / batch_s
    print("online chat  " + "  ".join(f"c={c}: {r:.1f} tok/s" for c, r in rates.items()))
    print(
        f"chat   batch {batch_tok_s:.1f} tok/s   online best {rates[best_c]:.1f} tok/s (c={best_c})   "
        f"ratio {batch_tok_s / rates[best_c]:.2f}x"
    )
    best_n = max(ceiling, key=ceiling.__getitem__)
    print(
        f"engine ceiling {ceiling[best_n]:.1f} tok/s (in process, max_num_seqs {best_n}; "
        + ", ".join(f"{n}: {r:.1f}" for n, r in ceiling.items())
        + f")   ceiling / online best {ceiling[best_n] / rates[best_c]:.2f}x"
    )
    embed_rates = {c: len(texts) / s for c, (s, _) in online_embed.items()}
    best_e = max(embed_rates, key=embed_rates.__getitem__)
    embed_batch = len(texts) / embed_batch_s
    peer_text = f"{peer:.1f}/s" if peer else "not installed"
    print(
        f"embed  batch {embed_batch:.1f}/s   online best {embed_rates[best_e]:.1f}/s (c={best_e})   ratio "
        f"{embed_batch / embed_rates[best_e]:.2f}x   sentence-transformers encode {peer_text}"
    )
    idle_p95, busy_p95 = percentile(idle, 95) * 1e3, percentile(busy, 95) * 1e3
    print(
        f"ttft   p95 idle {idle_p95:.1f} ms   during batch {busy_p95:.1f} ms   "
        f"ratio {busy_p95 / idle_p95:.2f}x"
    )


if __name__ == "__main__":
    main()
