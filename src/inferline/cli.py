"""The `inferline` command."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from inferline.errors import InferlineError


def _chat(args: argparse.Namespace) -> int:
    from inferline.config import EngineConfig
    from inferline.engine.core import EngineCore
    from inferline.types import Request, SamplingParams

    sampling = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    sampling.validate()  # before the model loads: a typo should not cost seconds
    config = EngineConfig(model=args.model, device=args.device, dtype=args.dtype)
    started = time.perf_counter()
    core = EngineCore(config)
    load_s = time.perf_counter() - started
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.message})
    tokenizer = core.tokenizer
    prompt = tokenizer.encode(tokenizer.apply_chat_template(messages), add_special_tokens=False)
    core.add_request(Request("chat", prompt, sampling))
    started = time.perf_counter()
    num_tokens = 0
    while core.has_unfinished():
        for delta in core.step():
            num_tokens += len(delta.token_ids)
            sys.stdout.write(delta.text)
            sys.stdout.flush()
    elapsed = time.perf_counter() - started
    sys.stdout.write("\n")
    if args.stats:
        print(
            f"[{config.model} on {core.loaded.device} {core.loaded.dtype}: loaded in {load_s:.2f} s, "
            f"{num_tokens} tokens in {elapsed:.2f} s = {num_tokens / elapsed:.1f} tok/s]",
            file=sys.stderr,
        )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from inferline.server.serve import load_server_config, serve

    config = load_server_config(args.config, host=args.host, port=args.port, api_keys=args.api_key)
    return serve(config)


def _models_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from inferline.models.store import inferline_home, list_models

    table = Table(title=f"models (store: {inferline_home()})")
    for column in ("name", "aliases", "kind", "size", "available", "path"):
        table.add_column(column)
    for info in list_models():
        size = f"{info.size_bytes / 1e6:.0f} MB" if info.size_bytes else "-"
        table.add_row(
            info.name,
            ", ".join(info.aliases),
            info.kind,
            size,
            "yes" if info.available else "no",
            str(info.path or "-"),
        )
    Console().print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferline", description="Self-hosted AI inference.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log engine events (preemptions, loads)")
    commands = parser.add_subparsers(dest="command", required=True)

    chat = commands.add_parser("chat", help="answer one message with a chat model and stream the reply")
    chat.add_argument("message")
    chat.add_argument("--model", default="default", help="model name, GGUF file or Hugging Face folder")
    chat.add_argument("--system", default=None, help="system prompt")
    chat.add_argument("--max-tokens", type=int, default=256)
    # Sampling, not greedy, by default: greedy decoding makes small models loop.
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--top-p", type=float, default=0.9)
    chat.add_argument("--repetition-penalty", type=float, default=1.1)
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--device", default="auto")
    chat.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    chat.add_argument("--stats", action="store_true", help="print load time and tokens/s to stderr")
    chat.set_defaults(handler=_chat)

    serve = commands.add_parser("serve", help="serve the OpenAI and Open Inference Protocol APIs over HTTP")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--config", default=None, help="YAML file with the server config schema")
    serve.add_argument(
        "--api-key", action="append", default=[], help="bearer key of the default tenant (repeatable)"
    )
    serve.set_defaults(handler=_serve)

    models = commands.add_parser("models", help="the model store")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_commands.add_parser("list", help="models available to serve").set_defaults(handler=_models_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.handler(args))
    except InferlineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
