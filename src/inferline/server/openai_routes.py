"""The OpenAI API's routes: thin; OpenAIServing does the work."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from inferline.server.auth import Tenant
from inferline.server.catalog import Catalog, Deployment
from inferline.server.openai_protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from inferline.server.openai_serving import OpenAIServing


def model_response(deployment: Deployment, result: dict[str, Any] | AsyncIterator[bytes]) -> Response:
    headers = deployment.headers
    if isinstance(result, dict):
        return JSONResponse(result, headers=headers)
    return StreamingResponse(
        result, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"}
    )


def request_id(request: Request) -> str:
    return str(request.scope["state"]["request_id"])


def disconnect_watch(request: Request) -> Callable[[], Awaitable[None]]:
    """Resolves when the client goes away (the body is already read, so the next message says so)."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return watch


def model_card(deployment: Deployment, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "inferline",
        "root": deployment.config.name,
    }


def openai_router(
    serving: OpenAIServing, catalog: Catalog, tenant: Callable[..., Awaitable[Tenant]]
) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models")
    async def list_models(_: Tenant = Depends(tenant)) -> dict[str, Any]:
        return {"object": "list", "data": [model_card(d, name) for name, d in catalog.by_name.items()]}

    @router.get("/models/{model_id:path}")
    async def get_model(model_id: str, _: Tenant = Depends(tenant)) -> dict[str, Any]:
        return model_card(catalog.find(model_id), model_id)

    @router.post("/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request, who: Tenant = Depends(tenant)) -> Response:
        deployment, result = await serving.chat(body, who, request_id(request), disconnect_watch(request))
        return model_response(deployment, result)

    @router.post("/completions")
    async def completions(
        body: CompletionRequest, request: Request, who: Tenant = Depends(tenant)
    ) -> Response:
        deployment, result = await serving.completion(
            body, who, request_id(request), disconnect_watch(request)
        )
        return model_response(deployment, result)

    @router.post("/embeddings")
    async def embeddings(body: EmbeddingRequest, _: Tenant = Depends(tenant)) -> Response:
        deployment, result = await serving.embeddings(body)
        return model_response(deployment, result)

    return router
