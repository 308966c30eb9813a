"""OpenAI's Vector Stores API: stores, their files (uploaded through /v1/files, purpose 'assistants'), and
search. Files are chunked and embedded while POST .../files waits, so a file is searchable as soon as
its call returns ('completed'). A tenant sees its own stores only."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from inferline.batch.files import FileStore
from inferline.errors import InvalidRequestError
from inferline.retrieval.chunking import ChunkingStrategy
from inferline.retrieval.stores import MAX_RESULTS, VectorStores, file_to_openai, search_page
from inferline.router.embedder import embedder
from inferline.router.router import Router
from inferline.server.auth import Tenant
from inferline.server.openai_routes import caller

Attribute = str | float | bool


class StaticChunking(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_chunk_size_tokens: int = Field(..., ge=16, le=4096)
    chunk_overlap_tokens: int = Field(..., ge=0, le=2048)


class ChunkingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "static"]
    static: StaticChunking | None = None

    def strategy(self) -> ChunkingStrategy | None:
        """None for 'auto' (the configured defaults)."""
        if self.type == "auto" or self.static is None:
            return None
        size, overlap = self.static.max_chunk_size_tokens, self.static.chunk_overlap_tokens
        if overlap * 2 > size:
            raise InvalidRequestError(
                f"chunk_overlap_tokens {overlap} is over half of max_chunk_size_tokens {size}: lower it",
                "chunking_strategy",
            )
        return ChunkingStrategy(size, overlap)


class ExpiresAfter(BaseModel):
    """OpenAI's expiration policy: the store expires this many days after its last activity (a file added,
    a search); an expired store says so (status 'expired') and refuses both, until it is deleted."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["last_active_at"]
    days: int = Field(..., ge=1, le=365)


class CreateStoreRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field("", max_length=256)
    expires_after: ExpiresAfter | None = None
    metadata: dict[str, str] = Field(default_factory=dict, max_length=16)
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    chunking_strategy: ChunkingRequest | None = None


class AddFileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: str = Field(..., min_length=1)
    attributes: dict[str, Attribute] = Field(default_factory=dict, max_length=16)
    chunking_strategy: ChunkingRequest | None = None


class RankingOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")  # ranker: one ranking here

    score_threshold: float = Field(0.0, ge=-1, le=1)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # rewrite_query: not supported, the query is used as given

    query: str | list[str]
    max_num_results: int = Field(10, ge=1, le=MAX_RESULTS)
    filters: dict[str, Any] | None = None
    ranking_options: RankingOptions = Field(default_factory=RankingOptions)

    def text(self) -> str:
        return self.query if isinstance(self.query, str) else "\n".join(self.query)


def vector_store_router(
    stores: VectorStores,
    files: FileStore,
    router: Router,
    embedding_deployment: str | None,
    tenant: Callable[..., Awaitable[Tenant]],
) -> APIRouter:
    api = APIRouter(prefix="/v1/vector_stores")

    @api.post("")
    async def create(
        body: CreateStoreRequest, request: Request, who: Tenant = Depends(tenant)
    ) -> dict[str, Any]:
        embed = embedder(router, embedding_deployment, caller(request, who, None, None))
        tenant_name = who.principal.tenant
        chunking = None if body.chunking_strategy is None else body.chunking_strategy.strategy()
        files_given = [await asyncio.to_thread(files.get, tenant_name, i) for i in body.file_ids]
        days = None if body.expires_after is None else body.expires_after.days
        record = await stores.create(tenant_name, body.name, body.metadata, embed.model, days)
        for file in files_given:
            await stores.add_file(
                tenant_name, record.id, file.id, file.filename, file.path, {}, chunking, embed
            )
        return (await stores.get(tenant_name, record.id)).to_openai()

    @api.get("")
    async def list_stores(
        limit: int = Query(20, ge=1, le=100), who: Tenant = Depends(tenant)
    ) -> dict[str, Any]:
        data = [r.to_openai() for r in await stores.of_tenant(who.principal.tenant, limit)]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }

    @api.get("/{store_id}")
    async def get_store(store_id: str, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        return (await stores.get(who.principal.tenant, store_id)).to_openai()

    @api.delete("/{store_id}")
    async def delete_store(store_id: str, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        await stores.delete(who.principal.tenant, store_id)
        return {"id": store_id, "object": "vector_store.deleted", "deleted": True}

    @api.post("/{store_id}/files")
    async def add_file(
        store_id: str, body: AddFileRequest, request: Request, who: Tenant = Depends(tenant)
    ) -> dict[str, Any]:
        chunking = None if body.chunking_strategy is None else body.chunking_strategy.strategy()
        record = await asyncio.to_thread(files.get, who.principal.tenant, body.file_id)
        embed = embedder(router, embedding_deployment, caller(request, who, None, None))
        return await stores.add_file(
            who.principal.tenant,
            store_id,
            record.id,
            record.filename,
            record.path,
            body.attributes,
            chunking,
            embed,
        )

    @api.get("/{store_id}/files")
    async def list_files(store_id: str, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        record = await stores.get(who.principal.tenant, store_id)
        data = [file_to_openai(record.id, f) for f in record.files]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }

    @api.delete("/{store_id}/files/{file_id}")
    async def remove_file(store_id: str, file_id: str, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        await stores.remove_file(who.principal.tenant, store_id, file_id)
        return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}

    @api.post("/{store_id}/search")
    async def search(
        store_id: str, body: SearchRequest, request: Request, who: Tenant = Depends(tenant)
    ) -> dict[str, Any]:
        embed = embedder(router, embedding_deployment, caller(request, who, None, None))
        results = await stores.search(
            who.principal.tenant,
            store_id,
            body.text(),
            body.max_num_results,
            body.filters,
            body.ranking_options.score_threshold,
            embed,
        )
        return search_page(body.text(), results)

    return api
