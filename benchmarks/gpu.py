"""GPU offline throughput: our engine beside transformers `generate`, random weights of real shapes.

On a lent GPU machine, from a copy of this repo (the project is not installed there), one call per
model keeps each call well inside the 10-minute limit (the static-cache peer compiles per batch size):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 &&
    python3 benchmarks/gpu.py --models smollm2-135m --deadline-s 480 --json $OUT/gpu-smollm2-135m.json

and the same with `--models llama-3.2-1b`. Needs torch, transformers, numpy, tokenizers, safetensors,
sentencepiece, jinja2, rich, pyyaml, tqdm and requests (all preinstalled there) plus what `inferline`
imports and the machine lacks: pydantic (with pydantic-core, annotated-types, typing-inspection and a
typing-extensions >= 4.16) and gguf. Carry those six as wheels in `.whl` (device README, "a Python
package missing there"): here, in the repo's root,

    echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
        pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
        typing-extensions==4.16.0 gguf==0.19.0

(versions as in .venv) and name `.whl` in the call's `carry`. On this CPU machine, in seconds:

    .venv/bin/python benchmarks/gpu.py --smoke

Workload, per model and batch size B: B prompts of --prompt-len random token ids (seeded, shared by
every peer), --new-tokens generated greedily with end-of-sequence ignored, timed end to end (prefill
included); output tok/s = B * new / median seconds. Every peer gets one untimed run of the same batch
first (the static-cache peer compiles and captures its CUDA graphs there), then up to --repeats timed
runs, fewer once --point-budget-s is spent. Peers: `ours` (inferline.LLM), `hf` (transformers
`generate`, dynamic cache), `hf-static` (static cache + torch.compile mode "reduce-overhead"; not
compiled on the CPU). A point that runs out of memory, time or --deadline-s, or fails, is reported as
such in the table and the JSON, never left out.

Ceilings, measured at start: copy bandwidth (device-to-device copy, bytes read + written per second)
and matmul rate (square product in the compute dtype). Roofline per row, same workload: a decode step
reads every weight once plus the KV cache of all B sequences (average context prompt + new/2), and
does 2 * params * B FLOPs; the step takes the longer of bytes / bandwidth and FLOPs / matmul rate.
Prefill takes the longer of one weight read and 2 * params * B * prompt FLOPs (attention FLOPs are
left out). Estimated tok/s = B * new / (prefill + (new - 1) decode steps); `ours/roof` is our
measured figure as a fraction of it. The JSON also holds the decode-only estimate, B / step.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

try:
    from tokenizers import Tokenizer as BackendTokenizer
    from tokenizers import decoders, models

    from inferline.bench.offline import BLOCK_SIZE, random_prompts
    from inferline.bench.report import environment, write_json
    from inferline.engine.llm import LLM
    from inferline.engine.model_loader import LoadedModel
    from inferline.engine.quantization import QuantizationChoice
    from inferline.models.hf_loader import hf_config
    from inferline.models.tokenizer import Tokenizer
    from inferline.models.weights import build_model
    from inferline.types import SamplingParams
except ModuleNotFoundError as missing:
    raise SystemExit(
        f"benchmarks/gpu.py: Python module {missing.name!r} is missing. Run from the repo root with "
        f"PYTHONPATH=src and carry the missing wheels, as this script's docstring says:\n{__doc__}"
    ) from None

PEERS = ("ours", "hf", "hf-static")
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
# LlamaConfig fields of the public config.json files (weights are random: only the shapes matter).
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {  # HuggingFaceTB/SmolLM2-135M
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
    "llama-3.2-1b": {  # meta-llama/Llama-3.2-1B
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": LLAMA3_ROPE,
        "tie_word_embeddings": True,
    },
    "smoke": {  # --smoke: tiny, runs on the CPU in seconds
        "vocab_size": 1024,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    },
}
FULL_DEFAULTS = {
    "device": "cuda",
    "models": "smollm2-135m,llama-3.2-1b",
    "batches": "1,16,64,256",
    "prompt_len": 128,
    "new_tokens": 128,
}
SMOKE_DEFAULTS = {"device": "cpu", "models": "smoke", "batches": "1,2", "prompt_len": 16, "new_tokens": 8}


@dataclass
class Ceilings:
    copy_gb_s: float
    """Device-to-device copy, bytes read plus bytes written, per second (1e9)."""
    matmul_tflop_s: float
    """Square matrix product in the compute dtype (1e12 FLOP/s)."""


@dataclass
class ModelStats:
    num_params: int
    """Every weight a forward pass multiplies by (tied embeddings counted once, as the LM head)."""
    weight_bytes: int
    """Bytes of those weights in the compute dtype: what one decode step reads at least."""
    kv_bytes_per_token: int
    """KV-cache bytes one token of context holds, in the compute dtype."""


# ---- device ceilings ---------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_repeated(op: Callable[[], object], device: torch.device, warmups: int = 3, iters: int = 10) -> float:
    """Mean seconds of one `op` after `warmups` untimed calls."""
    for _ in range(warmups):
        op()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(iters):
        op()
    synchronize(device)
    return (time.perf_counter() - started) / iters


def measure_ceilings(device: torch.device, dtype: torch.dtype, smoke: bool) -> Ceilings:
    num_bytes = (64 << 20) if smoke else (2 << 30)  # far past the L2 cache on the GPU
    source = torch.empty(num_bytes, dtype=torch.uint8, device=device).random_()
    target = torch.empty_like(source)
    copy_s = time_repeated(lambda: target.copy_(source), device)
    source = target = torch.empty(0)  # hand the memory back before the matrices
    n = 256 if smoke else 8192
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    matmul_s = time_repeated(lambda: a @ b, device)
    return Ceilings(copy_gb_s=2 * num_bytes / copy_s / 1e9, matmul_tflop_s=2 * n**3 / matmul_s / 1e12)


def roofline(stats: ModelStats, batch: int, prompt_len: int, new_tokens: int, ceil: Ceilings) -> dict:
    """Best-case seconds and tok/s of the workload from the two ceilings (see the module docstring)."""
    bandwidth, flop_rate = ceil.copy_gb_s * 1e9, ceil.matmul_tflop_s * 1e12
    kv_bytes = batch * (prompt_len + new_tokens / 2) * stats.kv_bytes_per_token
    memory_s = (stats.weight_bytes + kv_bytes) / bandwidth
    compute_s = 2 * stats.num_params * batch / flop_rate
    step_s = max(memory_s, compute_s)
    prefill_s = max(stats.weight_bytes / bandwidth, 2 * stats.num_params * batch * prompt_len / flop_rate)
    total_s = prefill_s + (new_tokens - 1) * step_s
    return {
        "decode_step_s": step_s,
        "decode_bound": "memory" if memory_s >= compute_s else "compute",
        "decode_tok_s": batch / step_s,
        "prefill_s": prefill_s,
        "total_s": total_s,
        "tok_s": batch * new_tokens / total_s,
    }


# ---- models --------------------------------------------------------------------------------------


def build_hf_model(shape: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    """A transformers LlamaForCausalLM with seeded random weights, made directly on `device`."""
    config = transformers.LlamaConfig(**shape, architectures=["LlamaForCausalLM"], pad_token_id=0)
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config).to(dtype)
    # The workload runs a fixed number of tokens: generate must never stop at EOS.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval().requires_grad_(False)


def model_stats(hf_model: Any, dtype: torch.dtype) -> ModelStats:
    config = hf_model.config
    num_params = sum(p.numel() for p in hf_model.parameters())  # tied weights are listed once
    if not config.tie_word_embeddings:  # the input table is only gathered from, never read whole
        num_params -= hf_model.get_input_embeddings().weight.numel()
    kv_elements = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    return ModelStats(num_params, num_params * dtype.itemsize, kv_elements * dtype.itemsize)


def synthetic_tokenizer(vocab_size: int) -> Tokenizer:
    """One plain token "t<i>" per id: the engine detokenizes as it would with a real vocabulary."""
    backend = BackendTokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    backend.decoder = decoders.ByteLevel()
    return Tokenizer(backend, bos_token_id=None, eos_token_ids=[], chat_template=None)


def build_ours(hf_model: Any, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Our engine's model holding the transformers model's weights (no file, no download)."""
    started = time.perf_counter()
    tokenizer = synthetic_tokenizer(hf_model.config.vocab_size)
    config = hf_config(hf_model.config.to_dict(), tokenizer, has_lm_head=True, name="random")
    model = build_model(config, dict(hf_model.state_dict()), dtype, device)
    return LoadedModel(
        name="random",
        model=model,
        tokenizer=tokenizer,
        config=config,
        device=device,
        dtype=dtype,
        quantization=QuantizationChoice("none", "random weights of a real shape, in the benchmark's dtype"),
        load_time_s=time.perf_counter() - started,
    )


# ---- peers ---------------------------------------------------------------------------------------


def ours_run(
    loaded: LoadedModel, prompts: list[list[int]], new_tokens: int, max_batched_tokens: int
) -> Callable[[], None]:
    """An engine with B slots and a KV pool just large enough (as `inferline bench offline` sizes it)."""
    batch = len(prompts)
    blocks_per_seq = -(-(len(prompts[0]) + new_tokens) // BLOCK_SIZE) + 1
    bytes_per_block = loaded.config.kv_bytes_per_token * loaded.dtype.itemsize * BLOCK_SIZE
    llm = LLM(
        loaded=loaded,
        max_num_seqs=batch,
        max_num_batched_tokens=max_batched_tokens,
        block_size=BLOCK_SIZE,
        kv_cache_bytes=max(1 << 16, bytes_per_block * blocks_per_seq * batch),
        enable_prefix_caching=False,  # random prompts share nothing; keep the cache's cost out
    )
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)

    def run() -> None:
        lengths = {len(o.outputs[0].token_ids) for o in llm.generate(prompts, params)}
        if lengths != {new_tokens}:
            raise RuntimeError(f"asked for {new_tokens} tokens per prompt, got {sorted(lengths)}")

    return run


def hf_run(hf_model: Any, prompts: list[list[int]], new_tokens: int, static: bool) -> Callable[[], None]:
    device = hf_model.device
    ids = torch.tensor(prompts, device=device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": new_tokens,
        "do_sample": False,
        "attention_mask": torch.ones_like(ids),
    }
    if static:
        kwargs["cache_implementation"] = "static"
        # generate compiles the decode step itself when the cache is static and the device is CUDA.
        if device.type == "cuda":
            kwargs["compile_config"] = transformers.CompileConfig(mode="reduce-overhead")
        else:
            kwargs["disable_compile"] = True

    def run() -> None:
        out = hf_model.generate(ids, **kwargs)
        if out.shape[1] != ids.shape[1] + new_tokens:
            raise RuntimeError(f"asked for {new_tokens} new tokens, got {out.shape[1] - ids.shape[1]}")

    return run


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed(run: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - started


def measure_point(
    make_run: Callable[[], Callable[[], None]], device: torch.device, repeats: int, budget_s: float
) -> dict[str, Any]:
    """One untimed run, then timed runs until `repeats` or `budget_s` is reached (at least one)."""
    try:
        run = make_run()
        warmup_s = timed(run, device)
        if warmup_s > budget_s:
            return {
                "status": "time",
                "detail": f"warm-up took {warmup_s:.0f} s > --point-budget-s",
                "warmup_s": warmup_s,
            }
        runs_s: list[float] = []
        while len(runs_s) < repeats and sum(runs_s) < budget_s:
            runs_s.append(timed(run, device))
    except torch.OutOfMemoryError as error:
        return {"status": "oom", "detail": str(error).splitlines()[0]}
    except Exception as error:  # a failing peer is a row of the table, not the end of the run
        traceback.print_exc()
        return {"status": "error", "detail": f"{type(error).__name__}: {error}"[:300]}
    return {"status": "ok", "median_s": statistics.median(runs_s), "runs_s": runs_s, "warmup_s": warmup_s}


# ---- the run -------------------------------------------------------------------------------------


class Run:
    """Every point of one invocation; rewrites the JSON after each so a killed run leaves its figures."""

    def __init__(
        self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, ceilings: Ceilings
    ) -> None:
        self.args, self.device, self.dtype, self.ceilings = args, device, dtype, ceilings
        self.started = time.monotonic()
        self.document: dict[str, Any] = {
            **environment(
                f"gpu offline {','.join(args.models)} {device} {str(dtype).removeprefix('torch.')}"
            ),
            "kind": "gpu-offline",
            "parameters": {k: v for k, v in vars(args).items() if k != "json"},
            "versions": versions(),
            "device_name": device_name(device),
            "ceilings": vars(ceilings),
            "models": {},
        }

    def run_model(self, name: str) -> None:
        args = self.args
        hf_model = build_hf_model(SHAPES[name], self.device, self.dtype, args.seed)
        stats = model_stats(hf_model, self.dtype)
        rows = {b: {"batch_size": b} for b in args.batches}
        self.document["models"][name] = {
            "shape": SHAPES[name],
            "num_params": stats.num_params,
            "weight_bytes": stats.weight_bytes,
            "kv_bytes_per_token": stats.kv_bytes_per_token,
            "rows": list(rows.values()),
        }
        for batch, row in rows.items():
            row["roofline"] = roofline(stats, batch, args.prompt_len, args.new_tokens, self.ceilings)
        for peer in args.peers:
            loaded = build_ours(hf_model, self.device, self.dtype) if peer == "ours" else None
            for batch, row in rows.items():
                prompts = random_prompts(batch, args.prompt_len, hf_model.config.vocab_size, args.seed)
                row[peer] = self.point(name, peer, batch, self.make_run(peer, hf_model, loaded, prompts))
                free_memory(self.device)  # the point's engine or cache is garbage only now
                self.save()
            del loaded
            free_memory(self.device)
        if hasattr(torch, "_dynamo"):
            torch._dynamo.reset()  # the next model starts with no compiled graphs held

    def make_run(
        self, peer: str, hf_model: Any, loaded: LoadedModel | None, prompts: list[list[int]]
    ) -> Callable[[], Callable[[], None]]:
        new = self.args.new_tokens
        if loaded is not None:
            return lambda: ours_run(loaded, prompts, new, self.args.max_num_batched_tokens)
        return lambda: hf_run(hf_model, prompts, new, static=peer == "hf-static")

    def point(self, model: str, peer: str, batch: int, make_run: Callable) -> dict[str, Any]:
        args = self.args
        elapsed_s = time.monotonic() - self.started
        if args.deadline_s is not None and elapsed_s > args.deadline_s:
            result = {"status": "deadline", "detail": f"{elapsed_s:.1f} s > --deadline-s {args.deadline_s}"}
        else:
            result = measure_point(make_run, self.device, args.repeats, args.point_budget_s)
        if result["status"] == "ok":
            result["tok_s"] = batch * args.new_tokens / result["median_s"]
            summary = f"{result['tok_s']:10.1f} output tok/s (median of {len(result['runs_s'])})"
        else:
            summary = f"{result['status']}: {result['detail']}"
        print(f"{model:>14} {peer:>9} batch {batch:>4}: {summary}", file=sys.stderr, flush=True)
        return result

    def save(self) -> None:
        if self.args.json is not None:
            write_json(self.args.json, self.document)


def versions() -> dict[str, str | None]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


# ---- table ---------------------------------------------------------------------------------------


def cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    return f"{result['tok_s']:.1f}" if result["status"] == "ok" else result["status"]


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if a is None or b is None or a["status"] != "ok" or b["status"] != "ok":
        return "-"
    return f"{a['tok_s'] / b['tok_s']:.2f}"


def print_table(document: dict[str, Any], args: argparse.Namespace) -> None:
    ceil = document["ceilings"]
    print(
        f"gpu offline  {document['device_name']}  {args.dtype}  prompt {args.prompt_len} + new "
        f"{args.new_tokens}  greedy, EOS ignored  median of up to {args.repeats}  "
        f"copy {ceil['copy_gb_s']:.0f} GB/s  matmul {ceil['matmul_tflop_s']:.3g} TFLOP/s  "
        f"torch {torch.__version__}  transformers {transformers.__version__}  commit {document['git_commit']}"
    )
    peers = [p for p in PEERS if p in args.peers]
    # Ours against the roofline and against each peer, when ours was run.
    versus = ["roof", *peers[1:]] if "ours" in peers else []
    header = f"{'batch':>5} | " + " | ".join(f"{p + ' tok/s':>15}" for p in peers)
    header += f" | {'roof tok/s':>10} | {'bound':>7}" + "".join(f" | {'ours/' + v:>14}" for v in versus)
    for name, model in document["models"].items():
        print(
            f"{name}: {model['num_params'] / 1e6:.4g} M params, "
            f"{model['weight_bytes'] / 1e9:.3g} GB weights, "
            f"{model['kv_bytes_per_token'] / 1024:.1f} KiB KV per token"
        )
        print(header)
        for row in model["rows"]:
            roof = {"status": "ok", "tok_s": row["roofline"]["tok_s"]}
            line = f"{row['batch_size']:>5} | " + " | ".join(f"{cell(row.get(p)):>15}" for p in peers)
            line += f" | {roof['tok_s']:>10.1f} | {row['roofline']['decode_bound']:>7}"
            line += "".join(f" | {ratio(row['ours'], row.get(v, roof)):>14}" for v in versus)
            print(line)
    if "hf-static" in peers and not args.device.startswith("cuda"):
        print("hf-static off CUDA: static cache only, not compiled")


# ---- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", help="cuda (default) or cpu")
    parser.add_argument(
        "--models", help=f"comma-separated, of {', '.join(SHAPES)}; default {FULL_DEFAULTS['models']}"
    )
    parser.add_argument("--batches", help=f"comma-separated batch sizes; default {FULL_DEFAULTS['batches']}")
    parser.add_argument("--prompt-len", type=int, help="prompt tokens per request; default 128")
    parser.add_argument("--new-tokens", type=int, help="generated tokens per request; default 128")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"columns to run, of {','.join(PEERS)}")
    parser.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float16", "float32"],
        default="auto",
        help="auto: bfloat16 on CUDA, float32 on the CPU",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point; the median is reported")
    parser.add_argument(
        "--point-budget-s",
        type=float,
        default=120.0,
        help="stop timing a point after this many seconds of runs (warm-up apart)",
    )
    parser.add_argument(
        "--deadline-s", type=float, help="points not started this many seconds in are skipped"
    )
    parser.add_argument("--max-num-batched-tokens", type=int, default=4096, help="our engine's step budget")
    parser.add_argument("--seed", type=int, default=0, help="weights and prompts")
    parser.add_argument("--json", type=Path, help="write every figure and the run's parameters here")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny model on the CPU, batches 1,2: checks the script in seconds",
    )
    args = parser.parse_args(argv)
    for key, value in (SMOKE_DEFAULTS if args.smoke else FULL_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = args.models.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.peers = args.peers.split(",")
    unknown = [m for m in args.models if m not in SHAPES] + [p for p in args.peers if p not in PEERS]
    if unknown:
        parser.error(
            f"unknown model or peer {unknown}; models: {', '.join(SHAPES)}; peers: {', '.join(PEERS)}"
        )
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here; use --device cpu or --smoke")
    transformers.logging.set_verbosity_error()
    dtype = getattr(torch, args.dtype)
    ceilings = measure_ceilings(device, dtype, args.smoke)
    print(
        f"ceilings on {device_name(device)}: copy {ceilings.copy_gb_s:.0f} GB/s, "
        f"matmul {ceilings.matmul_tflop_s:.3g} TFLOP/s ({args.dtype})",
        file=sys.stderr,
        flush=True,
    )
    run = Run(args, device, dtype, ceilings)
    for name in args.models:
        run.run_model(name)
    run.save()
    print_table(run.document, args)


if __name__ == "__main__":
    main()
