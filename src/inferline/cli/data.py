"""`inferline data export`: captured requests (with their feedback) and the edge's flagged cases as one
JSONL or Parquet dataset, for review, evaluation sets and fine-tuning."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from inferline.config import ServerConfig
    from inferline.db import database_url
    from inferline.models.store import inferline_home
    from inferline.quality.capture_store import CaptureStore
    from inferline.quality.export import edge_rows, server_rows, write_rows
    from inferline.quality.redaction import Redactor
    from inferline.registry.dataset import Dataset
    from inferline.telemetry.usage_store import parse_since

    config = ServerConfig(deployments=[])
    if args.config is not None:
        from inferline.server.serve import load_server_config

        config = load_server_config(args.config)
    url = database_url(args.database_url or config.telemetry.database_url, inferline_home())
    since = parse_since(args.since, time.time()) if args.since else None
    store = CaptureStore(url)
    dataset = Dataset(url)
    try:
        rows = server_rows(store, since, args.route, args.flag)
        redactor = Redactor(config.quality.capture.redact_patterns)
        rows += edge_rows(dataset, redactor, since, args.route, args.flag)
    finally:
        store.close()
        dataset.close()
    num_written = write_rows(rows, Path(args.out), args.format)
    num_edge = sum(row["source"] == "edge" for row in rows)
    print(f"wrote {num_written} rows ({num_edge} from edge devices) to {args.out}", file=sys.stderr)
    return 0


def _teach(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from inferline.quality.evaluation import remote_answerer
    from inferline.quality.export import write_rows
    from inferline.quality.teacher import teach

    rows = [json.loads(line) for line in Path(args.input).read_text().splitlines() if line.strip()]
    answer = remote_answerer(args.base_url, args.model, args.api_key, args.max_tokens)
    taught = teach(rows, answer, args.model, args.system)
    write_rows(taught, Path(args.out), "jsonl")
    print(f"wrote {len(taught)} rows answered by {args.model} to {args.out}", file=sys.stderr)
    return 0


def add_data_parser(sub: Any) -> None:
    from inferline.quality.capture import FLAGS
    from inferline.registry.dataset import EXPORT_FORMATS

    data = sub.add_parser("data", help="the captured requests and flagged cases of the quality loop")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    export = data_sub.add_parser("export", help="write captured requests and edge cases as one dataset")
    export.add_argument("-o", "--out", required=True, help="the file to write")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl")
    export.add_argument("--since", help="only from then: 30m, 24h, 7d or an ISO date")
    export.add_argument("--route", help="only this route (edge cases: this model)")
    export.add_argument("--flag", help=f"only rows with this flag ({', '.join(FLAGS)}; edge: low_confidence)")
    export.add_argument("--config", help="the server's config file (its database and redact_patterns)")
    export.add_argument("--database-url", help="default: telemetry.database_url, else inferline.db")
    export.set_defaults(handler=_export)

    teach = data_sub.add_parser("teach", help="answer exported rows with a stronger teacher route")
    teach.add_argument("input", help="an export (JSONL)")
    teach.add_argument(
        "-o", "--out", required=True, help="the JSONL file to write (inferline finetune reads it)"
    )
    teach.add_argument("--base-url", required=True, help="the teacher's OpenAI-compatible API root (.../v1)")
    teach.add_argument("--model", required=True, help="the teacher's route or model name")
    teach.add_argument("--api-key", help="the key for --base-url")
    teach.add_argument("--system", help="a system message put before each conversation")
    teach.add_argument("--max-tokens", type=int, default=128)
    teach.set_defaults(handler=_teach)
