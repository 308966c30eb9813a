"""Metering in the app (the usage database and its writer) and GET /v1/usage, the showback read from it:
an admin key sees every tenant, a tenant's key only its own usage."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CollectorRegistry

from inferline.config import TelemetryConfig
from inferline.db import database_url
from inferline.models.store import inferline_home
from inferline.server.auth import Authenticator
from inferline.server.errors import HTTPError
from inferline.telemetry.metering import UsageWriter
from inferline.telemetry.usage_store import (
    UsageDatabaseError,
    UsageStore,
    parse_group_by,
    parse_since,
)
from inferline.types import UsageRecord

logger = logging.getLogger(__name__)


class Metering:
    """The usage store, and its writer when telemetry.metering is on; started and closed with the app."""

    def __init__(self, config: TelemetryConfig, registry: CollectorRegistry) -> None:
        self.store = UsageStore(database_url(config.database_url, inferline_home()))
        self.writer = UsageWriter.from_config(self.store, config, registry) if config.metering else None

    @property
    def listeners(self) -> list[Callable[[UsageRecord], None]]:
        """What the router calls with each finished request's record."""
        return [self.writer.submit] if self.writer is not None else []

    def start(self) -> None:
        if self.writer is not None:
            self.writer.start()

    async def close(self) -> None:
        """Writes the last records (those of a SIGTERM drain included) off the event loop."""
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)
        self.store.close()


def _viewer(auth: Authenticator, authorization: str | None) -> str | None:
    """None for an admin key (any tenant's usage), else the tenant the key belongs to."""
    if auth.admin_keys:
        try:
            auth.admin(authorization)
        except HTTPError:
            pass
        else:
            return None
    return auth.tenant(authorization).name


def usage_router(store: UsageStore, auth: Authenticator) -> APIRouter:
    api = APIRouter(prefix="/v1")

    @api.get("/usage")
    async def usage(
        request: Request, by: str = "tenant", since: str = "7d", tenant: str | None = None
    ) -> dict[str, Any]:
        viewer = _viewer(auth, request.headers.get("authorization"))
        if viewer is not None:
            if tenant not in (None, viewer):
                raise HTTPError(
                    403,
                    f"this key belongs to tenant {viewer!r} and may only read its own usage "
                    "(an admin key reads any tenant's)",
                    "permission_error",
                    "tenant",
                )
            tenant = viewer
        group_by = parse_group_by(by)
        cutoff = parse_since(since, time.time())
        # The query blocks (SQLite file or PostgreSQL socket): keep it off the event loop.
        try:
            rows = await asyncio.to_thread(store.summary, group_by, cutoff, tenant)
        except UsageDatabaseError as error:
            logger.warning("GET /v1/usage: %s", error)  # the database's address is for operators only
            raise HTTPError(
                503,
                "the usage database cannot be read right now (the server log says why); retry later",
                "service_unavailable",
                headers={"retry-after": "5"},
            ) from None
        return {"object": "list", "by": group_by, "since": since, "data": [asdict(row) for row in rows]}

    return api
