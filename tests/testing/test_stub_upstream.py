"""The stub upstream speaks OpenAI's API well enough for the official client, and its faults are seeded
and validated. In-process through an ASGI transport; tests/backends/test_remote.py runs it as a process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import openai
import pytest

from inferline.testing.stub_upstream import StubUpstream

T = TypeVar("T")


def with_client(
    app: StubUpstream, work: Callable[[openai.AsyncOpenAI, httpx.AsyncClient], Awaitable[T]]
) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://stub") as http:
            client = openai.AsyncOpenAI(
                base_url="http://stub/v1", api_key="k", http_client=http, max_retries=0
            )
            return await work(client, http)

    return asyncio.run(main())


def test_streamed_chat_through_the_openai_client() -> None:
    async def work(client: openai.AsyncOpenAI, _: httpx.AsyncClient) -> tuple[dict[int, str], Any, list[Any]]:
        stream = await client.chat.completions.create(
            model="any",
            messages=[{"role": "user", "content": "two words"}],
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
        text: dict[int, str] = {}
        usage, finishes = None, []
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text[choice.index] = text.get(choice.index, "") + (choice.delta.content or "")
                if choice.finish_reason:
                    finishes.append(choice.finish_reason)
        return text, usage, finishes

    text, usage, finishes = with_client(StubUpstream("a b c"), work)
    assert text == {0: "a b c", 1: "a b c"}
    assert finishes == ["stop", "stop"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2, 6, 8)


def test_completion_max_tokens_ignore_eos_and_logprobs() -> None:
    async def work(client: openai.AsyncOpenAI, _: httpx.AsyncClient) -> list[Any]:
        return [
            await client.completions.create(model="m", prompt="p", max_tokens=2),
            await client.completions.create(
                model="m", prompt=[1, 2, 3], max_tokens=5, logprobs=2, extra_body={"ignore_eos": True}
            ),
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=1
            ),
        ]

    short, stretched, chat = with_client(StubUpstream("a b c"), work)
    assert (short.choices[0].text, short.choices[0].finish_reason) == ("a b", "length")
    assert stretched.choices[0].text == "a b c a b"
    assert stretched.usage.prompt_tokens == 3
    assert stretched.choices[0].logprobs.tokens == ["a", " b", " c", " a", " b"]
    assert stretched.choices[0].logprobs.text_offset == [0, 1, 3, 5, 7]
    assert stretched.choices[0].logprobs.top_logprobs[1] == {" b": -0.25, "<alt1>": -2.0}
    assert [e.token for e in chat.choices[0].logprobs.content] == ["a", " b", " c"]


def test_embeddings_models_and_health() -> None:
    async def work(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> tuple[Any, Any, int]:
        embeddings = await client.embeddings.create(model="e", input=["x y", "z"])
        models = await client.models.list()
        return embeddings, models, (await http.get("/health")).status_code

    embeddings, models, health = with_client(StubUpstream(model="stubby", embedding_dim=4), work)
    assert [len(row.embedding) for row in embeddings.data] == [4, 4]
    assert embeddings.data[0].embedding != embeddings.data[1].embedding
    assert embeddings.usage.prompt_tokens == 3
    assert [m.id for m in models.data] == ["stubby"]
    assert health == 200


def test_seeded_error_rate_and_stats() -> None:
    app = StubUpstream()

    async def work(_: openai.AsyncOpenAI, http: httpx.AsyncClient) -> list[list[int]]:
        runs = []
        for _attempt in range(2):
            faults = {"error_rate": 0.5, "status": 503, "seed": 3}
            assert (await http.post("/stub/faults", json=faults)).status_code == 200
            body = {"model": "m", "prompt": "p"}
            runs.append([(await http.post("/v1/completions", json=body)).status_code for _ in range(20)])
        return runs

    first, second = with_client(app, work)
    assert first == second
    assert set(first) == {200, 503}
    stats = app.stats
    assert stats.requests == stats.by_path["/v1/completions"] == 40
    assert stats.failed + stats.completed == 40


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ({"error_rte": 1}, "unknown fault 'error_rte'"),
        ({"error_rate": 2}, "error_rate must be in"),
        ({"delay_s": "1"}, "delay_s must be of type float"),
        ({"omit_usage": 1}, "omit_usage must be of type bool"),
        ({"fail_after_chunks": True}, "fail_after_chunks must be of type int"),
        ({"fail_mode": "explode"}, "fail_mode must be"),
    ],
)
def test_faults_are_validated(faults: dict[str, Any], message: str) -> None:
    async def work(_: openai.AsyncOpenAI, http: httpx.AsyncClient) -> httpx.Response:
        return await http.post("/stub/faults", json=faults)

    response = with_client(StubUpstream(), work)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_bad_requests_and_keys_are_refused() -> None:
    async def work(_: openai.AsyncOpenAI, http: httpx.AsyncClient) -> list[httpx.Response]:
        auth = {"authorization": "Bearer right"}
        return [
            await http.post("/v1/completions", json={"model": "m", "prompt": "p"}),
            await http.post("/v1/completions", json={"model": "m"}, headers=auth),
            await http.post("/v1/chat/completions", json={"model": "m", "messages": []}, headers=auth),
            await http.post("/v1/completions", content=b"{", headers=auth),
            await http.get("/v1/nothing"),
        ]

    responses = with_client(StubUpstream(api_key="right"), work)
    assert [r.status_code for r in responses] == [401, 400, 400, 400, 404]
    assert [r.json()["error"]["param"] for r in responses[1:3]] == ["prompt", "messages"]
