"""The pgvector backend on a real PostgreSQL with the extension: HNSW search against the exact re-scan,
filtered search, the HNSW settings a search runs with, files replaced and removed, and stores dropped."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from inferline.errors import InvalidRequestError
from inferline.retrieval.backend import Chunk
from inferline.retrieval.pgvector import PgvectorBackend
from tests.retrieval.test_stores import DIM, clustered


@pytest.fixture(scope="module")
def backend(pgvector_url: str) -> Iterator[PgvectorBackend]:
    opened = PgvectorBackend(pgvector_url, ef_search=128)
    yield opened
    opened.close()


def test_hnsw_finds_what_the_exact_rescan_finds(backend: PgvectorBackend) -> None:
    backend.create("vs_0a", DIM)
    chunks, vectors = [Chunk(f"file-{i % 3}", i, f"chunk {i}") for i in range(600)], clustered(600)
    backend.add("vs_0a", chunks[:570], vectors[:570])  # the index is built over these at once
    backend.add("vs_0a", chunks[570:], vectors[570:])  # these join it one by one
    recall = []
    for query in clustered(30, seed=1):
        found = backend.search("vs_0a", query, 10)
        exact = backend.search("vs_0a", query, 10, exact=True)
        assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
        recall.append(len({h.chunk.index for h in found} & {h.chunk.index for h in exact}) / 10)
    assert np.mean(recall) >= 0.95
    assert backend.index_settings("vs_0a") == {"m": 32, "ef_construction": 128, "ef_search": 128}
    only = backend.search("vs_0a", clustered(1, seed=2)[0], 5, file_ids=["file-2"])
    assert len(only) == 5
    assert {h.chunk.file_id for h in only} == {"file-2"}
    backend.delete_file("vs_0a", "file-2")
    assert backend.search("vs_0a", clustered(1, seed=2)[0], 5, file_ids=["file-2"]) == []
    backend.drop("vs_0a")


def test_vectors_of_another_dimension_are_refused(backend: PgvectorBackend) -> None:
    backend.create("vs_0b", DIM)
    with pytest.raises(InvalidRequestError, match="8 dimensions but this store holds 32"):
        backend.add("vs_0b", [Chunk("f", 0, "x")], np.ones((1, 8), np.float32))
    backend.drop("vs_0b")
