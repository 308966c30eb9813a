"""`inferline serve`: the OpenAI and Open Inference Protocol APIs over HTTP, configured by a YAML file."""

from __future__ import annotations

import argparse
from typing import Any

from inferline.cli.options import LOCAL_RAY, add_field, add_ray_options
from inferline.config import ServerConfig
from inferline.errors import needs_extra


def _serve(args: argparse.Namespace) -> int:
    from inferline.server.serve import load_server_config, serve

    config = load_server_config(args.config, host=args.host, port=args.port, api_keys=args.api_keys)
    if args.ray is None:
        return serve(config)
    with needs_extra("ray", "ray", "inferline serve --ray"):
        from inferline.cluster.serve import serve_on_ray  # imports Ray: only when asked for

    address = None if args.ray == LOCAL_RAY else args.ray
    return serve_on_ray(config, address, num_cpus=args.ray_num_cpus)


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
    add_ray_options(serve, "serve local deployments on Ray Serve replicas")
    serve.set_defaults(handler=_serve)
