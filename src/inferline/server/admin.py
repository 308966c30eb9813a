"""The admin API: live routing state, and the few levers an operator pulls during an incident."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from inferline.router.route_state import RouteState
from inferline.router.router import Router
from inferline.server.errors import HTTPError
from inferline.streams.service import StreamWorkers


class WeightsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(..., description="deployment -> relative share, for a weighted route")


class CanaryUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["pause", "resume"] | None = None
    percent: float | None = Field(None, ge=0, le=100)


def admin_router(router: Router, admin: Callable[..., Awaitable[None]], streams: StreamWorkers) -> APIRouter:
    api = APIRouter(prefix="/admin", dependencies=[Depends(admin)])

    def explicit(name: str) -> RouteState:
        state = router.resolve(name)
        if state.implicit:
            raise HTTPError(
                400,
                f"{name!r} is a deployment, not a configured route: nothing to change",
                "invalid_request_error",
            )
        return state

    @api.get("/routes")
    async def routes() -> dict[str, Any]:
        return {"routes": router.snapshot()}

    @api.get("/limits")
    async def limits() -> dict[str, Any]:
        return {"limits": await router.limiter.snapshot()}

    @api.get("/streams")
    async def stream_workers() -> dict[str, Any]:
        """Each stream worker: its source, state, counts, lag and last error."""
        return {"streams": streams.snapshot()}

    @api.post("/routes/{name}/weights")
    async def set_weights(name: str, update: WeightsUpdate) -> dict[str, Any]:
        state = explicit(name)
        _check_weights(state, update.weights)
        state.weights = dict(update.weights)
        return state.snapshot(router.pool)

    @api.post("/routes/{name}/canary")
    async def canary(name: str, update: CanaryUpdate) -> dict[str, Any]:
        state = explicit(name)
        _apply_canary(state, update)
        return state.snapshot(router.pool)

    return api


def _check_weights(state: RouteState, weights: dict[str, float]) -> None:
    name = state.config.name
    if state.config.policy != "weighted":
        raise HTTPError(
            400, f"route {name!r} is {state.config.policy}, not weighted", "invalid_request_error"
        )
    unknown = sorted(set(weights) - set(state.config.members()))
    if unknown:
        raise HTTPError(
            400, f"not deployments of route {name!r}: {unknown}", "invalid_request_error", "weights"
        )
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise HTTPError(
            400, "weights must be >= 0 and add up to more than 0", "invalid_request_error", "weights"
        )


def _apply_canary(state: RouteState, update: CanaryUpdate) -> None:
    if state.canary is None:
        raise HTTPError(400, f"route {state.config.name!r} has no canary", "invalid_request_error")
    if update.percent is not None:
        state.canary.set_percent(update.percent)
    if update.action == "pause":
        state.canary.pause()
    elif update.action == "resume":
        state.canary.resume()
