"""`inferline serve`: the config, the safety checks, and uvicorn with a draining shutdown."""

from __future__ import annotations

import gc
import ipaddress
import logging
import math
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn
import yaml
from fastapi import FastAPI
from pydantic import ValidationError

from inferline.backends.base import Backend
from inferline.config import DeploymentConfig, LocalDeploymentBase, ServerConfig
from inferline.errors import InferlineError, InvalidRequestError
from inferline.router.deployments import build_backend
from inferline.telemetry.logs import configure_logging

logger = logging.getLogger(__name__)


def load_server_config(
    path: str | None, host: str | None = None, port: int | None = None, api_keys: list[str] | None = None
) -> ServerConfig:
    """The YAML file (if any) with command-line values on top. Any error names the file, the line and
    the field, and the server does not start half-configured."""
    raw: dict[str, object] = {}
    text = ""
    if path is not None:
        try:
            text = Path(path).read_text()
            loaded = yaml.safe_load(text)
        except (OSError, yaml.YAMLError) as error:
            raise InvalidRequestError(f"cannot read config {path}: {error}", "config") from None
        if not isinstance(loaded, dict):
            raise InvalidRequestError(
                f"config {path} must be a mapping of the server schema's fields", "config"
            )
        raw = loaded
    overrides = {"host": host, "port": port}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if api_keys:
        existing = raw.get("api_keys") or []
        if not isinstance(existing, list):
            raise InvalidRequestError(f"config {path}: api_keys must be a list of keys", "api_keys")
        raw["api_keys"] = [*existing, *api_keys]
    try:
        return ServerConfig.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        raise _config_error(path, text, tuple(first["loc"]), first["msg"]) from None


def _config_error(
    path: str | None, text: str, loc: tuple[str | int, ...], message: str
) -> InvalidRequestError:
    # pydantic puts union members' type names into the location; they are not fields of the file.
    fields = [p for p in loc if isinstance(p, int) or p[:1].islower()]
    field = ".".join(str(p) for p in fields)
    line = _line_of(text, fields) if text else None
    where = f"{path}:{line}" if path and line else (path or "config")
    return InvalidRequestError(f"{where}: {field}: {message}", field)


def _line_of(text: str, loc: list[str | int]) -> int | None:
    """The 1-based line of the YAML node at `loc` (or of its nearest parent that exists)."""
    node = yaml.compose(text)
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if k.value == part]
            if not found:
                break
            key, node = found[0]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None)
            )
        except OSError:
            return False


def check_exposure(config: ServerConfig) -> None:
    if not is_loopback(config.host) and not config.api_keys and not config.tenants:
        raise InvalidRequestError(
            f"refusing to listen on {config.host}, which other machines can reach, with no API keys: "
            "pass --api-key KEY (or configure tenants), or listen on 127.0.0.1",
            "host",
        )


def serve(
    config: ServerConfig,
    build: Callable[[DeploymentConfig], Backend] = build_backend,
    extend: Callable[[FastAPI], None] | None = None,
) -> int:
    """Serve `config` until SIGTERM or SIGINT. `build` makes each deployment's backend; `extend` adds
    routes to the app (`inferline serve --ray` adds the cluster's admin API)."""
    # The start builds ~300k objects that live as long as the process (the app's modules, the models);
    # as they pile up the collector walks all of them again and again (five full collections, ~0.5 s of
    # a 3 s start) and finds next to nothing. The pool turns it back on once the models have loaded.
    gc.disable()
    # Here, not at the top: `inferline stream run` reads its config with this module and needs no app.
    from inferline.server.app import create_app

    check_exposure(config)
    configure_logging(config.telemetry)

    def stop() -> None:
        server.should_exit = True  # uvicorn's own stop: the lifespan's shutdown still runs

    app = create_app(config, stop=stop, build=build)
    if extend is not None:
        extend(app)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="info",
            log_config=None,  # uvicorn's lines go through the handler configure_logging installed
            access_log=False,  # the app writes its own access lines, with request id, tenant and tokens
            # SIGTERM: stop accepting, let in-flight requests finish for this long, then exit 0.
            timeout_graceful_shutdown=math.ceil(config.drain_timeout_s),
            limit_concurrency=None,
        )
    )
    # uvicorn re-raises the SIGTERM it handled once it has drained; with a handler of ours in place that
    # re-raise lands here instead of killing the process, which then exits 0 as a clean stop should.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    failed: dict[str, str] = app.state.router.pool.failed
    if failed and config.on_load_failure == "exit":
        raise InferlineError(_load_failure_message(config, failed))
    return 0


def _load_failure_message(config: ServerConfig, failed: dict[str, str]) -> str:
    """What failed to load, why, and the two ways on: fix it, or serve the other deployments."""
    causes = []
    for i, deployment in enumerate(config.deployments):
        if deployment.name in failed:
            where = (
                f"source {deployment.source!r}"
                if isinstance(deployment, LocalDeploymentBase)
                else f"base_url {deployment.base_url!r}"
            )
            causes.append(
                f"deployment {deployment.name!r} (deployments[{i}], kind {deployment.kind}, {where}) failed "
                f"to load: {failed[deployment.name]}"
            )
    return (
        f"{'; '.join(causes)}. Fix the cause (e.g. install the weights package it names, or point "
        "`source` at the model's files), or set `on_load_failure: serve_rest` in the config to serve the "
        "other deployments without it"
    )
