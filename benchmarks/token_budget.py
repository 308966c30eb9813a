"""Where a served token's time goes: one stream, streaming /v1/completions, default config.

The server runs in this process (the same app and uvicorn settings as `inferline serve`); the client
is `inferline bench serve` in its own process, as in compare_cpu.py. Per generated token it reports the
wall time between tokens, and the CPU time of each of the server's threads: the engine thread split
into its phases (scheduling, the forward step with sampling, bookkeeping, detokenization and deltas),
the event loop (HTTP, routing, SSE framing) and torch's worker threads. CPU time per thread is read
from the kernel (thread_time / /proc), so the split holds even on a loaded machine; the wall figure
does not.

    .venv/bin/python benchmarks/token_budget.py
    .venv/bin/python benchmarks/token_budget.py --smoke   # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from inferline.bench.harness import INFERLINE, free_port
from inferline.config import ServerConfig
from inferline.engine.core import EngineCore
from inferline.server.app import create_app

PHASES: dict[str, float] = defaultdict(float)
"""Engine-thread CPU seconds per phase, summed over the run."""
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
EVENT_LOOP = "event-loop"


def timed(phase: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return method(*args, **kwargs)
        finally:
            PHASES[phase] += time.thread_time() - started

    return wrapper


def instrument(core: EngineCore) -> None:
    """Wrap the engine's step phases (this script's measurement only)."""
    core.scheduler.schedule = timed("schedule", core.scheduler.schedule)  # type: ignore[method-assign]
    core.runner.execute = timed("forward + sample", core.runner.execute)  # type: ignore[method-assign]
    core.scheduler.update = timed("scheduler update", core.scheduler.update)  # type: ignore[method-assign]
    core._delta = timed("detokenize + delta", core._delta)  # type: ignore[method-assign]


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of each of this process's threads, by name (torch's workers summed)."""
    totals: dict[str, float] = defaultdict(float)
    names = {t.native_id: t.name for t in threading.enumerate()}
    for task in Path("/proc/self/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        cpu_s = (int(fields[11]) + int(fields[12])) * TICK_S
        totals[names.get(int(task.name), "torch workers and others")] += cpu_s
    return totals


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer 200 within {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=20)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument(
        "--single-stream-threads", type=int, help="the engine setting (default: the server's own choice)"
    )
    parser.add_argument("--smoke", action="store_true", help="2 requests of 16 tokens")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.output_len = 2, 16
    port = free_port()
    engine = {"single_stream_threads": args.single_stream_threads} if args.single_stream_threads else {}
    config = ServerConfig.model_validate(
        {
            "port": port,
            "deployments": [{"name": "smollm2", "kind": "llm", "source": "default", "engine": engine}],
        }
    )
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", access_log=False))
    serving = threading.Thread(target=server.run, name=EVENT_LOOP, daemon=True)
    serving.start()
    with tempfile.TemporaryDirectory() as tmp_name:
        wait_ready(f"http://127.0.0.1:{port}/ready")
        core = app.state.router.pool.find("smollm2").backend.engine.core
        instrument(core)
        out = Path(tmp_name) / "bench.json"
        command = [str(INFERLINE), "bench", "serve", "--base-url", f"http://127.0.0.1:{port}"]
        command += ["--model", "smollm2", "--input-len", str(args.input_len), "--output-len"]
        command += [str(args.output_len), "--len-jitter", "0", "--ignore-eos", "--concurrency", "1"]
        command += ["--num-prompts", str(args.requests), "--no-progress", "--json", str(out)]
        before, steps_before = thread_cpu_s(), core.num_steps
        subprocess.run(command, check=True, capture_output=True)
        after, steps = thread_cpu_s(), core.num_steps - steps_before
        point = json.loads(out.read_text())["points"][0]
    server.should_exit = True
    serving.join(timeout=30)
    # One stream: every engine step makes one token (the client's warm-up requests included).
    per_token_ms = 1000 / steps
    print(f"token_budget  1 stream, {args.input_len} in / {args.output_len} out, {steps} steps (tokens)")
    print(
        f"wall: inter-token p50 {point['itl_s']['median'] * 1e3:.2f} ms, "
        f"{point['output_throughput_tps']:.1f} tok/s"
    )
    print("| where | CPU ms per token |")
    print("|---|---:|")
    for phase, seconds in PHASES.items():
        print(f"| engine: {phase} | {seconds * per_token_ms:.3f} |")
    labels = {EVENT_LOOP: "event loop (HTTP, routing, SSE)", "inferline-engine": "engine thread, total"}
    for name in sorted(after):
        used = after[name] - before.get(name, 0.0)
        if used > 0:
            print(f"| {labels.get(name, name)} | {used * per_token_ms:.3f} |")


if __name__ == "__main__":
    main()
