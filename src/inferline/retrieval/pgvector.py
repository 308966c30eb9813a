"""The pgvector backend: each store's chunks in a PostgreSQL table of its own with an HNSW index
(inner product over unit vectors: cosine), shared by every replica that uses the same server. The index
is built with the store's first rows (in one pass), and grows with each later file.

Filtered searches (a subset of files) and exact re-scans turn the index off for their transaction and
scan the table: pgvector before 0.8 filters after the graph walk and can return fewer than k rows,
and an exact scan is the reference an approximate index's recall is measured against. ef_search is set
with SET LOCAL in the searching transaction itself, so a pooled connection never carries another
search's value (index_settings reads it back from there). A store's index keeps the m and
ef_construction it was built with: drop `inferline_chunks_<store id>_hnsw` and the next file added
after a restart rebuilds it with today's.
"""

from __future__ import annotations

import re
from collections.abc import Collection

import numpy as np
from sqlalchemy import Connection, text

from inferline.db import open_engine
from inferline.retrieval.backend import Chunk, Hit, normalised

HNSW_NEIGHBOURS = 32
"""m: links per node, as the embedded FAISS index has. pgvector's default 16 is too sparse for clustered
embeddings: 100,000 of the benchmark's clustered vectors gave recall@10 0.88 at ef_search 128 (FAISS at
m=16: 0.69); on 20,000 at ef_search 40, m=16 with ef_construction 64 found 0.82 and m=32 with 128 found
0.97, for about 3.5 times the build time."""
HNSW_EF_CONSTRUCTION = 128
_STORE_ID = re.compile(r"^vs_[0-9a-f]{1,60}$")
_LOCK_KEY = int.from_bytes(b"infvecdb")
"""Advisory lock held while creating the extension and tables (replicas may start together)."""


def _table(store_id: str) -> str:
    if not _STORE_ID.match(store_id):  # ids are made by VectorStores; a table name is never user text
        raise ValueError(f"{store_id!r} is not a vector store id")
    return f"inferline_chunks_{store_id}"


def _literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector.tolist()) + "]"


class PgvectorBackend:
    def __init__(self, url: str, ef_search: int) -> None:
        self.engine = open_engine(url, "vector_stores.pgvector_url")
        self.ef_search = ef_search
        self._dims: dict[str, int] = {}
        self._indexed: set[str] = set()
        """Stores whose HNSW index this process knows to exist."""

    def create(self, store_id: str, dim: int) -> None:
        table = _table(store_id)
        with self.engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
            connection.execute(
                text(
                    f'CREATE TABLE IF NOT EXISTS "{table}" (id bigserial PRIMARY KEY, '
                    "file_id text NOT NULL, chunk_index integer NOT NULL, text text NOT NULL, "
                    f"embedding vector({int(dim)}) NOT NULL)"
                )
            )
            connection.execute(text(f'CREATE INDEX IF NOT EXISTS "{table}_file" ON "{table}" (file_id)'))
        self._dims[store_id] = dim

    def add(self, store_id: str, chunks: list[Chunk], vectors: np.ndarray) -> None:
        vectors = normalised(vectors, self._dims[store_id])
        rows = [
            {"file_id": c.file_id, "chunk_index": c.index, "text": c.text, "embedding": _literal(v)}
            for c, v in zip(chunks, vectors, strict=True)
        ]
        insert = text(
            f'INSERT INTO "{_table(store_id)}" (file_id, chunk_index, text, embedding) '
            "VALUES (:file_id, :chunk_index, :text, CAST(:embedding AS vector))"
        )
        with self.engine.begin() as connection:
            indexed = store_id in self._indexed
            if not indexed:  # before the insert: a replica building the index waits for no one
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            connection.execute(insert, rows)
            if not indexed:
                self._build_index(connection, _table(store_id))
        self._indexed.add(store_id)

    def _build_index(self, connection: Connection, table: str) -> None:
        """The HNSW index, built once the first rows are in: pgvector builds a graph over existing rows in
        memory, several times faster than growing it row by row (20,000 rows: about 80 s against 480 s on
        the shared 2-core machine). Later rows join it one by one."""
        connection.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        connection.execute(
            text(
                f'CREATE INDEX IF NOT EXISTS "{table}_hnsw" ON "{table}" '
                f"USING hnsw (embedding vector_ip_ops) WITH (m = {HNSW_NEIGHBOURS}, "
                f"ef_construction = {HNSW_EF_CONSTRUCTION})"
            )
        )

    def search(
        self,
        store_id: str,
        query: np.ndarray,
        k: int,
        file_ids: Collection[str] | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        vector = _literal(normalised(query, self._dims[store_id])[0])
        where = "" if file_ids is None else "WHERE file_id = ANY(:file_ids)"
        select = text(
            f"SELECT file_id, chunk_index, text, -(embedding <#> CAST(:query AS vector)) AS score "
            f'FROM "{_table(store_id)}" {where} ORDER BY embedding <#> CAST(:query AS vector) LIMIT :k'
        )
        with self.engine.begin() as connection:
            self._plan(connection, exact or file_ids is not None)
            rows = connection.execute(
                select, {"query": vector, "k": k, "file_ids": list(file_ids or [])}
            ).all()
        return [Hit(Chunk(r.file_id, r.chunk_index, r.text), float(r.score)) for r in rows]

    def _plan(self, connection: Connection, scan: bool) -> None:
        if scan:
            connection.execute(text("SET LOCAL enable_indexscan = off"))
        else:
            connection.execute(text(f"SET LOCAL hnsw.ef_search = {int(self.ef_search)}"))

    def index_settings(self, store_id: str) -> dict[str, int]:
        """The HNSW parameters a search of this store runs with: m and ef_construction as the index was
        built, ef_search as the searching transaction sees it (what a benchmark reports beside recall)."""
        with self.engine.begin() as connection:
            self._plan(connection, scan=False)
            ef_search = int(connection.execute(text("SHOW hnsw.ef_search")).scalar_one())
            options = connection.execute(
                text("SELECT reloptions FROM pg_class WHERE relname = :index"),
                {"index": f"{_table(store_id)}_hnsw"},
            ).scalar_one()
        built = dict(option.split("=") for option in options or [])
        return {
            "m": int(built["m"]),
            "ef_construction": int(built["ef_construction"]),
            "ef_search": ef_search,
        }

    def delete_file(self, store_id: str, file_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(f'DELETE FROM "{_table(store_id)}" WHERE file_id = :f'), {"f": file_id})

    def drop(self, store_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(f'DROP TABLE IF EXISTS "{_table(store_id)}"'))
        self._dims.pop(store_id, None)
        self._indexed.discard(store_id)

    def close(self) -> None:
        self.engine.dispose()
