"""`inferline serve`: the config, the safety checks, and uvicorn with a draining shutdown."""

from __future__ import annotations

import ipaddress
import logging
import math
import signal
import socket
from pathlib import Path

import uvicorn
import yaml
from pydantic import ValidationError

from inferline.config import ServerConfig
from inferline.errors import InvalidRequestError
from inferline.server.app import create_app

logger = logging.getLogger(__name__)


def load_server_config(
    path: str | None, host: str | None = None, port: int | None = None, api_keys: list[str] | None = None
) -> ServerConfig:
    """The YAML file (if any) with command-line values on top; errors name the field and the file."""
    raw: dict[str, object] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
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
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidRequestError(
            f"config{' ' + path if path else ''}: {field}: {first['msg']}", field
        ) from None


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


def serve(config: ServerConfig) -> int:
    check_exposure(config)
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="info",
            access_log=False,
            # SIGTERM: stop accepting, let in-flight requests finish for this long, then exit 0.
            timeout_graceful_shutdown=math.ceil(config.drain_timeout_s),
            limit_concurrency=None,
        )
    )
    # uvicorn re-raises the SIGTERM it handled once it has drained; with a handler of ours in place that
    # re-raise lands here instead of killing the process, which then exits 0 as a clean stop should.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    return 0
