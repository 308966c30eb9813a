"""GET /v1/slo (admin key): every route's objectives, attainment, burn rates, firing alerts and budget."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends

from inferline.telemetry.slo import SloTracker


def slo_router(tracker: SloTracker, admin: Callable[..., Awaitable[None]]) -> APIRouter:
    api = APIRouter(dependencies=[Depends(admin)])

    @api.get("/v1/slo")
    async def slo() -> dict[str, Any]:
        return {"routes": tracker.snapshot()}

    return api
