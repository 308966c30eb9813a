"""inferline on Ray Serve against inferline in one process, on the same machine and the same load.

1. Overhead: the same closed-loop chat load (streaming, `--concurrency` clients, `--requests` requests,
   `--max-tokens` each, greedy) against `inferline serve` and `inferline serve --ray` with one replica:
   output tokens/s (ratio ray/plain) and TTFT p50/p99 (added = ray minus plain).
2. Scale-out: a deployment of `replicas: {min: 1, max: 2}` and a low token target, idle on one replica;
   the same load arrives at once: seconds from the spike to a second replica serving (the autoscaler's
   decision, the replica's start and model load, the router sending to it). Then the load again on the
   two replicas: tokens/s beside one replica. On a machine of 2 cores both replicas share the cores the
   single engine already used: expect ~1x (no gain, a little loss to the second process), not 2x; the
   gain needs a core (or GPU) per replica.
3. Replacement: one replica process SIGKILLed while idle; seconds until Serve runs the replacement
   (GET /admin/cluster shows every replica RUNNING again), the model load included.

Every server loads the default model (SmolLM2-135M, float32 on the CPU). The Ray instance is started by
the server (`--ray --ray-num-cpus N`, N = the machine's cores) and stops with it; with `--ray-address`
every server joins that instance instead (the tests' smoke run shares theirs).

    .venv/bin/python benchmarks/ray_scale.py            # a few minutes on 2 cores
    .venv/bin/python benchmarks/ray_scale.py --smoke    # plain and one replica, a few requests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from inferline.bench.harness import INFERLINE, ServerProcess, free_port, spawned
from inferline.stats import percentile

ADMIN_KEY = "bench-admin"
DEPLOYMENT = "smollm2-135m-instruct"


@dataclass(frozen=True)
class LoadResult:
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    num_failed: int


SPIKE_TARGET_TOKENS = 100
"""The token target of the scale-out deployment: a fraction of what the load keeps in flight."""


REPLICA_CPUS = 0.5
"""Ray sets a replica's torch threads (OMP_NUM_THREADS) to its whole CPUs, at least 1: one thread here. On
2 shared cores one engine thread beside Ray's processes beat two (2026-12-06, quiet: 1.10x `inferline
serve`'s tokens/s with one thread, 0.90x with `num_cpus: 2`)."""


def server_config(num_replicas: int) -> dict[str, Any]:
    """`num_replicas` fixed; 2: one, scaled to two by the token load (SPIKE_TARGET_TOKENS)."""
    replicas: dict[str, Any] = {"min": num_replicas, "max": num_replicas}
    if num_replicas == 2:
        replicas = {
            "min": 1,
            "max": 2,
            "target_tokens": SPIKE_TARGET_TOKENS,
            "upscale_delay_s": 1,
            "downscale_delay_s": 600,
        }
    deployment = {
        "name": DEPLOYMENT,
        "kind": "llm",
        "source": "default",
        "aliases": ["default"],
        "engine": {"dtype": "float32", "kv_cache_bytes": 128 << 20},
        "replicas": replicas,
        "resources": {"num_cpus": REPLICA_CPUS},
    }
    return {"deployments": [deployment], "admin_api_keys": [ADMIN_KEY], "telemetry": {"access_log": False}}


@contextmanager
def server(
    workdir: Path, name: str, num_replicas: int, args: argparse.Namespace | None
) -> Iterator[ServerProcess]:
    """`inferline serve`, or with `args` (the Ray options) `inferline serve --ray`."""
    port = free_port()
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump({**server_config(num_replicas), "port": port}))
    command = [str(INFERLINE), "serve", "--config", str(config_path)]
    if args is not None and args.ray_address is not None:
        command += ["--ray", args.ray_address]
    elif args is not None:
        command += ["--ray", "--ray-num-cpus", str(args.ray_num_cpus)]
    env = {"PYTHONUNBUFFERED": "1"}
    with spawned(command, port, "/ready", workdir / f"{name}.log", env=env, ready_timeout_s=300) as process:
        yield process


async def one_request(client: httpx.AsyncClient, i: int, max_tokens: int) -> tuple[float, int] | None:
    """(TTFT in s, completion tokens) of one streamed chat request; None if it failed."""
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": f"Write a short story about the number {i}."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft_s, tokens = None, 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
        if reply.status_code != 200:
            return None
        async for line in reply.aiter_lines():
            if not line.startswith("data: {"):
                continue
            frame = json.loads(line[6:])
            if "error" in frame:
                return None
            if ttft_s is None and frame["choices"] and frame["choices"][0]["delta"].get("content"):
                ttft_s = time.perf_counter() - started
            if frame.get("usage"):
                tokens = frame["usage"]["completion_tokens"]
    return (ttft_s, tokens) if ttft_s is not None else None


async def run_load(url: str, num_requests: int, concurrency: int, max_tokens: int) -> LoadResult:
    pending = iter(range(num_requests))
    results: list[tuple[float, int] | None] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for i in pending:
            results.append(await one_request(client, i, max_tokens))

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await one_request(client, -1, 2)  # warm-up: the first request's one-off costs are not the load's
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed_s = time.perf_counter() - started
    answered = [r for r in results if r is not None]
    ttfts_ms = [ttft * 1000 for ttft, _ in answered] or [float("nan")]
    return LoadResult(
        tokens_per_s=sum(tokens for _, tokens in answered) / elapsed_s,
        ttft_p50_ms=percentile(ttfts_ms, 50),
        ttft_p99_ms=percentile(ttfts_ms, 99),
        num_failed=len(results) - len(answered),
    )


def replicas(process: ServerProcess) -> tuple[set[str], dict[str, int]]:
    """The replica ids the router sends to, and Serve's replica states."""
    reply = httpx.get(f"{process.url}/admin/cluster", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    reply.raise_for_status()
    view = reply.json()["deployments"][DEPLOYMENT]
    return set(view["routing"]["replicas"]), view["replica_states"]


def ray_root(process: ServerProcess, ray_address: str | None) -> psutil.Process:
    """The process every replica descends from: the server that started Ray, or the raylet of the
    instance at `ray_address`."""
    if ray_address is None:
        return psutil.Process(process.pid)
    port = ray_address.rsplit(":", 1)[-1]  # Ray writes the node's own IP for a loopback address
    for candidate in psutil.process_iter(["cmdline"]):
        cmdline = candidate.info["cmdline"] or []
        gcs = [arg for arg in cmdline if arg.startswith("--gcs-address=")]
        if cmdline and cmdline[0].endswith("raylet") and gcs and gcs[0].endswith(f":{port}"):
            return candidate
    raise SystemExit(f"no raylet of the Ray instance at {ray_address} on this machine")


def time_to_scale_out(process: ServerProcess, load: tuple[int, int, int]) -> float:
    """Seconds from the start of `load` on one replica to a second one serving: the router sends to two
    replicas and Serve reports both RUNNING."""
    spike = threading.Thread(target=lambda: asyncio.run(run_load(process.url, *load)), daemon=True)
    started = time.perf_counter()
    spike.start()
    while True:
        ids, states = replicas(process)
        if len(ids) == 2 and states == {"RUNNING": 2}:
            scaled_s = time.perf_counter() - started
            spike.join()
            return scaled_s
        if time.perf_counter() - started > 300:
            raise SystemExit("no second replica within 300 s of the spike")
        time.sleep(0.1)


def time_to_replace(process: ServerProcess, num_replicas: int, ray_address: str | None) -> float:
    """SIGKILL one replica process; seconds until the router sends to `num_replicas` replicas again, a
    new one among them, and Serve reports every replica RUNNING."""
    before, _ = replicas(process)
    descendants = ray_root(process, ray_address).children(recursive=True)
    replica = next(p for p in descendants if "ServeReplica:inferline-" in " ".join(p.cmdline()))
    killed = time.perf_counter()
    replica.send_signal(signal.SIGKILL)
    while True:
        ids, states = replicas(process)
        if len(ids) == num_replicas and ids - before and states == {"RUNNING": num_replicas}:
            return time.perf_counter() - killed
        if time.perf_counter() - killed > 300:
            raise SystemExit("the killed replica was not replaced within 300 s")
        time.sleep(0.1)


def line(label: str, result: LoadResult, extra: str = "") -> str:
    return (
        f"{label:<24} {result.tokens_per_s:7.1f} tok/s   TTFT p50 {result.ttft_p50_ms:7.1f} ms   "
        f"p99 {result.ttft_p99_ms:7.1f} ms   failed {result.num_failed}{extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="plain and one replica, 4 requests of 4 tokens")
    parser.add_argument(
        "--ray-address", help="join the Ray instance at this GCS address (host:port) instead of starting one"
    )
    parser.add_argument(
        "--ray-num-cpus",
        type=int,
        default=os.cpu_count() or 2,
        help="cores of the Ray instance started here (without --ray-address)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.concurrency, args.max_tokens = 4, 2, 4
    load = (args.requests, args.concurrency, args.max_tokens)
    print(
        f"load: {args.requests} streamed chat requests, {args.concurrency} concurrent, {args.max_tokens} "
        f"tokens each (ignore_eos), greedy; {os.cpu_count()} cores, shared with whatever else runs"
    )
    with tempfile.TemporaryDirectory(prefix="ray-scale-") as scratch:
        workdir = Path(scratch)
        with server(workdir, "plain", 1, None) as plain:
            single = asyncio.run(run_load(plain.url, *load))
        print(line("serve", single))
        with server(workdir, "ray-1", 1, args) as ray_one:
            one = asyncio.run(run_load(ray_one.url, *load))
            # A smoke run skips the replacement: tests/cluster kills a replica under load already.
            replaced_one_s = None if args.smoke else time_to_replace(ray_one, 1, args.ray_address)
        ratio = one.tokens_per_s / single.tokens_per_s
        added_ms = one.ttft_p50_ms - single.ttft_p50_ms
        print(
            line("serve --ray, 1 replica", one, f"   ratio {ratio:.2f}x   added TTFT p50 {added_ms:+.1f} ms")
        )
        if replaced_one_s is None:
            return
        print(f"replace a killed replica (1 of 1): {replaced_one_s:.1f} s")
        with server(workdir, "ray-2", 2, args) as ray_two:
            spike_s = time_to_scale_out(ray_two, load)
            two = asyncio.run(run_load(ray_two.url, *load))
            replaced_two_s = time_to_replace(ray_two, 2, args.ray_address)
        print(
            line(
                "serve --ray, 2 replicas", two, f"   vs 1 replica {two.tokens_per_s / one.tokens_per_s:.2f}x"
            )
        )
        print(f"load spike to a second replica serving: {spike_s:.1f} s")
        print(f"replace a killed replica (1 of 2): {replaced_two_s:.1f} s")


if __name__ == "__main__":
    main()
