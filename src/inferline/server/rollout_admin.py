"""The admin API of staged rollouts, and the controller built from the router's planned canaries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict

from inferline.config import LocalDeploymentBase, ServerConfig
from inferline.db import database_url
from inferline.models.store import inferline_home
from inferline.registry.rollout import RolloutController, RolloutError, RolloutStore, RolloutTarget
from inferline.router.router import Router
from inferline.server.errors import HTTPError


class RolloutUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["pause", "resume", "abort"]


def rollout_controller(config: ServerConfig, router: Router, catalog_url: str | None) -> RolloutController:
    """A controller over every configured route whose canary has a `rollout` plan."""
    sources = {d.name: d.source for d in config.deployments if isinstance(d, LocalDeploymentBase)}
    targets = []
    for name, state in router.routes.items():
        canary = state.canary
        if canary is None or canary.config.rollout is None:
            continue
        baseline, candidate = canary.config.baseline, canary.config.candidate
        targets.append(
            RolloutTarget(
                route=name,
                config=canary.config,
                canary=canary,
                baseline=state.arms[baseline],
                candidate=state.arms[candidate],
                baseline_source=sources.get(baseline),
                candidate_source=sources.get(candidate),
            )
        )
    store = RolloutStore(database_url(config.telemetry.database_url, inferline_home()))
    return RolloutController(targets, store, catalog_url)


def rollout_admin_router(controller: RolloutController, admin: Callable[..., Awaitable[None]]) -> APIRouter:
    api = APIRouter(prefix="/admin", dependencies=[Depends(admin)])

    @api.get("/rollouts")
    async def rollouts() -> dict[str, Any]:
        return {"rollouts": controller.snapshot()}

    @api.post("/rollouts/{route}")
    async def act(route: str, update: RolloutUpdate) -> dict[str, Any]:
        if route not in controller.plans:
            known = ", ".join(sorted(controller.plans)) or "none"
            raise HTTPError(
                404, f"route {route!r} has no rollout plan (routes with one: {known})", "not_found_error"
            )
        try:
            controller.act(route, update.action)
        except RolloutError as error:
            raise HTTPError(409, str(error), "conflict_error", "action") from None
        return controller.snapshot()[route]

    return api
