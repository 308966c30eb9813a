"""The `inferline` command: one module per command group, each adding its parser to the one built here.

Each group parses its options and prints; the work is done by the package it drives (engine, server,
bench, registry, edge, telemetry). Config models own the defaults: see `options.py`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from inferline.cli.batch import add_batch_parser
from inferline.cli.bench import add_bench_parser
from inferline.cli.chat import add_chat_parser
from inferline.cli.data import add_data_parser
from inferline.cli.edge import add_edge_parser
from inferline.cli.eval import add_eval_parser
from inferline.cli.finetune import add_finetune_parser
from inferline.cli.models import add_models_parser
from inferline.cli.registry import add_registry_parser
from inferline.cli.rollout import add_rollout_parser
from inferline.cli.serve import add_serve_parser
from inferline.cli.stream import add_stream_parser
from inferline.cli.usage import add_usage_parser
from inferline.errors import InferlineError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferline", description="Self-hosted AI inference.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log engine events (preemptions, loads)")
    commands = parser.add_subparsers(dest="command", required=True)
    for add_parser in (
        add_chat_parser,
        add_serve_parser,
        add_models_parser,
        add_bench_parser,
        add_batch_parser,
        add_stream_parser,
        add_usage_parser,
        add_registry_parser,
        add_rollout_parser,
        add_edge_parser,
        add_data_parser,
        add_eval_parser,
        add_finetune_parser,
    ):
        add_parser(commands)
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
