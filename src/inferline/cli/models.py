"""`inferline models`: the model store."""

from __future__ import annotations

import argparse
from typing import Any


def _list(args: argparse.Namespace) -> int:
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


def add_models_parser(commands: Any) -> None:
    models = commands.add_parser("models", help="the model store")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_commands.add_parser("list", help="models available to serve").set_defaults(handler=_list)
