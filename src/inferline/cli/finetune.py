"""`inferline finetune --base default --dataset FILE.jsonl -o FOLDER`: LoRA or full supervised fine-tuning on
this machine's CPU; the folder serves as a model source and `inferline registry push` signs it."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _finetune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from inferline.quality.finetune import finetune
    from inferline.quality.finetune_config import FinetuneConfig

    config = FinetuneConfig(
        method=args.method,
        steps=args.steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        lora_rank=args.lora_rank,
        seed=args.seed,
        serve_quantization=args.serve_quantization,
    )

    def progress(step: int, loss: float) -> None:
        print(f"step {step + 1}/{config.steps} loss {loss:.4f}", file=sys.stderr)

    result = finetune(args.base, Path(args.dataset), Path(args.out), config, progress)
    print(
        f"wrote {result.out}: {result.num_examples} examples, {result.num_trainable:,} trained parameters "
        f"({config.method}), loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f} in {result.seconds:.0f} s"
    )
    return 0


def add_finetune_parser(sub: Any) -> None:
    from inferline.quality.finetune_config import FinetuneConfig

    defaults = FinetuneConfig()
    parser = sub.add_parser(
        "finetune", help="fine-tune a Llama-family model (LoRA or full) on a JSONL dataset"
    )
    parser.add_argument(
        "--base", default="default", help="the model to start from (a store name, .gguf, folder)"
    )
    parser.add_argument("--dataset", required=True, help='JSONL: {"messages"} or {"prompt", "completion"}')
    parser.add_argument("-o", "--out", required=True, help="the new model folder")
    parser.add_argument("--method", choices=("lora", "full"), default=defaults.method)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-seq-len", type=int, default=defaults.max_seq_len)
    parser.add_argument("--lora-rank", type=int, default=defaults.lora_rank)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--serve-quantization",
        choices=("int8", "int4", "none"),
        default=defaults.serve_quantization,
        help="the weights' quantization when the folder is served with quantization: auto "
        "(int8 keeps what a short fine-tune learned; int4 lost most of it)",
    )
    parser.set_defaults(handler=_finetune)
