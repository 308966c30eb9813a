"""Response caches on a real model: exact and semantic hits, streams of cached answers, tenant
isolation, bypass of sampled requests, metering, Redis shared entries, and invalidation on a new version."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inferline.router.deployments import build_backend
from tests.retrieval.conftest import LLM, InProcess
from tests.server.conftest import OTHER_KEY


def ask(question: str, route: str = "cached", **extra: Any) -> dict[str, Any]:
    return {
        "model": route,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 3,
        "temperature": 0,
        **extra,
    }


def text_of(response: Any) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


@pytest.mark.parametrize("route", ["cached", "shared-cache"])
def test_a_repeated_request_is_served_from_the_cache(retrieval_app: InProcess, route: str) -> None:
    first = retrieval_app.post("/v1/chat/completions", ask("What is the capital of France?", route))
    assert first.headers["x-inferline-cache"] == "miss"
    second = retrieval_app.post("/v1/chat/completions", ask("What is the capital of France?", route))
    assert second.headers["x-inferline-cache"] == "hit"
    assert text_of(second) == text_of(first)
    counts = ("prompt_tokens", "completion_tokens")
    assert [second.json()["usage"][c] for c in counts] == [first.json()["usage"][c] for c in counts]
    cached = [r for r in retrieval_app.records if r.outcome == "cached" and r.route == route]
    assert len(cached) == 1
    assert (cached[0].deployment, cached[0].cost, cached[0].tenant) == ("cache", 0.0, "alpha")


def test_a_streaming_client_gets_the_cached_answer_as_a_stream(retrieval_app: InProcess) -> None:
    question = "Name a primary colour."
    whole = retrieval_app.post("/v1/chat/completions", ask(question))
    streamed = retrieval_app.post(
        "/v1/chat/completions", ask(question, stream=True, stream_options={"include_usage": True})
    )
    assert streamed.headers["x-inferline-cache"] == "hit"
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == text_of(whole)
    assert chunks[-1]["usage"]["completion_tokens"] == whole.json()["usage"]["completion_tokens"]


def test_another_tenant_never_reads_the_entry(retrieval_app: InProcess) -> None:
    question = "What is two plus two?"
    retrieval_app.post("/v1/chat/completions", ask(question))
    assert retrieval_app.post("/v1/chat/completions", ask(question)).headers["x-inferline-cache"] == "hit"
    other = retrieval_app.post("/v1/chat/completions", ask(question), key=OTHER_KEY)
    assert other.headers["x-inferline-cache"] == "miss"


def test_sampled_requests_bypass_the_cache(retrieval_app: InProcess) -> None:
    body = ask("Tell me a word.", max_tokens=1)
    del body["temperature"]  # OpenAI's default is 1
    assert retrieval_app.post("/v1/chat/completions", body).headers["x-inferline-cache"] == "bypass"
    assert (
        retrieval_app.post("/v1/chat/completions", {**body, "temperature": 0, "n": 2}).headers[
            "x-inferline-cache"
        ]
        == "bypass"
    )
    uncached = retrieval_app.post("/v1/chat/completions", ask("Tell me a word.", LLM, max_tokens=1))
    assert "x-inferline-cache" not in uncached.headers  # a route without a cache


def test_a_paraphrase_hits_semantically_and_a_near_miss_does_not(retrieval_app: InProcess) -> None:
    first = retrieval_app.post("/v1/chat/completions", ask("How do I reset my password?"))
    assert first.headers["x-inferline-cache"] == "miss"
    paraphrase = retrieval_app.post("/v1/chat/completions", ask("How can I reset my password?"))
    assert paraphrase.headers["x-inferline-cache"] == "hit"
    assert 0.92 <= float(paraphrase.headers["x-inferline-cache-similarity"]) < 1
    assert text_of(paraphrase) == text_of(first)
    retrieval_app.post("/v1/chat/completions", ask("Convert 5 miles to kilometres."))
    other_number = retrieval_app.post("/v1/chat/completions", ask("Convert 50 miles to kilometres."))
    assert (
        other_number.headers["x-inferline-cache"] == "miss"
    )  # embeds within the threshold, names another number
    other_settings = retrieval_app.post(
        "/v1/chat/completions", ask("How can I reset my password?", max_tokens=4)
    )
    assert other_settings.headers["x-inferline-cache"] == "miss"


def test_a_new_deployment_version_invalidates_the_entries(retrieval_app: InProcess) -> None:
    question = "Which planet is the largest?"
    retrieval_app.post("/v1/chat/completions", ask(question))
    assert retrieval_app.post("/v1/chat/completions", ask(question)).headers["x-inferline-cache"] == "hit"
    deployment = retrieval_app.pool.find(LLM)
    config = deployment.config.model_copy(update={"version": "2"})
    retrieval_app.run(deployment.swap(config, build_backend(config), drain_timeout_s=5))
    after = retrieval_app.post("/v1/chat/completions", ask(question))
    assert after.headers["x-inferline-cache"] == "miss"
    assert after.headers["x-inferline-version"] == "2"


def test_completions_and_responses_are_cached_too(retrieval_app: InProcess) -> None:
    prompt = {"model": "cached", "prompt": "The sky is", "max_tokens": 3, "temperature": 0}
    first = retrieval_app.post("/v1/completions", prompt)
    assert first.headers["x-inferline-cache"] == "miss"
    second = retrieval_app.post("/v1/completions", prompt)
    assert second.headers["x-inferline-cache"] == "hit"
    assert second.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]
    several = retrieval_app.post("/v1/completions", {**prompt, "prompt": ["The sky is", "Grass is"]})
    assert several.headers["x-inferline-cache"] == "bypass"  # one text keys a cache; a list does not
    assert len(several.json()["choices"]) == 2

    turn = {"model": "cached", "input": "Name a fruit.", "max_output_tokens": 3, "temperature": 0}
    answered = retrieval_app.post("/v1/responses", turn)
    assert answered.headers["x-inferline-cache"] == "miss"
    again = retrieval_app.post("/v1/responses", {**turn, "store": False})
    assert again.headers["x-inferline-cache"] == "hit"
    assert (
        again.json()["output"][0]["content"][0]["text"] == answered.json()["output"][0]["content"][0]["text"]
    )
    tools = [{"type": "function", "name": "pick", "parameters": {"type": "object", "properties": {}}}]
    with_tools = retrieval_app.post("/v1/responses", {**turn, "tools": tools, "tool_choice": "none"})
    assert with_tools.headers["x-inferline-cache"] == "miss"  # tools are part of the key
