"""How close quantized weights stay to the float model: greedy token agreement and perplexity.

The float32 model is the reference. Each format greedily continues the same prompts (64 tokens each,
end-of-sequence ignored); agreement is the share of each continuation equal to the reference's before
the first differing token (and, looser, the share of equal positions). Perplexity is scored on the
fixed text in benchmarks/data/quality_text.txt (original prose, ~430 tokens).

    .venv/bin/python benchmarks/quant_quality.py
    .venv/bin/python benchmarks/quant_quality.py --smoke   # seconds: float32 and default, 2 prompts
    .venv/bin/python benchmarks/quant_quality.py --model path/to/model-Q4_K_M.gguf   # what auto makes of it
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from inferline import LLM, SamplingParams
from inferline.bench.quality import perplexity, token_agreement
from inferline.config import EngineConfig
from inferline.engine.model_loader import LoadedModel, load_model

TEXT = Path(__file__).with_name("data") / "quality_text.txt"
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
    "Water boils at a temperature of",
    "The three primary colours are",
    "To make bread you need flour, water,",
    "The first person to walk on the moon was",
    "A list of prime numbers: 2, 3, 5,",
]
FORMATS = {
    "float32": {"dtype": "float32"},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"quantization": "int8"},
    "int4": {"quantization": "int4"},
    "default": {},  # quantization auto: what `inferline serve` runs
}
SMOKE = {"new_tokens": 4, "formats": "float32,default", "num_prompts": 2, "text_tokens": 64}
"""--smoke: every code path in seconds (the figures mean nothing)."""


def greedy(loaded: LoadedModel, prompts: list[str], new_tokens: int) -> list[list[int]]:
    llm = LLM(loaded=loaded, kv_cache_bytes=128 << 20)
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument(
        "--formats", default=",".join(FORMATS), help=f"of {', '.join(FORMATS)}; float32 always runs first"
    )
    parser.add_argument("--num-prompts", type=int, default=len(PROMPTS), help="the first N prompts")
    parser.add_argument("--text-tokens", type=int, help="score only the text's first N tokens")
    parser.add_argument(
        "--model", default="default", help="a GGUF or HF folder (e.g. a K-quant, for what auto maps it to)"
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--smoke", action="store_true", help=f"tiny run: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    formats = ["float32", *(f for f in args.formats.split(",") if f != "float32")]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        parser.error(f"--formats: unknown {unknown}; choose from {', '.join(FORMATS)}")
    rows = {}
    outputs: dict[str, list[list[int]]] = {}
    for name in formats:
        loaded = load_model(EngineConfig(model=args.model, device="cpu", **FORMATS[name]))
        if name == "default":
            print(f"default: {loaded.quantization.mode} ({loaded.quantization.reason})", flush=True)
        ids = loaded.tokenizer.encode(TEXT.read_text())[: args.text_tokens]
        outputs[name] = greedy(loaded, PROMPTS[: args.num_prompts], args.new_tokens)
        # bfloat16 is the fair reference for the quantized formats: they compute in it.
        versus_float = token_agreement(outputs["float32"], outputs[name])
        versus_bf16 = token_agreement(outputs.get("bfloat16", outputs["float32"]), outputs[name])
        rows[name] = {
            "perplexity": perplexity(loaded, ids),
            # 16 tokens at a time: every matmul on the decode kernels, int8 activations included.
            "perplexity_decode_path": perplexity(loaded, ids, chunk=16),
            "text_tokens": len(ids),
            "prefix_agreement_float32": versus_float.matching_prefix,
            "position_agreement_float32": versus_float.matching_positions,
            "prefix_agreement_bfloat16": versus_bf16.matching_prefix,
        }
    print(
        "| weights | perplexity | vs float32 | perplexity, 16-token chunks | vs float32 "
        "| prefix agreement with float32 | positions equal to float32 | prefix agreement with bfloat16 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    chunked_base = rows["float32"]["perplexity_decode_path"]
    base = rows["float32"]["perplexity"]
    for name, row in rows.items():
        chunked = row["perplexity_decode_path"]
        print(
            f"| {name} | {row['perplexity']:.2f} | {row['perplexity'] / base - 1:+.1%} | "
            f"{chunked:.2f} | {chunked / chunked_base - 1:+.1%} | "
            f"{row['prefix_agreement_float32']:.0%} | {row['position_agreement_float32']:.0%} | "
            f"{row['prefix_agreement_bfloat16']:.0%} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
