"""POST /v1/feedback (a tenant rates its own requests) and GET /v1/drift (admin key)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from inferline.quality.capture import FeedbackBody
from inferline.quality.drift import Embed, report_dict
from inferline.quality.loop import QualityLoop
from inferline.router.deployments import Deployment
from inferline.router.router import Router
from inferline.server.auth import Tenant


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128, description="The x-request-id of the rated answer.")
    score: float | None = Field(None, description="In [-1, 1]: 1 best, -1 worst (thumbs up 1, down -1).")
    label: str | None = Field(None, description='A category, e.g. "thumbs_down", "wrong", "harmful".')
    comment: str | None = Field(None, description="Free text; redacted like captured prompts.")


def quality_router(
    loop: QualityLoop,
    router: Router,
    tenant: Callable[..., Awaitable[Tenant]],
    admin: Callable[..., Awaitable[None]],
) -> APIRouter:
    api = APIRouter(prefix="/v1")

    @api.post("/feedback")
    async def feedback(body: FeedbackRequest, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        parsed = FeedbackBody(body.request_id, body.score, body.label, body.comment)
        row = await asyncio.to_thread(loop.capture.feedback, who.principal.tenant, parsed)
        loop.record_feedback(row)
        return {"object": "feedback", "request_id": row.request_id, "model_version": row.model_version}

    @api.get("/drift", dependencies=[Depends(admin)])
    async def drift() -> dict[str, Any]:
        monitor = loop.drift
        if monitor is None:
            return {"enabled": False, "routes": []}
        name = loop.config.drift.embedding_deployment
        if name is not None:
            deployment = router.pool.find(name)
            if deployment.ready:
                await monitor.embed_prompts(_embedder(deployment))
        return {"enabled": True, "routes": [report_dict(report) for report in monitor.reports()]}

    return api


def _embedder(deployment: Deployment) -> Embed:
    async def embed(texts: list[str]) -> np.ndarray:
        return (await deployment.backend.embed(texts)).vectors

    return embed
