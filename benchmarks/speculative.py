"""Speculative decoding: tok/s without it, with n-gram lookup and with a draft model, on two workloads.

Workloads (greedy, the real default model, through `inferline.LLM`):
  copy  edit a ~300-token text and return it in full: the output quotes its input, so n-gram drafts
        are mostly right (the workload speculation is for);
  open  open-ended writing from a short prompt: little repeats, so drafts are mostly wrong.
For each: output tok/s of the baseline, of `ngram`, and of `draft` (the default model as its own
draft, int4 when the engine offers quantization), the acceptance rate and tokens per verify step,
and whether the output equals the baseline's token for token (it must). Timed end to end after a
warm-up run, median of --repeats; the engine (and KV pool) are built once per configuration.

    .venv/bin/python benchmarks/speculative.py
    .venv/bin/python benchmarks/speculative.py --batch-size 4 --max-tokens 96 --json out.json
    .venv/bin/python benchmarks/speculative.py --smoke     # seconds: 8 tokens of `open` on the CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch

from inferline import LLM, SamplingParams
from inferline.bench.report import git_commit
from inferline.config import EngineConfig
from inferline.engine.model_loader import LoadedModel, load_model

TEXT = (
    "The city council met on Tuesday evening to discuss the new plan for the riverside park. The plan "
    "adds a walking path along the water, two playgrounds, a small cafe near the old bridge, and more "
    "trees on the north side, where the summer sun makes the grass dry and brown. Several residents "
    "spoke in favour of the path, saying that it would let children walk safely to the school on "
    "Maple Street without crossing the main road. Others worried about the cost, which the city "
    "estimates at four million dollars over three years, and asked whether the money would be better "
    "spent on repairing the roads in the east of the city. The council also heard from a local "
    "biologist, who explained that the river bank is home to several kinds of birds that nest in the "
    "tall reeds each spring, and asked that the path be kept away from the reeds during the nesting "
    "season. The mayor thanked everyone for their comments and said that the council would vote on "
    "the plan next month, after the engineers have answered the questions about the cost and the "
    "birds. The meeting ended at nine o'clock, and many residents stayed to talk about the park."
)
SMOKE = {"max_tokens": 8, "device": "cpu", "workloads": ["open"]}
"""--smoke: every code path in seconds (the figures mean nothing)."""
WORKLOADS = {
    "copy": f"Fix any typos in the following text and return the whole text unchanged otherwise.\n\n{TEXT}",
    "open": "Write a story about a dragon who learns to cook.",
}


def method_options(method: str) -> dict[str, Any]:
    if method == "baseline":
        return {}
    if method == "ngram":
        return {"speculative": {"method": "ngram", "num_speculative_tokens": 4}}
    quantization = "int4" if "quantization" in EngineConfig.model_fields else "none"
    spec = {"method": "draft", "draft_model": "default", "num_speculative_tokens": 4}
    return {"speculative": {**spec, "draft_quantization": quantization}}


def run(loaded: LoadedModel, method: str, prompt: str, args: argparse.Namespace) -> dict[str, Any]:
    llm = LLM(loaded=loaded, kv_cache_bytes=256 << 20, max_num_seqs=args.batch_size, **method_options(method))
    messages = [{"role": "user", "content": prompt}]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
    llm.chat(messages, SamplingParams(max_tokens=4, temperature=0))  # warm-up
    times, outputs = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        outputs = llm.chat([messages] * args.batch_size, params)
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    stats = llm.engine.stats()
    num_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {
        "tok_s": num_tokens / seconds,
        "seconds": seconds,
        "completion_tokens": num_tokens,
        "acceptance_rate": stats.spec_acceptance_rate,
        "tokens_per_verify_step": stats.spec_mean_accepted_length,
        "token_ids": [o.outputs[0].token_ids for o in outputs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["baseline", "ngram", "draft"])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--smoke", action="store_true", help=f"tiny run: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    loaded = load_model(EngineConfig(device=args.device))
    results: dict[str, dict[str, Any]] = {}
    for workload in args.workloads:
        prompt = WORKLOADS[workload]
        results[workload] = {m: run(loaded, m, prompt, args) for m in args.methods}
        baseline = results[workload].get("baseline")
        for result in results[workload].values():
            result["equals_baseline"] = baseline is not None and result["token_ids"] == baseline["token_ids"]
    print(
        f"speculative  SmolLM2-135M-Instruct on {loaded.device} ({loaded.dtype})  batch={args.batch_size}  "
        f"max_tokens={args.max_tokens}  k=4  median of {args.repeats}  threads={torch.get_num_threads()}  "
        f"{platform.machine()}  commit={git_commit()}  draft quantization="
        f"{method_options('draft')['speculative']['draft_quantization']}"
    )
    print(f"  {'workload':<9}{'method':<10}{'tok/s':>8}{'speedup':>9}{'accept':>8}{'tok/step':>10}  same")
    for workload, by_method in results.items():
        base = by_method.get("baseline", {}).get("tok_s")
        for method, r in by_method.items():
            speedup = f"{r['tok_s'] / base:.2f}x" if base else "-"
            print(
                f"  {workload:<9}{method:<10}{r['tok_s']:>8.1f}{speedup:>9}{r['acceptance_rate']:>8.2f}"
                f"{r['tokens_per_verify_step']:>10.2f}  {'yes' if r['equals_baseline'] else 'NO'}"
            )
    if args.json:
        for by_method in results.values():
            for r in by_method.values():
                del r["token_ids"]
        with open(args.json, "w") as out:
            json.dump({"commit": git_commit(), "args": vars(args), "results": results}, out, indent=2)


if __name__ == "__main__":
    main()
