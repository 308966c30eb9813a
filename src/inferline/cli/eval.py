"""`inferline eval MODEL --dataset FILE.jsonl --metrics exact_match,contains,regex,judge`: score a model on
a dataset and, for a registry version, store the scores against it (the rollout gate compares them)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _eval(args: argparse.Namespace) -> int:
    from inferline.quality.evaluation import (
        evaluate,
        load_cases,
        local_answerer,
        parse_metrics,
        remote_answerer,
    )
    from inferline.registry.catalog import open_catalog
    from inferline.registry.serving import parse_registry_source

    metrics = parse_metrics(args.metrics)
    cases = load_cases(Path(args.dataset))
    registry = parse_registry_source(args.model) or parse_registry_source(args.store)
    if args.base_url is not None:
        answer = remote_answerer(args.base_url, args.model, args.api_key, args.max_tokens)
    elif registry is not None and args.store is None:
        with open_catalog(args.database_url) as catalog:
            path = catalog.resolve(registry.name, registry.ref).path
        answer = local_answerer(str(path), args.max_tokens, args.quantization)
    else:
        answer = local_answerer(args.model, args.max_tokens, args.quantization)
    judge = None
    if args.judge_url is not None:
        judge = remote_answerer(args.judge_url, args.judge_model, args.judge_api_key, max_tokens=4)
    result = evaluate(cases, answer, metrics, judge)
    summary: dict[str, Any] = {"model": args.model, "num_cases": result.num_cases, "scores": result.scores}
    if registry is not None:
        with open_catalog(args.database_url) as catalog:
            record = catalog.set_scores(registry.name, registry.ref, result.scores)
        summary["stored"] = f"{record.name}:{record.version}"
    print(json.dumps(summary))
    if registry is None:
        print("scores not stored: MODEL (or --store) is not registry:NAME:VERSION", file=sys.stderr)
    return 0


def add_eval_parser(sub: Any) -> None:
    from inferline.quality.evaluation import METRICS

    parser = sub.add_parser(
        "eval",
        help="score a model on a JSONL dataset; registry versions keep their scores",
        description="MODEL: registry:NAME:VERSION_OR_ALIAS (loaded here, scores stored), any model source "
        "(a store name, a .gguf file, a model folder), or with --base-url a route of a running server.",
    )
    parser.add_argument("model")
    parser.add_argument("--dataset", required=True, help='JSONL: {"prompt"|"messages", "expected", ...}')
    parser.add_argument(
        "--metrics", default="exact_match,contains", help=f"comma-separated: {','.join(METRICS)}"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="per answer (greedy)")
    parser.add_argument(
        "--quantization",
        choices=("auto", "none", "int8", "int4"),
        default="auto",
        help="weights of a model loaded here, as the deployment's engine.quantization will serve it",
    )
    parser.add_argument(
        "--base-url", help="an OpenAI-compatible API root (http://HOST:PORT/v1) serving MODEL"
    )
    parser.add_argument("--api-key", help="the key for --base-url")
    parser.add_argument("--store", help="registry:NAME:VERSION to store the scores against (with --base-url)")
    parser.add_argument("--judge-url", help="the judge's OpenAI-compatible API root, for the judge metric")
    parser.add_argument("--judge-model", default="default", help="the judge's route or model name")
    parser.add_argument("--judge-api-key", help="the key for --judge-url")
    parser.add_argument("--database-url", help="the registry database; default: inferline.db")
    parser.set_defaults(handler=_eval)
