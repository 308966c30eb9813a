"""`inferline chat`: answer one message with a chat model through `inferline.LLM`, streaming the reply."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from inferline.cli.options import add_field, given
from inferline.config import EngineConfig


def _chat(args: argparse.Namespace) -> int:
    from inferline.engine.llm import LLM
    from inferline.types import Delta, SamplingParams

    sampling = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    sampling.validate()  # before the model loads: a typo should not cost seconds
    started = time.perf_counter()
    llm = LLM(**given(args, EngineConfig))
    load_s = time.perf_counter() - started
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.message})

    def show(delta: Delta) -> None:
        sys.stdout.write(delta.text)
        sys.stdout.flush()

    started = time.perf_counter()
    (output,) = llm.chat(messages, sampling, on_delta=show)
    elapsed = time.perf_counter() - started
    sys.stdout.write("\n")
    if args.stats:
        num_tokens = len(output.outputs[0].token_ids)
        loaded = llm.engine.loaded
        print(
            f"[{llm.engine.config.model} on {loaded.device} {loaded.dtype}: loaded in {load_s:.2f} s, "
            f"{num_tokens} tokens in {elapsed:.2f} s = {num_tokens / elapsed:.1f} tok/s]",
            file=sys.stderr,
        )
    return 0


def add_chat_parser(commands: Any) -> None:
    chat = commands.add_parser("chat", help="answer one message with a chat model and stream the reply")
    chat.add_argument("message")
    add_field(chat, EngineConfig, "model")
    chat.add_argument("--system", default=None, help="system prompt")
    # The sampling defaults are chat's own (no config model holds them), and they sample rather than
    # decode greedily: greedy decoding makes small models loop.
    chat.add_argument("--max-tokens", type=int, default=256, help="(default %(default)s)")
    chat.add_argument("--temperature", type=float, default=0.7, help="(default %(default)s)")
    chat.add_argument("--top-p", type=float, default=0.9, help="(default %(default)s)")
    chat.add_argument("--repetition-penalty", type=float, default=1.1, help="(default %(default)s)")
    chat.add_argument("--seed", type=int, default=None, help="makes the reply reproducible")
    add_field(chat, EngineConfig, "device")
    add_field(chat, EngineConfig, "dtype")
    chat.add_argument("--stats", action="store_true", help="print load time and tokens/s to stderr")
    chat.set_defaults(handler=_chat)
