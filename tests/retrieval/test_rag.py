"""The rag route policy on the real models: retrieval from the caller's store, the prompt it builds,
citations in the answer, its own latency histogram, and tenant isolation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.retrieval.conftest import InProcess
from tests.server.conftest import OTHER_KEY

FACTS = {
    "wifi.txt": "The office wifi network is called Harbour and its password is lemon-42.",
    "parking.txt": "Staff park in the underground garage on level minus two, entrance on Quay Street.",
    "holidays.txt": "Every employee gets twenty-five days of paid holiday per year.",
}


@pytest.fixture(scope="module")
def handbook(retrieval_app: InProcess) -> dict[str, str]:
    """alpha's store 'handbook' (on pgvector), filled through the official client: filename -> file id."""

    async def fill() -> dict[str, str]:
        client = retrieval_app.openai()
        store = await client.vector_stores.create(name="handbook")
        ids = {}
        for name, text in FACTS.items():
            uploaded = await client.files.create(file=(name, text.encode()), purpose="assistants")
            added = await client.vector_stores.files.create(store.id, file_id=uploaded.id)
            assert added.status == "completed"
            ids[name] = uploaded.id
        return ids

    return retrieval_app.run(fill())


def ask(question: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "docs",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 3,
        "temperature": 0,
        **extra,
    }


def test_a_rag_answer_cites_the_chunk_that_holds_the_answer(
    retrieval_app: InProcess, handbook: dict[str, str]
) -> None:
    response = retrieval_app.post("/v1/chat/completions", ask("What is the wifi password?"))
    assert response.status_code == 200, response.text
    citations = response.json()["inferline"]["citations"]
    assert citations[0]["file_id"] == handbook["wifi.txt"]
    assert citations[0]["text"] == FACTS["wifi.txt"]
    assert citations[0]["score"] > citations[-1]["score"]
    plain = retrieval_app.post(
        "/v1/chat/completions", {**ask("What is the wifi password?"), "model": "smollm2-135m-instruct"}
    )
    # The sources are in the prompt the model read (and was billed for).
    assert response.json()["usage"]["prompt_tokens"] > plain.json()["usage"]["prompt_tokens"] + 40
    metrics = retrieval_app.run(retrieval_app.http.get("/metrics")).text
    assert 'inferline_retrieval_seconds_count{route="docs"}' in metrics


def test_a_streamed_rag_answer_carries_its_citations(
    retrieval_app: InProcess, handbook: dict[str, str]
) -> None:
    response = retrieval_app.post("/v1/chat/completions", ask("Where do staff park?", stream=True))
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    first = json.loads(events[0])
    assert first["inferline"]["citations"][0]["file_id"] == handbook["parking.txt"]
    assert events[-1] == "[DONE]"


def test_another_tenant_cannot_retrieve_from_the_store(
    retrieval_app: InProcess, handbook: dict[str, str]
) -> None:
    response = retrieval_app.post("/v1/chat/completions", ask("What is the wifi password?"), key=OTHER_KEY)
    assert response.status_code == 404
    assert "handbook" in response.json()["error"]["message"]


def test_completions_and_responses_answer_from_the_store_too(
    retrieval_app: InProcess, handbook: dict[str, str]
) -> None:
    completion = retrieval_app.post(
        "/v1/completions", {"model": "docs", "prompt": "Where do staff park?", "max_tokens": 3}
    )
    assert completion.status_code == 200, completion.text
    assert completion.json()["inferline"]["citations"][0]["file_id"] == handbook["parking.txt"]
    tokens = retrieval_app.post("/v1/completions", {"model": "docs", "prompt": [1, 2, 3], "max_tokens": 3})
    assert tokens.status_code == 400
    assert "one text prompt" in tokens.json()["error"]["message"]

    response = retrieval_app.post(
        "/v1/responses", {"model": "docs", "input": "How many days of holiday?", "max_output_tokens": 3}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["inferline"]["citations"][0]["file_id"] == handbook["holidays.txt"]
    annotations = body["output"][0]["content"][0]["annotations"]
    assert {
        "type": "file_citation",
        "file_id": handbook["holidays.txt"],
        "filename": "holidays.txt",
    }.items() <= (next(a for a in annotations if a["file_id"] == handbook["holidays.txt"]).items())
