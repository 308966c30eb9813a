"""`inferline stream run CONFIG`: only the stream workers of a server config (its `streams:`), with the
deployments they score on, in this process; no HTTP API. SIGTERM or Ctrl-C stops them; messages in
flight are delivered again on the next start and their results written once."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any


async def _run(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, start_http_server

    from inferline.models.store import inferline_home
    from inferline.router.deployments import DeploymentPool
    from inferline.router.limits import Limiter
    from inferline.router.router import Router
    from inferline.server.serve import load_server_config
    from inferline.streams.service import StreamWorkers
    from inferline.telemetry.logs import configure_logging

    config = load_server_config(args.config)
    configure_logging(config.telemetry)
    if not config.streams:
        print(f"error: {args.config} has no `streams:` section: nothing to run", file=sys.stderr)
        return 2
    pool = DeploymentPool(config.deployments)
    router = Router(config, pool, Limiter.from_config(config))
    registry = CollectorRegistry()
    if args.metrics_port is not None:
        start_http_server(args.metrics_port, addr="127.0.0.1", registry=registry)
    workers = StreamWorkers(config, router, registry, inferline_home())
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loading = asyncio.create_task(pool.load_all())
    workers.start()  # each reads once the models have loaded
    names = ", ".join(w.config.name for w in workers.workers)
    print(f"stream workers running: {names}", file=sys.stderr, flush=True)
    try:
        await stopping.wait()
    finally:
        await workers.close()
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await pool.unload_all()
        await router.limiter.close()
    return 0


def _stream_run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


def add_stream_parser(commands: Any) -> None:
    stream = commands.add_parser("stream", help="score messages from Redis Streams or NATS JetStream")
    actions = stream.add_subparsers(dest="stream_command", required=True)
    run = actions.add_parser("run", help="run only the stream workers of a server config (`streams:`)")
    run.add_argument("config", help="YAML server config with a `streams:` section")
    run.add_argument(
        "--metrics-port", type=int, default=None, help="serve the workers' Prometheus metrics on this port"
    )
    run.set_defaults(handler=_stream_run)
