"""The `inferline` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from inferline.errors import InferlineError
from inferline.registry.commands import add_registry_parser
from inferline.registry.rollout_commands import add_rollout_parser

if TYPE_CHECKING:
    from inferline.telemetry.usage_store import UsageRow


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


def _edge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from inferline.edge.agent import AgentConfig, parse_labels, parse_low_confidence, run_agent
    from inferline.server.app import create_app
    from inferline.server.serve import is_loopback

    if not is_loopback(args.host):
        raise InferlineError(f"--host {args.host}: the edge agent serves without API keys, so loopback only")
    config = AgentConfig(
        registry_url=args.registry,
        device_id=args.device_id,
        labels=parse_labels(args.labels),
        model=args.model,
        trusted_root=Path(args.trusted_root),
        public_key=Path(args.pubkey),
        home=Path(args.home),
        host=args.host,
        port=args.port,
        poll_s=args.poll_s,
        low_confidence_mean_logprob=parse_low_confidence(args.low_confidence_mean_logprob),
    )
    return run_agent(config, create_app)


def _add_edge_parser(commands: Any) -> None:
    edge = commands.add_parser("edge", help="edge agent: verified OTA model updates, served on loopback")
    edge.add_argument("--registry", required=True, help="the registry's TUF repository URL")
    edge.add_argument("--device-id", required=True, help="this device's name in its reported state")
    edge.add_argument("--labels", default="", help="rollout selectors KEY=VALUE[,...], e.g. ring=canary")
    edge.add_argument("--model", required=True, help="the model name to follow and serve")
    edge.add_argument("--trusted-root", required=True, help="root.json shipped with the device")
    edge.add_argument("--pubkey", required=True, help="the publisher's bundle-signing public key (PEM)")
    edge.add_argument("--home", required=True, help="folder for installed versions, state and caches")
    edge.add_argument("--host", default="127.0.0.1", help="loopback address to serve on")
    edge.add_argument("--port", type=int, default=8000)
    edge.add_argument("--poll-s", type=float, default=30.0, help="seconds between registry checks")
    edge.add_argument(
        "--low-confidence-mean-logprob",
        default="-2.5",
        help="flag an answer, with its prompt, for the registry's dataset when its tokens' mean "
        "log-probability is below this (≤ 0; default -2.5), or off",
    )
    edge.set_defaults(handler=_edge)


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


def _usage(args: argparse.Namespace) -> int:
    from inferline.db import database_url
    from inferline.models.store import inferline_home
    from inferline.telemetry.usage_store import UsageStore, parse_group_by, parse_since

    configured = args.database_url
    if args.config is not None:
        from inferline.server.serve import load_server_config

        configured = load_server_config(args.config).telemetry.database_url
    by, since = parse_group_by(args.by), parse_since(args.since, time.time())
    store = UsageStore(database_url(configured, inferline_home()))
    try:
        rows = store.summary(by, since, args.tenant)
    finally:
        store.close()
    if args.csv is not None:
        _write_usage_csv(rows, args.csv)
        print(f"wrote {len(rows)} rows to {args.csv}", file=sys.stderr)
    else:
        _print_usage_table(rows, f"usage by {by} since {args.since} ({store.url})", by)
    return 0


def _write_usage_csv(rows: Sequence[UsageRow], path: str) -> None:
    import csv
    import dataclasses

    from inferline.telemetry.usage_store import UsageRow

    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=[field.name for field in dataclasses.fields(UsageRow)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(row) for row in rows)


def _print_usage_table(rows: Sequence[UsageRow], title: str, by: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    table = Table(title=title)
    table.add_column(by)
    numbers = ("requests", "prompt tokens", "completion tokens", "cost USD", "p95 latency ms", "p95 TTFT ms")
    for column in (*numbers, "errors", "rejected"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row.key or "(not routed)",
            f"{row.requests:,}",
            f"{row.prompt_tokens:,}",
            f"{row.completion_tokens:,}",
            f"{row.cost_usd:,.6f}",
            ms(row.p95_latency_ms),
            ms(row.p95_ttft_ms),
            f"{row.errors:,}",
            f"{row.rejected:,}",
        )
    Console().print(table)


def _bench_serve(args: argparse.Namespace) -> int:
    from inferline.bench.config import ServeBenchConfig, build_config
    from inferline.bench.metrics import SLO

    try:
        from inferline.bench.serve import run_serve_bench
    except ImportError as error:
        raise InferlineError(f"bench serve needs {error.name}: pip install 'inferline[bench]'") from None

    options = {k: v for k, v in vars(args).items() if k in ServeBenchConfig.model_fields}
    options["slo"] = SLO.parse(args.slo) if args.slo is not None else None
    options["api_key"] = (
        args.api_key or os.environ.get("INFERLINE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    )
    options["timeout_s"], options["json_path"], options["plot_path"] = args.timeout, args.json, args.plot
    options["progress"] = not args.no_progress
    return run_serve_bench(build_config(ServeBenchConfig, options))


def _bench_offline(args: argparse.Namespace) -> int:
    from inferline.bench.config import OfflineBenchConfig, build_config
    from inferline.bench.offline import run_offline_bench

    options = {k: v for k, v in vars(args).items() if k in OfflineBenchConfig.model_fields}
    options["json_path"] = args.json
    return run_offline_bench(build_config(OfflineBenchConfig, options))


def _bench_plot(args: argparse.Namespace) -> int:
    from inferline.bench.plot import plot_files

    return plot_files(args.results, args.out)


def _bench_schema(args: argparse.Namespace) -> int:
    import json

    from inferline.bench.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _comma_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """`1,4,16` → [1, 4, 16], for options that take several values at once."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers like 1,4,16: {error}"
            ) from None

    return parse


def _add_bench_parser(commands: Any) -> None:
    from pathlib import Path

    bench = commands.add_parser("bench", help="benchmark a server over HTTP, or the engine offline")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)

    serve = bench_commands.add_parser(
        "serve",
        help="latency and throughput of an OpenAI-compatible server (vllm bench serve's metrics)",
    )
    serve.add_argument(
        "--base-url", default="http://127.0.0.1:8000", help="server root (with or without /v1)"
    )
    serve.add_argument("--model", required=True, help="the model name the server knows")
    serve.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    serve.add_argument(
        "--api-key", default=None, help="bearer key (default: $INFERLINE_API_KEY, $OPENAI_API_KEY)"
    )
    serve.add_argument(
        "--label", default=None, help="name of this run in plots (default 'MODEL @ HOST:PORT')"
    )
    serve.add_argument("--dataset", type=Path, default=None, help='JSONL of {"prompt"} or {"messages"} lines')
    serve.add_argument("--input-len", type=int, default=128, help="synthetic prompt length in tokens")
    serve.add_argument("--output-len", type=int, default=128, help="output tokens asked for per request")
    serve.add_argument("--len-jitter", type=float, default=0.0, help="lengths uniform in len*(1±jitter)")
    serve.add_argument(
        "--num-prompts",
        type=int,
        default=None,
        help="requests per point (default 100, or every dataset line)",
    )
    serve.add_argument("--ignore-eos", action="store_true", help="send ignore_eos: exact output lengths")
    serve.add_argument("--temperature", type=float, default=0.0)
    serve.add_argument("--seed", type=int, default=0, help="seed of prompts, lengths and arrivals")
    serve.add_argument(
        "--concurrency", type=_comma_list(int), default=[], help="closed-loop points, e.g. 1,4,16,64"
    )
    serve.add_argument(
        "--request-rate",
        type=_comma_list(float),
        default=[],
        help="open-loop points in req/s, e.g. 0.5,1,inf",
    )
    serve.add_argument(
        "--burstiness", type=float, default=1.0, help="gamma shape of arrival gaps; 1 = Poisson"
    )
    serve.add_argument(
        "--max-concurrency", type=int, default=None, help="open loop: cap on requests in flight"
    )
    serve.add_argument("--warmup", type=int, default=2, help="requests sent first and not counted")
    serve.add_argument(
        "--slo", default=None, help="goodput targets in seconds, e.g. ttft=1.0,tpot=0.1,e2e=20"
    )
    serve.add_argument(
        "--timeout", type=float, default=300.0, help="longest wait for the server's next byte, s"
    )
    serve.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    serve.add_argument("--plot", type=Path, default=None, help="write the latency/throughput chart (PNG)")
    serve.add_argument("--no-progress", action="store_true", help="no progress bar")
    serve.set_defaults(handler=_bench_serve)

    offline = bench_commands.add_parser("offline", help="engine throughput per batch size, no HTTP")
    offline.add_argument("--model", default="default", help="model name, GGUF file or Hugging Face folder")
    offline.add_argument("--batch-sizes", type=_comma_list(int), default=[1, 8, 32], help="e.g. 1,8,32")
    offline.add_argument("--input-len", type=int, default=128)
    offline.add_argument("--output-len", type=int, default=128)
    offline.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    offline.add_argument("--device", default="auto")
    offline.add_argument(
        "--repeats", type=int, default=3, help="timed runs per batch size; the median is kept"
    )
    offline.add_argument("--seed", type=int, default=0)
    offline.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    offline.set_defaults(handler=_bench_offline)

    plot = bench_commands.add_parser(
        "plot", help="TTFT and TPOT against output throughput, one line per file"
    )
    plot.add_argument("results", type=Path, nargs="+", help="bench serve --json files")
    plot.add_argument("--out", type=Path, required=True, help="PNG to write")
    plot.set_defaults(handler=_bench_plot)

    schema = bench_commands.add_parser("schema", help="print the JSON Schema of --json results")
    schema.set_defaults(handler=_bench_schema)


def _add_usage_parser(commands: Any) -> None:
    usage = commands.add_parser(
        "usage", help="requests, tokens, cost, p95 latency and errors per tenant, route, deployment or model"
    )
    usage.add_argument("--by", default="tenant", help="tenant, route, deployment or model (default tenant)")
    usage.add_argument(
        "--since", default="7d", help="30m, 24h, 7d, ... or an ISO date such as 2025-01-31 (default 7d)"
    )
    usage.add_argument("--tenant", default=None, help="only this tenant's requests")
    usage.add_argument("--csv", default=None, metavar="FILE", help="write the rows to FILE as CSV instead")
    database = usage.add_mutually_exclusive_group()
    database.add_argument(
        "--config", default=None, help="the server's YAML config: read its telemetry.database_url"
    )
    database.add_argument(
        "--database-url",
        default=None,
        help="SQLAlchemy URL of the usage database (default: inferline.db in $INFERLINE_HOME)",
    )
    usage.set_defaults(handler=_usage)


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

    _add_bench_parser(commands)
    _add_usage_parser(commands)
    add_registry_parser(commands)
    add_rollout_parser(commands)
    _add_edge_parser(commands)
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
