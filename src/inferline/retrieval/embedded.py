"""The embedded backend: chunks and their vectors in inferline's database (SQLite by default), searched
in-process by a `StoreIndex` (index.py) built from them on a store's first search after start and kept
up to date as files are added. Nothing to run beside the server; a store is as durable as the database."""

from __future__ import annotations

import threading
from collections.abc import Collection
from pathlib import Path

import numpy as np
from sqlalchemy import (
    Column,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    select,
)

from inferline.db import create_schema
from inferline.retrieval.backend import Chunk, Hit, normalised
from inferline.retrieval.index import StoreIndex

metadata = MetaData()

vector_chunks = Table(
    "vector_chunks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("store_id", String(64), nullable=False),
    Column("file_id", String(64), nullable=False),
    Column("chunk_index", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Index("ix_vector_chunks_store_file", "store_id", "file_id"),
)


class EmbeddedBackend:
    """See the module's note. `index` is 'flat', 'hnsw' or 'auto' (HNSW from `hnsw_min_chunks` on)."""

    def __init__(
        self, engine: Engine, index_dir: Path, index: str, hnsw_min_chunks: int, ef_search: int
    ) -> None:
        self.engine = engine
        self.index_dir = index_dir
        self.index_kind = index
        self.hnsw_min_chunks = hnsw_min_chunks
        self.ef_search = ef_search
        self._indexes: dict[str, StoreIndex] = {}
        self._dims: dict[str, int] = {}
        self._lock = threading.Lock()
        self._schema_ready = False

    def _ensure_schema(self) -> None:
        with self._lock:
            if not self._schema_ready:
                self.index_dir.mkdir(parents=True, exist_ok=True)
                create_schema(self.engine, metadata)
                self._schema_ready = True

    def _use_hnsw(self, num_chunks: int) -> bool:
        return self.index_kind == "hnsw" or (self.index_kind == "auto" and num_chunks >= self.hnsw_min_chunks)

    def _graph_path(self, store_id: str) -> Path:
        return self.index_dir / f"{store_id}.hnsw"

    def create(self, store_id: str, dim: int) -> None:
        """Make the store known (again, after a restart: idempotent)."""
        self._ensure_schema()
        self._dims[store_id] = dim

    def _index(self, store_id: str, dim: int) -> StoreIndex:
        """The store's index, loaded from the database on first use."""
        with self._lock:
            index = self._indexes.get(store_id)
            if index is not None:
                return index
        self._ensure_schema()
        query = select(vector_chunks.c.id, vector_chunks.c.file_id, vector_chunks.c.vector).where(
            vector_chunks.c.store_id == store_id
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(vector_chunks.c.id)).all()
        index = StoreIndex(dim, self._use_hnsw(len(rows)), self.ef_search)
        if rows:
            vectors = np.frombuffer(b"".join(r.vector for r in rows), dtype=np.float32).reshape(-1, dim)
            row_ids = np.fromiter((r.id for r in rows), np.int64, len(rows))
            index.fill(row_ids, [r.file_id for r in rows], vectors.copy(), self._graph_path(store_id))
        with self._lock:
            return self._indexes.setdefault(store_id, index)

    def add(self, store_id: str, chunks: list[Chunk], vectors: np.ndarray) -> None:
        dim = self._dims[store_id]
        vectors = normalised(vectors, dim)
        index = self._index(store_id, dim)
        rows = [
            {
                "store_id": store_id,
                "file_id": c.file_id,
                "chunk_index": c.index,
                "text": c.text,
                "vector": v.tobytes(),
            }
            for c, v in zip(chunks, vectors, strict=True)
        ]
        insert = vector_chunks.insert().returning(vector_chunks.c.id, sort_by_parameter_order=True)
        with self.engine.begin() as connection:
            row_ids = list(connection.execute(insert, rows).scalars())
        if not index.use_hnsw and self._use_hnsw(len(index) + len(rows)):
            with self._lock:  # grown past the threshold: rebuilt as HNSW on the next search
                self._indexes.pop(store_id, None)
        else:
            index.add(np.array(row_ids, dtype=np.int64), [c.file_id for c in chunks], vectors)
        index.save(self._graph_path(store_id))

    def search(
        self,
        store_id: str,
        query: np.ndarray,
        k: int,
        file_ids: Collection[str] | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        dim = self._dims[store_id]
        index = self._index(store_id, dim)
        found = index.search(normalised(query, dim)[0], k, None if file_ids is None else set(file_ids), exact)
        if not found:
            return []
        query_rows = select(
            vector_chunks.c.id, vector_chunks.c.file_id, vector_chunks.c.chunk_index, vector_chunks.c.text
        ).where(vector_chunks.c.id.in_([i for i, _ in found]))
        with self.engine.connect() as connection:
            chunks = {r.id: Chunk(r.file_id, r.chunk_index, r.text) for r in connection.execute(query_rows)}
        return [Hit(chunks[i], score) for i, score in found if i in chunks]

    def delete_file(self, store_id: str, file_id: str) -> None:
        self._ensure_schema()
        with self.engine.begin() as connection:
            connection.execute(
                delete(vector_chunks).where(
                    vector_chunks.c.store_id == store_id, vector_chunks.c.file_id == file_id
                )
            )
        self._forget(store_id)

    def drop(self, store_id: str) -> None:
        self._ensure_schema()
        with self.engine.begin() as connection:
            connection.execute(delete(vector_chunks).where(vector_chunks.c.store_id == store_id))
        self._forget(store_id)
        self._dims.pop(store_id, None)

    def _forget(self, store_id: str) -> None:
        """Drop the in-memory index and saved graph; the next search rebuilds from the database."""
        with self._lock:
            self._indexes.pop(store_id, None)
        self._graph_path(store_id).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._indexes.clear()
