"""What each instruction set buys the int4/int8 weight kernels: the same source built three times.

x86-64-v2 has no AVX2 (the kernels' scalar loop), x86-64-v3 is AVX2 + FMA + F16C without AVX-512 (the
AVX2 path) and native is this machine (the AVX-512 VNNI path where it has VNNI). Each build compiles
with the engine's flags (layers/cpu_kernels.py) but its own -march, in a process of its own (one
process holds one build of the library), into the engine's build cache (a later run, and the kernels'
tests, reuse it); the builds compile side by side, then each times
int4_linear and int8_linear in turn on bfloat16 activations: one decode row and 16 rows, through the
default model's MLP shape (576 -> 1536) and its vocabulary projection (576 -> 49152). GB/s is the
weights' bytes (codes, scales, minimums) per call over the time of a call; threads default to one so
the figures compare per core on a shared machine.

    .venv/bin/python benchmarks/cpu_kernels_isa.py
    .venv/bin/python benchmarks/cpu_kernels_isa.py --smoke   # scalar and AVX2 builds (~25 s unless cached)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from inferline.layers.cpu_kernels import build_cpu_kernels

TARGETS = {"x86-64-v2": "x86-64-v2 (scalar)", "x86-64-v3": "x86-64-v3 (AVX2)", "native": "native"}
HIDDEN = 576
SHAPES = {"mlp": 1536, "vocabulary": 49152}
ROWS = (1, 16)
SMOKE = {"shapes": "mlp", "repeats": 1, "min_repeat_s": 0.01}
"""--smoke: the scalar and AVX2 builds (the native one is the engine's own, built at install) and both
kernels, in about half a minute; the figures mean little."""


def seconds_per_call(call: object, repeats: int, min_repeat_s: float) -> float:
    """The fastest repeat's mean, each repeat at least min_repeat_s long."""
    assert callable(call)
    call()  # warm up: caches, the thread pool
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            call()
        if time.perf_counter() - start >= min_repeat_s:
            break
        number *= 2
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            call()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def measure(library: Path, shapes: list[str], repeats: int, min_repeat_s: float) -> None:
    """Print one JSON line per kernel, shape and row count (run inside the build's own process)."""
    from inferline.layers.quant_linear import Int4Linear, Int8Linear

    torch.ops.load_library(str(library))
    generator = torch.Generator().manual_seed(0)
    for shape in shapes:
        n_out = SHAPES[shape]
        weight = torch.randn(n_out, HIDDEN, generator=generator) * 0.05
        int4 = Int4Linear.quantize(weight, None, torch.bfloat16)
        int8 = Int8Linear.quantize(weight, None, torch.bfloat16)
        kernels = {
            "int4": (torch.ops.inferline_cpu.int4_linear, int4.codes, int4.scales_and_mins),
            "int8": (torch.ops.inferline_cpu.int8_linear, int8.weight, int8.scales),
        }
        for kernel, (op, codes, scales) in kernels.items():
            weight_bytes = codes.numel() * codes.element_size() + scales.numel() * scales.element_size()
            for rows in ROWS:
                x = torch.randn(rows, HIDDEN, generator=generator).bfloat16()
                seconds = seconds_per_call(
                    lambda op=op, x=x, c=codes, s=scales: op(x, c, s), repeats, min_repeat_s
                )
                row = {"kernel": kernel, "rows": rows, "n_out": n_out, "s": seconds, "bytes": weight_bytes}
                print(json.dumps(row), flush=True)


def worker_command(march: str, args: argparse.Namespace, measure: bool) -> list[str]:
    command = [sys.executable, __file__, "--worker", march, "--threads", str(args.threads)]
    if measure:
        command += ["--measure", "--shapes", args.shapes, "--repeats", str(args.repeats)]
        command += ["--min-repeat-s", str(args.min_repeat_s)]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-repeat-s", type=float, default=0.2, help="each repeat runs at least this long")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help=f"tiny run: {SMOKE}")
    parser.add_argument("--worker", metavar="MARCH", help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        if args.measure:
            measure(build_cpu_kernels(args.worker), args.shapes.split(","), args.repeats, args.min_repeat_s)
        else:
            build_cpu_kernels(args.worker)
        return

    cpu_flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    print(f"# cpu_kernels_isa: {args.threads} thread(s), best of {args.repeats} repeats, bf16 activations")
    print(f"# this CPU: avx2 {'avx2' in cpu_flags}, avx512_vnni {'avx512_vnni' in cpu_flags}")
    targets = [m for m in TARGETS if not (args.smoke and m == "native")]
    builds = [subprocess.Popen(worker_command(march, args, measure=False)) for march in targets]
    if any(process.wait() != 0 for process in builds):
        sys.exit("a build failed (its error is above)")
    results = {}
    for march in targets:
        done = subprocess.run(
            worker_command(march, args, measure=True), capture_output=True, text=True, check=True
        )
        results[march] = [json.loads(line) for line in done.stdout.splitlines()]
    print(f"{'build':<20} {'kernel':<6} {'shape':<18} {'µs/call':>10} {'GB/s':>8} {'vs scalar':>9}")
    scalar = {(r["kernel"], r["rows"], r["n_out"]): r["s"] for r in results["x86-64-v2"]}
    for march, rows in results.items():
        for r in rows:
            shape = f"{r['rows']} x {HIDDEN} -> {r['n_out']}"
            speedup = scalar[(r["kernel"], r["rows"], r["n_out"])] / r["s"]
            print(
                f"{TARGETS[march]:<20} {r['kernel']:<6} {shape:<18} {r['s'] * 1e6:7.1f} µs "
                f"{r['bytes'] / r['s'] / 1e9:8.2f} {speedup:8.2f}x"
            )


if __name__ == "__main__":
    main()
