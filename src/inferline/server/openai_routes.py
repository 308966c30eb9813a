"""The OpenAI API's routes: thin; OpenAIServing does the work."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.background import BackgroundTask

from inferline.router.attempt import Routed
from inferline.router.deployments import DeploymentPool
from inferline.router.request import Caller
from inferline.router.route_state import RouteState
from inferline.router.router import Router
from inferline.server.auth import Tenant
from inferline.server.openai_protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from inferline.server.openai_serving import DONE, OpenAIServing
from inferline.server.streaming import EventStream, disconnect_watch
from inferline.types import Priority


def model_response(
    request: Request,
    routed: Routed[Any],
    result: dict[str, Any] | AsyncGenerator[bytes, None],
    last_event: bytes | None = DONE,
) -> Response:
    elapsed_s = time.perf_counter() - request.scope["state"]["started"]
    # What inferline itself added: everything so far except waiting on deployments.
    overhead_ms = max(0.0, (elapsed_s - routed.backend_s) * 1000)
    headers = {**routed.headers, "x-inferline-overhead-ms": f"{overhead_ms:.3f}"}
    if isinstance(result, dict):
        return JSONResponse(result, headers=headers)

    async def settle() -> None:
        # Runs after the stream, a client that left included: closing the stream runs its own ending
        # (which bills what it sent); a stream the client never let start ends here as aborted.
        await result.aclose()
        await routed.complete(0, 0, "aborted")

    return EventStream(result, headers, last_event, background=BackgroundTask(settle))


def caller(request: Request, tenant: Tenant, priority: str | None, user: str | None) -> Caller:
    requested = None if priority is None else Priority.parse(priority)
    # A request may ask for a lower class than its tenant's, never a higher one.
    effective = tenant.priority if requested is None else min(requested, tenant.priority)
    return Caller(
        str(request.scope["state"]["request_id"]), tenant.principal, effective, user, request.scope["path"]
    )


def model_card(name: str, root: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "inferline", "root": root}


def runtime_card(route: RouteState, pool: DeploymentPool) -> dict[str, Any]:
    """The `inferline` field of one model's card: each deployment behind the route and how it runs."""
    deployments = []
    for name in route.config.members():
        deployment = pool.find(name)
        metadata = deployment.backend.metadata
        deployments.append(
            {"name": name, "kind": metadata.kind, "version": metadata.version, "ready": deployment.ready}
            | metadata.runtime
            | ({"error": deployment.error} if deployment.error else {})
        )
    return {"policy": route.config.policy, "deployments": deployments}


def openai_router(
    serving: OpenAIServing, router: Router, tenant: Callable[..., Awaitable[Tenant]]
) -> APIRouter:
    api = APIRouter(prefix="/v1")

    def root_of(name: str) -> str:
        route = router.resolve(name).config
        return route.deployments[0] if route.policy == "fixed" else route.name

    @api.get("/models")
    async def list_models(_: Tenant = Depends(tenant)) -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name, root_of(name)) for name in router.routes]}

    @api.get("/models/{model_id:path}")
    async def get_model(model_id: str, _: Tenant = Depends(tenant)) -> dict[str, Any]:
        card = model_card(model_id, root_of(model_id))
        return card | {"inferline": runtime_card(router.resolve(model_id), router.pool)}

    @api.post("/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request, who: Tenant = Depends(tenant)) -> Response:
        routed, result = await serving.chat(
            body, caller(request, who, body.priority, body.user), disconnect_watch(request.receive)
        )
        return model_response(request, routed, result)

    @api.post("/completions")
    async def completions(
        body: CompletionRequest, request: Request, who: Tenant = Depends(tenant)
    ) -> Response:
        routed, result = await serving.completion(
            body, caller(request, who, body.priority, body.user), disconnect_watch(request.receive)
        )
        return model_response(request, routed, result)

    @api.post("/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request, who: Tenant = Depends(tenant)) -> Response:
        routed, result = await serving.embeddings(body, caller(request, who, None, body.user))
        return model_response(request, routed, result)

    return api
