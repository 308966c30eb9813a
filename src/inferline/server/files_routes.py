"""The OpenAI Files API: upload (streamed to disk), list, get, content, delete; a tenant sees its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from inferline.batch.files import FileStore, complete_size
from inferline.server.auth import Tenant
from inferline.server.errors import HTTPError
from inferline.server.uploads import receive_upload

PURPOSES = ("batch", "assistants")
"""batch: a batch's input; assistants: a file for a vector store."""
CHUNK_BYTES = 1 << 20


def files_router(
    store: FileStore, max_file_bytes: int, tenant: Callable[..., Awaitable[Tenant]]
) -> APIRouter:
    api = APIRouter(prefix="/v1/files")

    @api.post("")
    async def upload(request: Request, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        path = await asyncio.to_thread(store.upload_path)
        form = await receive_upload(
            request.headers.get("content-type"), request.stream(), path, max_file_bytes
        )
        purpose = form.fields.get("purpose")
        if form.filename is None or purpose not in PURPOSES:
            path.unlink(missing_ok=True)
            if form.filename is None:
                raise HTTPError(
                    400,
                    "the form has no file part: send the file as field 'file'",
                    "invalid_request_error",
                    "file",
                )
            raise HTTPError(
                400,
                f"purpose {purpose!r} is not supported: this server takes purpose 'batch' or 'assistants'",
                "invalid_request_error",
                "purpose",
            )
        record = await asyncio.to_thread(store.add, who.principal.tenant, purpose, form.filename, path)
        return record.to_openai()

    @api.get("")
    def list_files(
        purpose: str | None = None, limit: int = 10_000, who: Tenant = Depends(tenant)
    ) -> dict[str, Any]:
        records = store.of_tenant(who.principal.tenant, purpose, limit)
        return {"object": "list", "data": [r.to_openai() for r in records], "has_more": False}

    @api.get("/{file_id}")
    def get_file(file_id: str, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        return store.get(who.principal.tenant, file_id).to_openai()

    @api.get("/{file_id}/content")
    def content(file_id: str, who: Tenant = Depends(tenant)) -> StreamingResponse:
        record = store.get(who.principal.tenant, file_id)
        # A batch may be appending to its output: serve the whole lines written so far.
        size = complete_size(record.path) if record.purpose == "batch_output" else record.path.stat().st_size
        headers = {"content-length": str(size)}
        return StreamingResponse(
            _read(record.path, size), media_type="application/octet-stream", headers=headers
        )

    @api.delete("/{file_id}")
    def delete_file(file_id: str, who: Tenant = Depends(tenant)) -> dict[str, Any]:
        store.delete(who.principal.tenant, file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    return api


async def _read(path: Path, size: int) -> AsyncIterator[bytes]:
    """The file's first `size` bytes, a chunk at a time off the event loop."""
    with path.open("rb") as file:
        remaining = size
        while remaining > 0:
            chunk = await asyncio.to_thread(file.read, min(CHUNK_BYTES, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk
