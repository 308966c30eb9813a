"""The admin API of deployments: what version each one serves, and moving one to another registry version
without dropping a request (load beside, switch, drain, unload)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from inferline.config import LocalDeploymentBase, ServerConfig
from inferline.errors import InferlineError
from inferline.registry.catalog import RegistryError
from inferline.registry.serving import RegistrySources, parse_registry_source
from inferline.router.deployments import Deployment, DeploymentPool
from inferline.server.errors import HTTPError


class VersionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(..., min_length=1, description="A registry version ('2') or alias ('prod').")


def deployments_admin_router(
    config: ServerConfig,
    pool: DeploymentPool,
    sources: RegistrySources,
    admin: Callable[..., Awaitable[None]],
) -> APIRouter:
    api = APIRouter(prefix="/admin", dependencies=[Depends(admin)])
    configured = {d.name: d for d in config.deployments}

    @api.get("/deployments")
    async def deployments() -> dict[str, Any]:
        return {"deployments": [_snapshot(d) for d in pool.deployments]}

    @api.post("/deployments/{name}/version")
    async def set_version(name: str, update: VersionUpdate) -> dict[str, Any]:
        deployment = pool.find(name)
        original = configured[deployment.name]
        if not isinstance(original, LocalDeploymentBase) or parse_registry_source(original.source) is None:
            loads = original.source if isinstance(original, LocalDeploymentBase) else original.base_url
            raise HTTPError(
                400,
                f"deployment {deployment.name!r} loads {loads!r}, not a registry model: give it "
                "`source: registry:NAME:VERSION_OR_ALIAS` in the server config to swap versions",
                "invalid_request_error",
                "version",
            )
        if deployment.swapping:
            raise HTTPError(
                409,
                f"deployment {deployment.name!r} is already changing version: wait for that swap to finish",
                "conflict_error",
            )
        try:
            target = await asyncio.to_thread(sources.resolve, original, update.version)
        except RegistryError as error:
            raise HTTPError(404, str(error), "not_found_error", "version") from None
        except InferlineError as error:
            raise HTTPError(409, _kept(deployment, str(error)), "conflict_error", "version") from None
        try:
            await deployment.swap(target, pool.build(target), config.drain_timeout_s)
        except Exception as error:
            message = f"version {target.version} failed to load: {error}"
            raise HTTPError(409, _kept(deployment, message), "conflict_error", "version") from None
        return _snapshot(deployment)

    return api


def _kept(deployment: Deployment, message: str) -> str:
    if not deployment.ready:
        return message
    return f"{message}; version {deployment.config.version} keeps serving"


def _snapshot(deployment: Deployment) -> dict[str, Any]:
    if deployment.ready:
        state = "swapping" if deployment.swapping else "ready"
    else:
        state = "failed" if deployment.error else "loading"
    draining = deployment.draining
    return {
        "name": deployment.name,
        "version": deployment.config.version,
        "source": deployment.config.source if isinstance(deployment.config, LocalDeploymentBase) else None,
        "state": state,
        "error": deployment.error,
        "in_flight": deployment.in_flight,
        "draining": None
        if draining is None
        else {"version": draining.config.version, "in_flight": draining.in_flight},
    }
