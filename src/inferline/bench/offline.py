"""`inferline bench offline`: the engine's throughput without HTTP, through `inferline.LLM`.

For each batch size B: B prompts of `input_len` random token ids (seeded; the first 100 ids are
skipped so no prompt is made of special tokens), `output_len` tokens each, greedy, end-of-sequence
ignored, timed end to end with prefill included. The model loads once; each batch size gets an engine
with B slots and a KV pool just large enough, so the pool's size never limits the batch.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from inferline.bench.config import OfflineBenchConfig
from inferline.bench.report import console, environment, offline_table, write_json
from inferline.errors import InvalidRequestError
from inferline.types import SamplingParams

if TYPE_CHECKING:  # the engine pulls in torch: imported when the command runs, not at CLI start
    from inferline.engine.llm import LLM

FIRST_PLAIN_TOKEN_ID = 100
BLOCK_SIZE = 16


def random_prompts(batch_size: int, input_len: int, vocab_size: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng([seed, batch_size])
    return rng.integers(FIRST_PLAIN_TOKEN_ID, vocab_size, size=(batch_size, input_len)).tolist()


def time_batch(llm: LLM, prompts: list[list[int]], output_len: int, repeats: int) -> float:
    """Median seconds of `repeats` runs of the whole batch."""
    params = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)
    llm.generate(prompts[:1], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = llm.generate(prompts, params)
        times.append(time.perf_counter() - started)
        lengths = {len(o.outputs[0].token_ids) for o in outputs}
        if lengths != {output_len}:
            raise RuntimeError(f"asked for {output_len} tokens per prompt, got {sorted(lengths)}")
    return statistics.median(times)


def run_offline_bench(config: OfflineBenchConfig) -> int:
    from inferline.config import EngineConfig
    from inferline.engine.llm import LLM
    from inferline.engine.model_loader import load_model
    from inferline.engine.runner import kv_cache_dtype

    loaded = load_model(
        EngineConfig.model_validate({"model": config.model, "device": config.device, "dtype": config.dtype})
    )
    context = loaded.config.max_position_embeddings
    if config.input_len + config.output_len > context:
        raise InvalidRequestError(
            f"--input-len {config.input_len} + --output-len {config.output_len} exceeds the model's "
            f"context of {context} tokens: lower them",
            "input_len",
        )
    blocks_per_seq = -(-(config.input_len + config.output_len) // BLOCK_SIZE) + 1
    bytes_per_block = (
        loaded.config.kv_bytes_per_token * kv_cache_dtype(loaded.dtype, loaded.device).itemsize * BLOCK_SIZE
    )
    points = []
    for batch_size in config.batch_sizes:
        llm = LLM(
            config.model,
            loaded=loaded,
            max_num_seqs=batch_size,
            block_size=BLOCK_SIZE,
            kv_cache_bytes=max(1 << 16, bytes_per_block * blocks_per_seq * batch_size),
            enable_prefix_caching=False,  # random prompts share nothing; keep the cache's cost out
        )
        prompts = random_prompts(batch_size, config.input_len, loaded.config.vocab_size, config.seed)
        elapsed = time_batch(llm, prompts, config.output_len, config.repeats)
        points.append(_point(batch_size, elapsed, config))
        print(
            f"batch {batch_size:>4}: {points[-1]['output_throughput_tps']:9.1f} output tok/s "
            f"({elapsed:.2f} s)",
            file=sys.stderr,
            flush=True,
        )
    dtype = str(loaded.dtype).removeprefix("torch.")
    document = offline_document(config, str(loaded.device), dtype, points)
    console().print(
        offline_table(
            f"inferline bench offline  {document['label']}  {config.input_len} in / "
            f"{config.output_len} out  median of {config.repeats}  {document['created']}",
            points,
        )
    )
    if config.json_path is not None:
        write_json(config.json_path, document)
        print(f"wrote {config.json_path}", file=sys.stderr)
    return 0


def offline_document(
    config: OfflineBenchConfig, device: str, dtype: str, points: list[dict[str, Any]]
) -> dict[str, Any]:
    """The run as an inferline-bench/1 document of kind "offline" (schema.py)."""
    return {
        **environment(f"inferline offline {config.model} {device} {dtype}"),
        "kind": "offline",
        "engine": {"model": config.model, "device": device, "dtype": dtype},
        "workload": {
            "input_len": config.input_len,
            "output_len": config.output_len,
            "repeats": config.repeats,
            "seed": config.seed,
        },
        "points": points,
    }


def _point(batch_size: int, elapsed_s: float, config: OfflineBenchConfig) -> dict[str, Any]:
    input_tokens, output_tokens = batch_size * config.input_len, batch_size * config.output_len
    return {
        "batch_size": batch_size,
        "elapsed_s": elapsed_s,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "output_throughput_tps": output_tokens / elapsed_s,
        "total_token_throughput_tps": (input_tokens + output_tokens) / elapsed_s,
    }
