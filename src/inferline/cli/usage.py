"""`inferline usage`: requests, tokens, cost, p95 latency and errors per tenant, route, deployment or model,
read from the usage database the server writes."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferline.telemetry.usage_store import UsageRow


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
        _write_csv(rows, args.csv)
        print(f"wrote {len(rows)} rows to {args.csv}", file=sys.stderr)
    else:
        _print_table(rows, f"usage by {by} since {args.since} ({store.url})", by)
    return 0


def _write_csv(rows: Sequence[UsageRow], path: str) -> None:
    import csv
    import dataclasses

    from inferline.telemetry.usage_store import UsageRow

    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=[field.name for field in dataclasses.fields(UsageRow)])
        writer.writeheader()
        writer.writerows(dataclasses.asdict(row) for row in rows)


def _print_table(rows: Sequence[UsageRow], title: str, by: str) -> None:
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


def add_usage_parser(commands: Any) -> None:
    usage = commands.add_parser(
        "usage", help="requests, tokens, cost, p95 latency and errors per tenant, route, deployment or model"
    )
    usage.add_argument(
        "--by", default="tenant", help="tenant, route, deployment or model (default %(default)s)"
    )
    usage.add_argument(
        "--since",
        default="7d",
        help="30m, 24h, 7d, ... or an ISO date such as 2025-01-31 (default %(default)s)",
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
