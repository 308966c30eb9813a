"""`inferline serve`: the OpenAI and Open Inference Protocol APIs over HTTP, configured by a YAML file."""

from __future__ import annotations

import argparse
from typing import Any

from inferline.cli.options import add_field
from inferline.config import ServerConfig


def _serve(args: argparse.Namespace) -> int:
    from inferline.server.serve import load_server_config, serve

    config = load_server_config(args.config, host=args.host, port=args.port, api_keys=args.api_keys)
    return serve(config)


def add_serve_parser(commands: Any) -> None:
    serve = commands.add_parser("serve", help="serve the OpenAI and Open Inference Protocol APIs over HTTP")
    add_field(serve, ServerConfig, "host", help="address to listen on; overrides the config file")
    add_field(
        serve, ServerConfig, "port", type=int, help="port (0 picks a free one); overrides the config file"
    )
    serve.add_argument("--config", default=None, help="YAML file with the server config schema")
    add_field(
        serve,
        ServerConfig,
        "api_keys",
        "--api-key",
        action="append",
        help="bearer key of the default tenant (repeatable)",
    )
    serve.set_defaults(handler=_serve)
