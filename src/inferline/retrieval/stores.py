"""Vector stores of OpenAI's API: per-tenant stores of files cut into chunks, embedded, and searched.

A store belongs to the tenant that made it; every call names the tenant, and another tenant's store is
indistinguishable from a missing one. A store records the embedding model (deployment name and version)
its chunks were embedded with and refuses to be searched or filled once the configured model differs:
vectors of two models are not comparable, and mixing them returns confident nonsense. The stores and
their files are rows in inferline's database; the chunks live in the configured `VectorBackend`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    Column,
    Double,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    insert,
    select,
    update,
)

from inferline.config import VectorStoresConfig
from inferline.db import create_schema
from inferline.errors import InvalidRequestError, NotFoundError
from inferline.retrieval.backend import Chunk, Hit, VectorBackend
from inferline.retrieval.chunking import ChunkingStrategy, chunk_text
from inferline.retrieval.embedded import EmbeddedBackend
from inferline.retrieval.filters import check_filter, matches

metadata = MetaData()

vector_stores = Table(
    "vector_stores",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False, index=True),
    Column("name", String(256), nullable=False),
    Column("embedding_model", String(128), nullable=False),
    Column("embedding_version", String(128), nullable=False),
    Column("dim", Integer, nullable=True),
    Column("metadata", JSON, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_after_days", Integer, nullable=True),
    Column("last_active_at", Double, nullable=True),
)

vector_store_files = Table(
    "vector_store_files",
    metadata,
    Column("store_id", String(64), primary_key=True),
    Column("file_id", String(64), primary_key=True),
    Column("filename", String(512), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("num_chunks", Integer, nullable=False),
    Column("attributes", JSON, nullable=False),
    Column("chunking", JSON, nullable=False),
    Column("created_at", Double, nullable=False),
)

MAX_RESULTS = 50
ACTIVITY_RESOLUTION_S = 60.0
"""last_active_at is rewritten at most this often per store: a search is a read, not a database write."""


@dataclass(frozen=True)
class EmbeddingModel:
    name: str
    """The embedding deployment's name."""
    version: str


@dataclass(frozen=True)
class Embedder:
    """The configured embedding model and a way to call it (metered to the caller's tenant)."""

    model: EmbeddingModel
    embed: Callable[[list[str]], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class StoreRecord:
    id: str
    tenant: str
    name: str
    embedding: EmbeddingModel
    dim: int | None
    """None until the first file is added."""
    metadata: dict[str, str]
    created_at: float
    files: list[dict[str, Any]] = field(default_factory=list)
    expires_after_days: int | None = None
    """OpenAI's expires_after {anchor: last_active_at, days}; None: kept until deleted."""
    last_active_at: float | None = None
    """When a file was last added or the store last searched; None: never since it was created."""

    @property
    def active_at(self) -> float:
        return self.created_at if self.last_active_at is None else self.last_active_at

    @property
    def expires_at(self) -> float | None:
        return None if self.expires_after_days is None else self.active_at + self.expires_after_days * 86400

    def check_unexpired(self) -> None:
        expires_at = self.expires_at
        if expires_at is not None and time.time() >= expires_at:
            raise InvalidRequestError(
                f"vector store {self.id!r} expired at {int(expires_at)} ({self.expires_after_days} days "
                "after its last activity, as its expires_after says): create a new store and add its files "
                "again",
                "vector_store_id",
            )

    def to_openai(self) -> dict[str, Any]:
        completed = len(self.files)
        expires_at = self.expires_at
        expired = expires_at is not None and time.time() >= expires_at
        return {
            "id": self.id,
            "object": "vector_store",
            "created_at": int(self.created_at),
            "name": self.name,
            "usage_bytes": sum(f["bytes"] for f in self.files),
            "file_counts": {
                "in_progress": 0,
                "completed": completed,
                "failed": 0,
                "cancelled": 0,
                "total": completed,
            },
            "status": "expired" if expired else "completed",
            "expires_after": None
            if self.expires_after_days is None
            else {"anchor": "last_active_at", "days": self.expires_after_days},
            "expires_at": None if expires_at is None else int(expires_at),
            "last_active_at": int(self.active_at),
            "metadata": self.metadata,
            "inferline": {
                "embedding_model": self.embedding.name,
                "embedding_version": self.embedding.version,
            },
        }


@dataclass(frozen=True)
class SearchResult:
    hit: Hit
    filename: str
    attributes: dict[str, Any]


def file_to_openai(store_id: str, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["file_id"],
        "object": "vector_store.file",
        "usage_bytes": row["bytes"],
        "created_at": int(row["created_at"]),
        "vector_store_id": store_id,
        "status": "completed",
        "last_error": None,
        "chunking_strategy": row["chunking"],
        "attributes": row["attributes"],
    }


class VectorStores:
    """create / get / list / delete stores; add_file / remove_file; search. Blocking work runs off the
    event loop."""

    def __init__(
        self, engine: Engine, backend: VectorBackend, chunking: ChunkingStrategy, max_file_bytes: int
    ):
        self.engine = engine
        self.backend = backend
        self.chunking = chunking
        self.max_file_bytes = max_file_bytes
        self._schema_ready = False
        self._opened: set[str] = set()

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            create_schema(self.engine, metadata)
            self._schema_ready = True

    # ---- stores -----------------------------------------------------------------------------------

    async def create(
        self,
        tenant: str,
        name: str,
        meta: dict[str, str],
        model: EmbeddingModel,
        expires_after_days: int | None = None,
    ) -> StoreRecord:
        record = StoreRecord(
            f"vs_{secrets.token_hex(12)}",
            tenant,
            name,
            model,
            None,
            meta,
            time.time(),
            [],
            expires_after_days,
        )
        row = {
            "id": record.id,
            "tenant": tenant,
            "name": name,
            "embedding_model": model.name,
            "embedding_version": model.version,
            "dim": None,
            "metadata": meta,
            "created_at": record.created_at,
            "expires_after_days": expires_after_days,
        }

        def write() -> None:
            self._ensure_schema()
            with self.engine.begin() as connection:
                connection.execute(insert(vector_stores), row)

        await asyncio.to_thread(write)
        return record

    def _get(self, tenant: str, store_id: str) -> StoreRecord:
        """The store by id, or by name when the tenant has one of that name (the rag route names stores)."""
        self._ensure_schema()
        query = select(vector_stores).where(
            vector_stores.c.tenant == tenant,
            (vector_stores.c.id == store_id) | (vector_stores.c.name == store_id),
        )
        with self.engine.connect() as connection:
            row = connection.execute(query.order_by(vector_stores.c.created_at.desc())).first()
            if row is None:
                raise NotFoundError(f"no vector store {store_id!r}: list yours with GET /v1/vector_stores")
            files = connection.execute(
                select(vector_store_files).where(vector_store_files.c.store_id == row.id)
            ).all()
        m = row._mapping
        embedding = EmbeddingModel(m["embedding_model"], m["embedding_version"])
        return StoreRecord(
            m["id"],
            tenant,
            m["name"],
            embedding,
            m["dim"],
            m["metadata"],
            m["created_at"],
            [dict(f._mapping) for f in files],
            m["expires_after_days"],
            m["last_active_at"],
        )

    async def get(self, tenant: str, store_id: str) -> StoreRecord:
        return await asyncio.to_thread(self._get, tenant, store_id)

    async def of_tenant(self, tenant: str, limit: int) -> list[StoreRecord]:
        def read() -> list[str]:
            self._ensure_schema()
            query = select(vector_stores.c.id).where(vector_stores.c.tenant == tenant)
            with self.engine.connect() as connection:
                return list(
                    connection.execute(
                        query.order_by(vector_stores.c.created_at.desc()).limit(limit)
                    ).scalars()
                )

        ids = await asyncio.to_thread(read)
        return [await self.get(tenant, i) for i in ids]

    async def delete(self, tenant: str, store_id: str) -> None:
        def remove() -> None:
            record = self._get(tenant, store_id)
            self.backend.drop(record.id)
            with self.engine.begin() as connection:
                connection.execute(
                    delete(vector_store_files).where(vector_store_files.c.store_id == record.id)
                )
                connection.execute(delete(vector_stores).where(vector_stores.c.id == record.id))

        await asyncio.to_thread(remove)

    def _touch(self, record: StoreRecord) -> None:
        """Note the store's activity (which postpones its expiry), to the minute."""
        now = time.time()
        if now - record.active_at >= ACTIVITY_RESOLUTION_S:
            with self.engine.begin() as connection:
                connection.execute(
                    update(vector_stores).where(vector_stores.c.id == record.id).values(last_active_at=now)
                )

    def _open(self, record: StoreRecord, dim: int) -> None:
        if record.id not in self._opened:
            self.backend.create(record.id, dim)
            self._opened.add(record.id)

    # ---- files ------------------------------------------------------------------------------------

    async def add_file(
        self,
        tenant: str,
        store_id: str,
        file_id: str,
        filename: str,
        path: Path,
        attributes: dict[str, Any],
        chunking: ChunkingStrategy | None,
        embedder: Embedder,
    ) -> dict[str, Any]:
        """Chunk, embed and store one file; its vector_store.file object."""
        record = await self.get(tenant, store_id)
        record.check_unexpired()
        _check_model(record, embedder.model)
        strategy = chunking or self.chunking
        size = path.stat().st_size
        if size > self.max_file_bytes:
            raise InvalidRequestError(
                f"file {file_id!r} has {size} bytes, over the limit of {self.max_file_bytes} "
                "(vector_stores.max_file_bytes): split it into smaller files",
                "file_id",
            )
        try:
            text = (await asyncio.to_thread(path.read_bytes)).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError(
                f"file {file_id!r} is not UTF-8 text: upload plain text", "file_id"
            ) from None
        texts = chunk_text(text, strategy)
        if not texts:
            raise InvalidRequestError(f"file {file_id!r} has no text to search", "file_id")
        vectors = await embedder.embed(texts)
        if record.dim is not None and vectors.shape[1] != record.dim:
            raise InvalidRequestError(
                f"the embedding model gives {vectors.shape[1]} dimensions, the store holds {record.dim}",
                "vector_store_id",
            )
        row = {
            "store_id": record.id,
            "file_id": file_id,
            "filename": filename,
            "bytes": size,
            "num_chunks": len(texts),
            "attributes": attributes,
            "chunking": strategy.to_openai(),
            "created_at": time.time(),
        }

        def store() -> None:
            self._open(record, vectors.shape[1])
            self.backend.delete_file(record.id, file_id)  # adding a file again replaces its chunks
            self.backend.add(record.id, [Chunk(file_id, i, t) for i, t in enumerate(texts)], vectors)
            with self.engine.begin() as connection:
                connection.execute(
                    delete(vector_store_files).where(
                        vector_store_files.c.store_id == record.id, vector_store_files.c.file_id == file_id
                    )
                )
                connection.execute(insert(vector_store_files), row)
                connection.execute(
                    update(vector_stores)
                    .where(vector_stores.c.id == record.id)
                    .values(dim=int(vectors.shape[1]), last_active_at=time.time())
                )

        await asyncio.to_thread(store)
        return file_to_openai(record.id, row)

    async def remove_file(self, tenant: str, store_id: str, file_id: str) -> None:
        record = await self.get(tenant, store_id)
        if not any(f["file_id"] == file_id for f in record.files):
            raise NotFoundError(f"vector store {record.id!r} has no file {file_id!r}")

        def remove() -> None:
            if record.dim is not None:
                self._open(record, record.dim)
            self.backend.delete_file(record.id, file_id)
            with self.engine.begin() as connection:
                connection.execute(
                    delete(vector_store_files).where(
                        vector_store_files.c.store_id == record.id, vector_store_files.c.file_id == file_id
                    )
                )

        await asyncio.to_thread(remove)

    # ---- search -----------------------------------------------------------------------------------

    async def search(
        self,
        tenant: str,
        store_id: str,
        query: str,
        max_num_results: int,
        filters: dict[str, Any] | None,
        score_threshold: float,
        embedder: Embedder,
        exact: bool = False,
    ) -> list[SearchResult]:
        if not query.strip():
            raise InvalidRequestError("query is empty: give the text to search for", "query")
        if not 1 <= max_num_results <= MAX_RESULTS:
            raise InvalidRequestError(
                f"max_num_results {max_num_results} is out of range: give 1 to {MAX_RESULTS}",
                "max_num_results",
            )
        if filters is not None:
            check_filter(filters)
        record = await self.get(tenant, store_id)
        record.check_unexpired()
        _check_model(record, embedder.model)
        await asyncio.to_thread(self._touch, record)
        if record.dim is None:
            return []
        files = {f["file_id"]: f for f in record.files}
        allowed = (
            None if filters is None else [i for i, f in files.items() if matches(filters, f["attributes"])]
        )
        if allowed == []:
            return []
        vector = (await embedder.embed([query]))[0]

        dim = record.dim

        def find() -> list[Hit]:
            self._open(record, dim)
            return self.backend.search(record.id, vector, max_num_results, allowed, exact)

        hits = await asyncio.to_thread(find)
        return [
            SearchResult(h, files[h.chunk.file_id]["filename"], files[h.chunk.file_id]["attributes"])
            for h in hits
            if h.score >= score_threshold and h.chunk.file_id in files
        ]


def _check_model(record: StoreRecord, model: EmbeddingModel) -> None:
    if record.embedding != model:
        raise InvalidRequestError(
            f"vector store {record.id!r} was embedded with {record.embedding.name} version "
            f"{record.embedding.version}, but queries are now embedded with {model.name} version "
            f"{model.version}: vectors of different models are not comparable; create a new store and add "
            "its files again",
            "vector_store_id",
        )


def search_page(query: str, results: list[SearchResult]) -> dict[str, Any]:
    """OpenAI's vector_store.search_results.page."""
    return {
        "object": "vector_store.search_results.page",
        "search_query": [query],
        "data": [
            {
                "file_id": r.hit.chunk.file_id,
                "filename": r.filename,
                "score": r.hit.score,
                "attributes": r.attributes,
                "content": [{"type": "text", "text": r.hit.chunk.text}],
            }
            for r in results
        ],
        "has_more": False,
        "next_page": None,
    }


def open_stores(config: VectorStoresConfig, engine: Engine, data_dir: Path) -> VectorStores:
    """The stores `config` describes: metadata in `engine`'s database, chunks in the configured backend."""
    backend: VectorBackend
    if config.backend == "pgvector":
        from inferline.retrieval.pgvector import PgvectorBackend

        if config.pgvector_url is None:
            raise InvalidRequestError(
                "vector_stores.backend is 'pgvector' but vector_stores.pgvector_url is not set: give the "
                "postgresql+psycopg:// URL of a server with the vector extension",
                "vector_stores.pgvector_url",
            )
        backend = PgvectorBackend(config.pgvector_url, config.hnsw_ef_search)
    else:
        backend = EmbeddedBackend(
            engine, data_dir / "vector_indexes", config.index, config.hnsw_min_chunks, config.hnsw_ef_search
        )
    chunking = ChunkingStrategy(config.max_chunk_size_tokens, config.chunk_overlap_tokens)
    return VectorStores(engine, backend, chunking, config.max_file_bytes)
