"""The Vector Stores API through the official `openai` client, against the suite's shared server (the
embedded backend, MiniLM embeddings, tenants alpha and beta)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.server.conftest import API_KEY, OTHER_KEY, ServerProcess

PARIS = "The Eiffel Tower is in Paris. It was finished in 1889 for the World's Fair and is 330 metres tall."
TOKYO = "Mount Fuji is the highest mountain in Japan, at 3,776 metres, south-west of Tokyo."
BREAD = "Sourdough bread rises with wild yeast and lactic acid bacteria instead of baker's yeast."


@pytest.fixture(scope="module")
def alpha(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def store(alpha: openai.OpenAI) -> Iterator[str]:
    """A store of alpha's with three one-chunk files, each with attributes."""
    created = alpha.vector_stores.create(name="facts", metadata={"team": "search"})
    for name, text, attributes in [
        ("paris.txt", PARIS, {"topic": "landmark", "year": 1889}),
        ("fuji.txt", TOKYO, {"topic": "landmark", "year": 0}),
        ("bread.txt", BREAD, {"topic": "food", "year": 2020}),
    ]:
        uploaded = alpha.files.create(file=(name, io.BytesIO(text.encode())), purpose="assistants")
        added = alpha.vector_stores.files.create(created.id, file_id=uploaded.id, attributes=attributes)
        assert added.status == "completed"
    yield created.id
    alpha.vector_stores.delete(created.id)


def test_a_store_is_created_filled_and_described(alpha: openai.OpenAI, store: str) -> None:
    got = alpha.vector_stores.retrieve(store)
    assert (got.name, got.metadata, got.file_counts.completed) == ("facts", {"team": "search"}, 3)
    assert got.model_extra is not None
    assert got.model_extra["inferline"]["embedding_model"] == "all-minilm-l6-v2"
    assert store in [s.id for s in alpha.vector_stores.list()]
    files = alpha.vector_stores.files.list(store)
    assert {f.attributes["topic"] for f in files if f.attributes} == {"landmark", "food"}


def test_search_finds_the_chunk_that_answers(alpha: openai.OpenAI, store: str) -> None:
    page = alpha.vector_stores.search(store, query="How tall is the Eiffel Tower?", max_num_results=2)
    results = list(page)
    assert len(results) == 2
    assert results[0].filename == "paris.txt"
    assert results[0].content[0].text == PARIS
    assert results[0].score > results[1].score


def test_filters_and_score_threshold_narrow_the_results(alpha: openai.OpenAI, store: str) -> None:
    food = alpha.vector_stores.search(
        store, query="tall tower", filters={"type": "eq", "key": "topic", "value": "food"}
    )
    assert [r.filename for r in food] == ["bread.txt"]
    compound = {
        "type": "and",
        "filters": [
            {"type": "in", "key": "topic", "value": ["landmark"]},
            {"type": "gte", "key": "year", "value": 1000},
        ],
    }
    assert [r.filename for r in alpha.vector_stores.search(store, query="mountain", filters=compound)] == [
        "paris.txt"
    ]
    strict = alpha.vector_stores.search(
        store, query="How tall is the Eiffel Tower?", ranking_options={"score_threshold": 0.5}
    )
    assert [r.filename for r in strict] == ["paris.txt"]


def test_another_tenant_cannot_see_or_search_the_store(server: ServerProcess, store: str) -> None:
    beta = openai.OpenAI(base_url=f"{server.url}/v1", api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        beta.vector_stores.retrieve(store)
    with pytest.raises(openai.NotFoundError):
        beta.vector_stores.search(store, query="Eiffel Tower")
    assert store not in [s.id for s in beta.vector_stores.list()]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/search", {"query": "  "}, 400, "query"),
        ("/search", {"query": "x", "max_num_results": 0}, 400, "max_num_results"),
        ("/search", {"query": "x", "filters": {"type": "like", "key": "a", "value": 1}}, 400, "filters"),
        ("/files", {"file_id": "file-missing"}, 404, None),
        (
            "/files",
            {
                "file_id": "file-x",
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 20, "chunk_overlap_tokens": 11},
                },
            },
            400,
            "chunking_strategy",
        ),
    ],
)
def test_bad_input_is_a_clear_4xx(
    server: ServerProcess, store: str, path: str, body: dict[str, object], status: int, param: str | None
) -> None:
    response = httpx.post(
        f"{server.url}/v1/vector_stores/{store}{path}",
        json=body,
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param


def test_an_unknown_store_is_a_404(alpha: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="GET /v1/vector_stores"):
        alpha.vector_stores.search("vs_missing", query="anything")


def test_a_store_created_with_files_chunks_them_as_asked(alpha: openai.OpenAI) -> None:
    words = " ".join(f"word{i}" for i in range(100))
    uploaded = alpha.files.create(file=("words.txt", io.BytesIO(words.encode())), purpose="assistants")
    static = {"type": "static", "static": {"max_chunk_size_tokens": 16, "chunk_overlap_tokens": 4}}
    store = alpha.vector_stores.create(name="words", file_ids=[uploaded.id], chunking_strategy=static)
    try:
        assert store.file_counts.completed == 1
        (file,) = alpha.vector_stores.files.list(store.id)
        assert file.chunking_strategy is not None
        assert file.chunking_strategy.model_dump()["static"]["max_chunk_size_tokens"] == 16
        results = list(alpha.vector_stores.search(store.id, query="word50", max_num_results=10))
        assert len(results) == 8  # 100 words in windows of 16 starting every 12 words: 0, 12, ..., 84
        assert all(len(r.content[0].text.split()) <= 16 for r in results)
    finally:
        alpha.vector_stores.delete(store.id)


def test_a_store_can_expire_after_days_of_inactivity(alpha: openai.OpenAI) -> None:
    store = alpha.vector_stores.create(name="brief", expires_after={"anchor": "last_active_at", "days": 7})
    try:
        got = alpha.vector_stores.retrieve(store.id)
        assert got.expires_after is not None
        assert (got.expires_after.anchor, got.expires_after.days, got.status) == (
            "last_active_at",
            7,
            "completed",
        )
        assert got.expires_at == got.last_active_at + 7 * 86400
    finally:
        alpha.vector_stores.delete(store.id)
    with pytest.raises(openai.BadRequestError, match="days"):
        alpha.vector_stores.create(name="x", expires_after={"anchor": "last_active_at", "days": 0})
