"""The Responses API's routes: thin; ResponsesServing does the work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from inferline.server.auth import Tenant
from inferline.server.errors import HTTPError
from inferline.server.openai_routes import caller, model_response
from inferline.server.responses_protocol import ResponsesRequest
from inferline.server.responses_serving import ResponsesServing
from inferline.server.streaming import disconnect_watch


def responses_router(serving: ResponsesServing, tenant: Callable[..., Awaitable[Tenant]]) -> APIRouter:
    api = APIRouter(prefix="/v1")

    @api.post("/responses")
    async def create(body: ResponsesRequest, request: Request, who: Tenant = Depends(tenant)) -> Response:
        routed, result = await serving.create(
            body, caller(request, who, None, body.user), disconnect_watch(request.receive)
        )
        # A Responses stream has no fixed last event ([DONE] is chat's): it ends after its terminal one.
        return model_response(request, routed, result, last_event=None)

    @api.get("/responses/{response_id}")
    async def retrieve(
        response_id: str, stream: bool = False, who: Tenant = Depends(tenant)
    ) -> dict[str, Any]:
        if stream:
            raise HTTPError(
                400,
                "stream=true is not supported: a stored response is complete; retrieve it without stream",
                "invalid_request_error",
                "stream",
            )
        return (await serving.stored(who.name, response_id)).response

    @api.delete("/responses/{response_id}")
    async def delete(response_id: str, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        return await serving.delete(who.name, response_id)

    @api.get("/responses/{response_id}/input_items")
    async def input_items(
        response_id: str,
        after: str | None = None,
        limit: int = Query(20, ge=1, le=100),
        order: Literal["asc", "desc"] = "desc",
        who: Tenant = Depends(tenant),
    ) -> dict[str, Any]:
        items = (await serving.stored(who.name, response_id)).input_items
        if order == "desc":
            items = items[::-1]
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise HTTPError(
                    400,
                    f"after={after!r} is not an input item of {response_id}",
                    "invalid_request_error",
                    "after",
                )
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }

    return api
