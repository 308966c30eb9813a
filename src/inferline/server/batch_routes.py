"""The OpenAI Batches API: create, list, get, cancel; a tenant sees its own batches only."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict

from inferline.batch.service import BatchService
from inferline.server.auth import Tenant


class CreateBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


def batch_router(service: BatchService, tenant: Callable[..., Awaitable[Tenant]]) -> APIRouter:
    api = APIRouter(prefix="/v1/batches")

    @api.post("")
    async def create(body: CreateBatchRequest, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        # on the event loop: the batch's task starts here
        record = service.create(
            who.principal, body.input_file_id, body.endpoint, body.completion_window, body.metadata
        )
        return record.to_openai()

    @api.get("")
    async def list_batches(
        after: str | None = None, limit: int = Query(20, ge=1, le=100), who: Tenant = Depends(tenant)
    ) -> dict[str, Any]:
        records = await asyncio.to_thread(service.page, who.principal.tenant, after, limit)
        data = [r.to_openai() for r in records]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(data) == limit,
        }

    @api.get("/{batch_id}")
    def get_batch(batch_id: str, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        return service.get(who.principal.tenant, batch_id).to_openai()

    @api.post("/{batch_id}/cancel")
    async def cancel(batch_id: str, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        return service.cancel(who.principal.tenant, batch_id).to_openai()

    return api
