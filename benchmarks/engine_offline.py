"""Offline generation throughput: inferline's engine beside transformers `generate`, same weights, same run.

For each batch size B: B prompts of --prompt-len random tokens (fixed seed), --new-tokens generated
greedily with end-of-sequence ignored, timed end to end (prefill included). Output tok/s = B * new / s.
Also: model load time, KV-cache bytes per token, and peak RSS of the engine before the peer loads.

    .venv/bin/python benchmarks/engine_offline.py                      # fp32, batches 1 8 32
    .venv/bin/python benchmarks/engine_offline.py --dtypes bfloat16 --batch-sizes 1 32
    .venv/bin/python benchmarks/engine_offline.py --smoke      # seconds; inferline only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from inferline import LLM
from inferline.bench.offline import random_prompts, time_batch
from inferline.bench.report import git_commit
from inferline.config import EngineConfig
from inferline.engine.model_loader import LoadedModel, load_model
from inferline.engine.runner import kv_cache_dtype
from inferline.models.loader import load_weights
from inferline.models.reference import transformers_model

SMOKE = {
    "batch_sizes": [1],
    "prompt_len": 8,
    "new_tokens": 4,
    "dtypes": ["float32"],
    "repeats": 1,
    "no_peer": True,
}
"""--smoke: inferline's code paths in seconds (the figures mean nothing); transformers, which takes longer
to import and load than the rest of the run, only in full runs."""


def time_inferline(loaded: LoadedModel, prompts: list[list[int]], new_tokens: int, repeats: int) -> float:
    batch = len(prompts)
    llm = LLM(
        loaded=loaded,
        max_num_seqs=max(batch, 1),
        max_num_batched_tokens=2048,
        kv_cache_bytes=loaded.config.kv_bytes_per_token
        * kv_cache_dtype(loaded.dtype, loaded.device).itemsize
        * 16
        * (batch * 18 + 16),
        enable_prefix_caching=False,
    )
    return time_batch(llm, prompts, new_tokens, repeats)


def load_transformers(dtype: torch.dtype):  # type: ignore[no-untyped-def]
    return transformers_model(load_weights("default")).to(dtype)


def time_transformers(model, prompts: list[list[int]], new_tokens: int, repeats: int) -> float:  # type: ignore[no-untyped-def]
    ids = torch.tensor(prompts)
    kwargs = {"max_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        model.generate(
            ids[:1, :8], attention_mask=torch.ones_like(ids[:1, :8]), max_new_tokens=4, do_sample=False
        )
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
            times.append(time.perf_counter() - started)
            assert out.shape[1] == ids.shape[1] + new_tokens
    return statistics.median(times)


def measure(
    engine: str, dtype: str, batch_sizes: list[int], prompt_len: int, new_tokens: int, repeats: int
) -> dict:
    """Run one engine in this process; returns tok/s per batch size, load time and peak RSS."""
    started = time.perf_counter()
    loaded = load_model(EngineConfig(device="cpu", dtype=dtype))
    load_s = time.perf_counter() - started
    model = None
    if engine == "transformers":
        started = time.perf_counter()
        model = load_transformers(getattr(torch, dtype))
        load_s = time.perf_counter() - started
    tok_s = {}
    for batch in batch_sizes:
        prompts = random_prompts(batch, prompt_len, loaded.config.vocab_size, seed=0)
        if model is None:
            elapsed = time_inferline(loaded, prompts, new_tokens, repeats)
        else:
            elapsed = time_transformers(model, prompts, new_tokens, repeats)
        tok_s[batch] = batch * new_tokens / elapsed
        print(
            f"{engine:>12} {dtype:>8} batch {batch:>3}: {tok_s[batch]:8.1f} output tok/s",
            file=sys.stderr,
            flush=True,
        )
    return {
        "tok_s": tok_s,
        "load_s": load_s,
        "kv_bytes_per_token": loaded.config.kv_bytes_per_token
        * kv_cache_dtype(loaded.dtype, loaded.device).itemsize,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"]
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point; the median is reported")
    parser.add_argument("--no-peer", action="store_true", help="skip transformers")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help=f"tiny run: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    sizes = (args.batch_sizes, args.prompt_len, args.new_tokens, args.repeats)
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], *sizes)))
        return

    # Each engine and dtype runs in a fresh process: peak RSS is its own and no state is shared.
    peer = not args.no_peer and importlib.util.find_spec("transformers") is not None
    if not args.no_peer and not peer:
        print("peer skipped: transformers is not installed (pip install -e '.[test]')", flush=True)
    engines = ["inferline"] + (["transformers"] if peer else [])
    results: dict[str, dict] = {}
    for engine in engines:
        for dtype in args.dtypes:
            child = [
                sys.executable,
                __file__,
                "--child",
                engine,
                dtype,
                "--batch-sizes",
                *map(str, args.batch_sizes),
            ]
            child += ["--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens)]
            child += ["--repeats", str(args.repeats)]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            sys.stderr.write(done.stderr)
            results[f"{engine}/{dtype}"] = json.loads(done.stdout.strip().splitlines()[-1])
    print_table(args, results)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"commit": git_commit(), "args": vars(args), "results": results}, out, indent=2)


def print_table(args: argparse.Namespace, results: dict[str, dict]) -> None:
    print(
        f"engine_offline  SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)  prompt={args.prompt_len}  "
        f"new={args.new_tokens}  median of {args.repeats}  threads={torch.get_num_threads()}  "
        f"{platform.machine()}  commit={git_commit()}"
    )
    for key, result in results.items():
        print(
            f"  {key:<22} load {result['load_s']:.2f} s   KV {result['kv_bytes_per_token']} B/token   "
            f"peak RSS {result['peak_rss_mb']:.0f} MB"
        )
    columns = list(results)
    ours = [c for c in columns if c.startswith("inferline")]
    # Each of our dtypes against the peer in the same dtype, and against the peer's default (float32).
    ratios = [(c, p) for c in ours for p in (c.replace("inferline", "transformers"), "transformers/float32")]
    ratios = list(dict.fromkeys((c, p) for c, p in ratios if p in results))
    short = {"inferline": "ours", "transformers": "hf", "float32": "fp32", "bfloat16": "bf16"}

    def label(key: str) -> str:
        engine, dtype = key.split("/")
        return f"{short[engine]} {short[dtype]}"

    header = f"{'batch':>5} | " + " | ".join(f"{label(c) + ' tok/s':>14}" for c in columns)
    header += "".join(f" | {label(c) + ' / ' + label(p):>19}" for c, p in ratios)
    print(header)
    for batch in args.batch_sizes:
        tok_s = {c: results[c]["tok_s"][str(batch)] for c in columns}
        row = f"{batch:>5} | " + " | ".join(f"{tok_s[c]:>14.1f}" for c in columns)
        row += "".join(f" | {tok_s[c] / tok_s[p]:>19.2f}" for c, p in ratios)
        print(row)


if __name__ == "__main__":
    main()
