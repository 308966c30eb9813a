"""Chunking, filters, the embedded backend (flat and HNSW against the exact re-scan) and the store's
refusals, on hand-built vectors."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, update

from inferline.config import VectorStoresConfig
from inferline.db import open_engine
from inferline.errors import InvalidRequestError, NotFoundError
from inferline.retrieval.backend import Chunk
from inferline.retrieval.cache import same_specifics
from inferline.retrieval.chunking import ChunkingStrategy, chunk_text
from inferline.retrieval.embedded import EmbeddedBackend
from inferline.retrieval.filters import check_filter, matches
from inferline.retrieval.stores import Embedder, EmbeddingModel, open_stores, vector_stores

DIM = 32


def clustered(num: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 20 fixed centres (the same for every seed, so queries fall among the data)."""
    centres = np.random.default_rng(0).standard_normal((20, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(0, 20, num)] + 0.3 * rng.standard_normal((num, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_engine(f"sqlite:///{tmp_path / 'inferline.db'}", "test")


def test_chunks_are_fixed_windows_that_overlap() -> None:
    words = [f"w{i}" for i in range(25)]
    chunks = chunk_text(" ".join(words), ChunkingStrategy(10, 3))
    assert chunks[0].split() == words[0:10]
    assert chunks[1].split() == words[7:17]
    assert chunks[-1].split()[-1] == "w24"
    assert len(chunks) == 4  # 0-9, 7-16, 14-23, 21-24
    assert chunk_text("  \n ", ChunkingStrategy(10, 3)) == []


def test_semantic_matches_must_name_the_same_numbers_and_agree_on_negation() -> None:
    assert same_specifics("How can I reset my password?", "How do I reset my password?")
    assert same_specifics("Transfer 100 dollars", "Send 100 dollars")
    assert not same_specifics("Transfer 100 dollars", "Transfer 1000 dollars")
    assert not same_specifics("Do you ship abroad?", "Don't you ship abroad?")
    assert not same_specifics("Is it open?", "Is it not open?")


def test_filters_compare_and_combine() -> None:
    attributes = {"topic": "food", "year": 2020}
    assert matches({"type": "eq", "key": "topic", "value": "food"}, attributes)
    assert matches({"type": "ne", "key": "missing", "value": 1}, attributes)
    assert not matches({"type": "gt", "key": "topic", "value": 3}, attributes)  # string vs number
    either = {
        "type": "or",
        "filters": [
            {"type": "lt", "key": "year", "value": 2000},
            {"type": "nin", "key": "topic", "value": ["cars"]},
        ],
    }
    assert matches(either, attributes)
    with pytest.raises(InvalidRequestError, match=r"filters\.filters\[0\]\.type"):
        check_filter({"type": "and", "filters": [{"type": "like", "key": "a", "value": 1}]})
    with pytest.raises(InvalidRequestError, match="must be a list"):
        check_filter({"type": "in", "key": "a", "value": 1})


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_the_index_finds_what_the_exact_rescan_finds(engine: Engine, tmp_path: Path, kind: str) -> None:
    backend = EmbeddedBackend(engine, tmp_path / "indexes", kind, 1_000_000, 128)
    vectors = clustered(3000)
    backend.create("vs_a", DIM)
    backend.add("vs_a", [Chunk(f"file-{i % 3}", i, f"chunk {i}") for i in range(3000)], vectors)
    queries = clustered(50, seed=1)
    recall = []
    for query in queries:
        found = {h.chunk.index for h in backend.search("vs_a", query, 10)}
        exact = {h.chunk.index for h in backend.search("vs_a", query, 10, exact=True)}
        recall.append(len(found & exact) / 10)
    assert np.mean(recall) >= (1.0 if kind == "flat" else 0.95)
    only = backend.search("vs_a", queries[0], 5, file_ids=["file-1"])
    assert len(only) == 5
    assert {h.chunk.file_id for h in only} == {"file-1"}
    assert only == sorted(only, key=lambda h: -h.score)


def test_hnsw_is_chosen_by_size_and_its_graph_survives_a_restart(engine: Engine, tmp_path: Path) -> None:
    backend = EmbeddedBackend(engine, tmp_path / "indexes", "auto", 500, 64)
    backend.create("vs_a", DIM)
    backend.add("vs_a", [Chunk("file-0", i, "") for i in range(400)], clustered(400))
    assert backend._index("vs_a", DIM).hnsw is None  # under hnsw_min_chunks: a flat scan
    backend.add("vs_a", [Chunk("file-1", i, "") for i in range(200)], clustered(200, seed=2))
    assert backend._index("vs_a", DIM).hnsw is not None
    assert (tmp_path / "indexes" / "vs_a.hnsw").exists()
    restarted = EmbeddedBackend(engine, tmp_path / "indexes", "auto", 500, 64)
    restarted.create("vs_a", DIM)
    query = clustered(1, seed=3)[0]
    assert [h.chunk for h in restarted.search("vs_a", query, 5)] == [
        h.chunk for h in backend.search("vs_a", query, 5)
    ]
    backend.delete_file("vs_a", "file-1")
    assert {h.chunk.file_id for h in backend.search("vs_a", query, 50)} == {"file-0"}


def test_vectors_of_another_dimension_are_refused(engine: Engine, tmp_path: Path) -> None:
    backend = EmbeddedBackend(engine, tmp_path / "indexes", "flat", 1000, 64)
    backend.create("vs_a", DIM)
    with pytest.raises(InvalidRequestError, match="16 dimensions but this store holds 32"):
        backend.add("vs_a", [Chunk("f", 0, "x")], np.ones((1, 16), np.float32))
    backend.add("vs_a", [Chunk("f", 0, "x")], clustered(1))
    with pytest.raises(InvalidRequestError, match="dimensions"):
        backend.search("vs_a", np.ones(8, np.float32), 1)


def hashed_embedder(version: str) -> Embedder:
    async def embed(texts: list[str]) -> np.ndarray:
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest(), np.uint8)[:DIM] for t in texts]
        return np.stack(rows).astype(np.float32) - 127.5

    return Embedder(EmbeddingModel("hashed", version), embed)


def test_a_store_refuses_another_embedding_model_and_oversized_files(engine: Engine, tmp_path: Path) -> None:
    stores = open_stores(VectorStoresConfig(max_file_bytes=100), engine, tmp_path)
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text("one two three")
    large.write_text("word " * 40)

    async def run() -> None:
        v1 = hashed_embedder("1")
        record = await stores.create("alpha", "docs", {}, v1.model)
        await stores.add_file("alpha", record.id, "file-s", "small.txt", small, {}, None, v1)
        assert [
            r.hit.chunk.text for r in await stores.search("alpha", "docs", "one two three", 1, None, 0, v1)
        ] == ["one two three"]
        with pytest.raises(
            InvalidRequestError, match="version 1, but queries are now embedded with hashed version 2"
        ):
            await stores.search("alpha", record.id, "one", 1, None, 0, hashed_embedder("2"))
        with pytest.raises(
            InvalidRequestError, match=r"over the limit of 100 \(vector_stores.max_file_bytes\)"
        ):
            await stores.add_file("alpha", record.id, "file-l", "large.txt", large, {}, None, v1)
        with pytest.raises(NotFoundError):
            await stores.search("beta", record.id, "one", 1, None, 0, v1)

    asyncio.run(run())


def test_a_store_expires_days_after_its_last_activity(engine: Engine, tmp_path: Path) -> None:
    stores = open_stores(VectorStoresConfig(), engine, tmp_path)
    text = tmp_path / "note.txt"
    text.write_text("the meeting is on monday")
    embed = hashed_embedder("1")

    async def run() -> None:
        record = await stores.create("alpha", "notes", {}, embed.model, expires_after_days=2)
        await stores.add_file("alpha", record.id, "file-n", "note.txt", text, {}, None, embed)
        active = (await stores.get("alpha", record.id)).to_openai()
        assert active["status"] == "completed"
        assert active["expires_after"] == {"anchor": "last_active_at", "days": 2}
        assert active["expires_at"] == active["last_active_at"] + 2 * 86400
        with engine.begin() as connection:  # three days without a search or a new file
            connection.execute(
                update(vector_stores)
                .where(vector_stores.c.id == record.id)
                .values(last_active_at=time.time() - 3 * 86400)
            )
        assert (await stores.get("alpha", record.id)).to_openai()["status"] == "expired"
        with pytest.raises(InvalidRequestError, match=r"expired at \d+ \(2 days after its last activity"):
            await stores.search("alpha", record.id, "meeting", 1, None, 0, embed)
        with pytest.raises(InvalidRequestError, match="create a new store"):
            await stores.add_file("alpha", record.id, "file-n", "note.txt", text, {}, None, embed)
        await stores.delete("alpha", record.id)  # still possible

    asyncio.run(run())
