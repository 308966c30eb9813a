"""`inferline bench`: a server over HTTP (`serve`), the engine without HTTP (`offline`), and their results
(`plot`, `schema`). The settings are `inferline.bench.config`'s models; this module only parses them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from inferline.bench.config import OfflineBenchConfig, ServeBenchConfig
from inferline.cli.options import add_field, build_model, comma_list, given
from inferline.errors import InferlineError

# Fields whose command-line option is not simply --field-name.
OPTION_NAMES = {
    "timeout_s": "--timeout",
    "json_path": "--json",
    "plot_path": "--plot",
    "progress": "--no-progress",
}


def serve_bench_config(args: argparse.Namespace) -> ServeBenchConfig:
    from inferline.bench.metrics import SLO

    values = given(args, ServeBenchConfig)
    if args.slo is not None:
        values["slo"] = SLO.parse(args.slo)
    api_key = args.api_key or os.environ.get("INFERLINE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    if api_key:
        values["api_key"] = api_key
    config: ServeBenchConfig = build_model(ServeBenchConfig, values, OPTION_NAMES)
    return config


def offline_bench_config(args: argparse.Namespace) -> OfflineBenchConfig:
    config: OfflineBenchConfig = build_model(
        OfflineBenchConfig, given(args, OfflineBenchConfig), OPTION_NAMES
    )
    return config


def _serve(args: argparse.Namespace) -> int:
    config = serve_bench_config(args)
    try:
        from inferline.bench.serve import run_serve_bench
    except ImportError as error:
        raise InferlineError(f"bench serve needs {error.name}: pip install 'inferline[bench]'") from None
    return run_serve_bench(config)


def _offline(args: argparse.Namespace) -> int:
    from inferline.bench.offline import run_offline_bench

    return run_offline_bench(offline_bench_config(args))


def _plot(args: argparse.Namespace) -> int:
    from inferline.bench.plot import plot_files

    return plot_files(args.results, args.out)


def _schema(args: argparse.Namespace) -> int:
    import json

    from inferline.bench.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _add_serve_parser(bench_commands: Any) -> None:
    serve = bench_commands.add_parser(
        "serve", help="latency and throughput of an OpenAI-compatible server (vllm bench serve's metrics)"
    )
    cfg = ServeBenchConfig
    add_field(serve, cfg, "base_url")
    add_field(serve, cfg, "model", required=True, help="the model name the server knows")
    add_field(serve, cfg, "endpoint")
    add_field(serve, cfg, "api_key", help="bearer key (default: $INFERLINE_API_KEY, $OPENAI_API_KEY)")
    add_field(serve, cfg, "label")
    add_field(serve, cfg, "dataset", type=Path, help='JSONL of {"prompt"} or {"messages"} lines')
    add_field(serve, cfg, "input_len", type=int)
    add_field(serve, cfg, "output_len", type=int)
    add_field(serve, cfg, "len_jitter", type=float)
    add_field(serve, cfg, "num_prompts", type=int)
    add_field(serve, cfg, "ignore_eos", action="store_true")
    add_field(serve, cfg, "temperature", type=float)
    add_field(serve, cfg, "seed", type=int)
    add_field(
        serve,
        cfg,
        "concurrency",
        type=comma_list(int),
        help="closed-loop points, e.g. 1,4,16,64; with no --request-rate either, concurrency 1",
    )
    add_field(
        serve, cfg, "request_rate", type=comma_list(float), help="open-loop points in req/s, e.g. 0.5,1,inf"
    )
    add_field(serve, cfg, "burstiness", type=float)
    add_field(serve, cfg, "max_concurrency", type=int)
    add_field(serve, cfg, "warmup", type=int)
    # Parsed into an SLO by serve_bench_config, so not a field option.
    serve.add_argument("--slo", help="goodput targets in seconds, e.g. ttft=1.0,tpot=0.1,e2e=20")
    add_field(serve, cfg, "timeout_s", OPTION_NAMES["timeout_s"], type=float)
    add_field(serve, cfg, "json_path", OPTION_NAMES["json_path"], type=Path)
    add_field(serve, cfg, "plot_path", OPTION_NAMES["plot_path"], type=Path)
    add_field(serve, cfg, "progress", OPTION_NAMES["progress"], action="store_false", help="no progress bar")
    serve.set_defaults(handler=_serve)


def _add_offline_parser(bench_commands: Any) -> None:
    offline = bench_commands.add_parser("offline", help="engine throughput per batch size, no HTTP")
    cfg = OfflineBenchConfig
    add_field(offline, cfg, "model")
    add_field(offline, cfg, "batch_sizes", type=comma_list(int))
    add_field(offline, cfg, "input_len", type=int)
    add_field(offline, cfg, "output_len", type=int)
    add_field(offline, cfg, "dtype")
    add_field(offline, cfg, "device")
    add_field(offline, cfg, "repeats", type=int)
    add_field(offline, cfg, "seed", type=int)
    add_field(offline, cfg, "json_path", OPTION_NAMES["json_path"], type=Path)
    offline.set_defaults(handler=_offline)


def add_bench_parser(commands: Any) -> None:
    bench = commands.add_parser("bench", help="benchmark a server over HTTP, or the engine offline")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    _add_serve_parser(bench_commands)
    _add_offline_parser(bench_commands)

    plot = bench_commands.add_parser(
        "plot", help="TTFT and TPOT against output throughput, one line per file"
    )
    plot.add_argument("results", type=Path, nargs="+", help="bench serve --json files")
    plot.add_argument("--out", type=Path, required=True, help="PNG to write")
    plot.set_defaults(handler=_plot)

    schema = bench_commands.add_parser("schema", help="print the JSON Schema of --json results")
    schema.set_defaults(handler=_schema)
