"""The live dashboard: GET /dashboard (one static page with uPlot vendored beside it; nothing to build,
nothing fetched from the internet) and GET /dashboard/data, the recent series the page polls.

The series come from telemetry's RecentSeries: every UsageRecord, plus a sample of each deployment's
queue, running requests and KV-cache usage taken twice per bucket by `sample_forever` (twice, so that
timer drift never leaves a bucket without one). The page itself holds no data and is always served;
the data needs an admin key when admin_api_keys is set. A server with no keys at all shows it to anyone
who reaches its listen address, which is 127.0.0.1 unless the config says another (and `serve` refuses
any other address without keys).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse

from inferline.backends.llm import LLMBackend
from inferline.router.deployments import Deployment, DeploymentPool
from inferline.server.auth import Authenticator
from inferline.server.errors import HTTPError
from inferline.telemetry.timeseries import BackendSample, RecentSeries

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static") / "dashboard"
_MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}
_NO_CACHE = {"cache-control": "no-cache"}
"""The page is tiny and changes with the server version: revalidate instead of serving a stale copy."""


def backend_sample(deployment: Deployment) -> BackendSample:
    stats = deployment.backend.stats()
    kv_usage = None
    backend = deployment.backend
    if isinstance(backend, LLMBackend) and backend.engine is not None:
        kv_usage = backend.engine.stats().kv_usage
    return BackendSample(
        queue_depth=stats.queue_depth + deployment.waiting, running=stats.running, kv_usage=kv_usage
    )


class Dashboard:
    """The recent series, what fills them, and the routes that serve them."""

    def __init__(self, pool: DeploymentPool, auth: Authenticator, series: RecentSeries | None = None) -> None:
        self.pool = pool
        self.auth = auth
        self.series = series if series is not None else RecentSeries()
        # Asset name -> file, fixed at start: a request names an entry, never a path on disk.
        self.assets = {
            path.relative_to(STATIC).as_posix(): path
            for path in STATIC.rglob("*")
            if path.suffix in _MEDIA_TYPES and path.name != "index.html"
        }

    def sample(self) -> None:
        self.series.sample({d.name: backend_sample(d) for d in self.pool.deployments if d.ready})

    async def sample_forever(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:
                logger.exception("dashboard: sampling the deployments failed")
            await asyncio.sleep(self.series.interval_s / 2)

    async def viewer(self, request: Request) -> None:
        """An admin key when admin_api_keys is set. Without them the data is open only on a server that
        checks no keys at all (which `serve` allows on loopback only): where tenants have keys, their
        usage and cost must not be shown to whoever asks."""
        if self.auth.admin_keys:
            self.auth.admin(request.headers.get("authorization"))
        elif self.auth.enabled:
            raise HTTPError(
                403,
                "the dashboard's data needs an admin key on a server with API keys: set admin_api_keys",
                "permission_error",
            )

    def routes(self) -> APIRouter:
        api = APIRouter(prefix="/dashboard", include_in_schema=False)

        @api.get("")
        async def page() -> FileResponse:
            return FileResponse(STATIC / "index.html", media_type="text/html", headers=_NO_CACHE)

        @api.get("/assets/{name:path}")
        async def asset(name: str) -> FileResponse:
            path = self.assets.get(name)
            if path is None:
                raise HTTPError(404, f"no dashboard asset {name!r}", "not_found_error")
            return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_NO_CACHE)

        @api.get("/data", dependencies=[Depends(self.viewer)])
        async def data() -> JSONResponse:
            # Straight to JSON: a full window is thousands of numbers, not worth validating on the way out.
            return JSONResponse(self.series.snapshot(), headers=_NO_CACHE)

        return api
