"""The OpenAI API of a real server process, through the official openai client."""

import asyncio

import httpx
import numpy as np
import openai
import pytest

from .conftest import API_KEY, ServerProcess

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_alias_content_parts_and_system_message(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="default",
        messages=[
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
        ],
        max_tokens=8,
        temperature=0,
    )
    assert "Paris" in reply.choices[0].message.content


def test_length_finish_and_exact_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_completion_tokens=3,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3


def test_streaming_chat_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0


def test_completions_with_several_prompts_and_n(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL,
        prompt=["1, 2, 3,", "a, b, c,"],
        max_tokens=4,
        n=2,
        temperature=0.8,
        seed=3,
        extra_body={"ignore_eos": True},
    )
    assert sorted(c.index for c in reply.choices) == [0, 1, 2, 3]
    assert all(c.finish_reason == "length" for c in reply.choices)
    assert reply.usage.completion_tokens == 2 * 2 * 4
    single = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=1)
    other = client.completions.create(model=MODEL, prompt="a, b, c,", max_tokens=1)
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens + other.usage.prompt_tokens


def test_completion_stop_and_logprobs(client: openai.OpenAI) -> None:
    free = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    assert " 7" in free.choices[0].text
    cut = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[" 7"]
    )
    assert cut.choices[0].text == free.choices[0].text[: free.choices[0].text.index(" 7")]
    with_logprobs = client.completions.create(
        model=MODEL, prompt="1, 2, 3,", max_tokens=3, temperature=0, logprobs=2
    )
    lp = with_logprobs.choices[0].logprobs
    assert len(lp.tokens) == 3
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(len(top) == 2 for top in lp.top_logprobs)


def test_chat_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert all(len(entry.top_logprobs) == 3 for entry in content)
    assert content[0].top_logprobs[0].token == content[0].token


def test_seed_reproduces(client: openai.OpenAI) -> None:
    def ask() -> str:
        reply = client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=12, temperature=1.0, seed=11
        )
        return reply.choices[0].message.content

    assert ask() == ask()


def test_models_endpoints(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {MODEL, "default"} <= ids
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_model_card_says_how_each_deployment_runs_and_why(client: openai.OpenAI) -> None:
    runtime = client.models.retrieve("default").model_extra["inferline"]  # type: ignore[index]
    (deployment,) = runtime["deployments"]
    assert deployment["name"] == MODEL
    assert deployment["ready"] is True
    how = (deployment["device"], deployment["dtype"], deployment["quantization"])
    assert how == ("cpu", "float32", "none")  # the test server asks for float32
    assert "dtype float32 was asked for" in deployment["quantization_reason"]


def test_async_client_concurrent_streams(server: ServerProcess) -> None:
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)

        async def one(i: int) -> str:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Say the number {i}."}],
                max_tokens=8,
                temperature=0,
                stream=True,
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        try:
            return await asyncio.gather(*(one(i) for i in range(32)))
        finally:
            await client.close()

    texts = asyncio.run(main())
    assert len(texts) == 32
    assert all(texts)


def test_headers_name_model_deployment_version_and_request_id(server: ServerProcess) -> None:
    response = httpx.post(
        f"{server.url}/v1/completions",
        headers={"authorization": f"Bearer {API_KEY}", "x-request-id": "trace-123"},
        json={"model": "default", "prompt": "Hi", "max_tokens": 1},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-123"
    assert response.headers["x-inferline-model"] == MODEL
    assert response.headers["x-inferline-deployment"] == f"{MODEL}@1"
    assert response.headers["x-inferline-version"] == "1"
    generated = httpx.get(f"{server.url}/health").headers["x-request-id"]
    assert len(generated) == 32


def test_embeddings_float_and_base64_batch(client: openai.OpenAI) -> None:
    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell sharply."]
    floats = client.embeddings.create(model="all-minilm-l6-v2", input=texts, encoding_format="float")
    vectors = np.array([d.embedding for d in floats.data])
    assert vectors.shape == (3, 384)
    assert [d.index for d in floats.data] == [0, 1, 2]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert floats.usage.prompt_tokens > 0
    # The openai client asks for base64 by default and decodes it; the vectors must not change.
    packed = client.embeddings.create(model="all-minilm-l6-v2", input=texts)
    np.testing.assert_allclose(np.array([d.embedding for d in packed.data]), vectors, rtol=1e-6)
    single = client.embeddings.create(model="all-minilm-l6-v2", input="The cat sits on the mat.")
    np.testing.assert_allclose(single.data[0].embedding, vectors[0], atol=1e-5)


def test_embedding_requests_larger_than_a_batch_are_split_not_refused(client: openai.OpenAI) -> None:
    texts = [f"Sentence {i} about the weather." for i in range(75)]  # max_batch_size is 32
    reply = client.embeddings.create(model="all-minilm-l6-v2", input=texts, encoding_format="float")
    assert [d.index for d in reply.data] == list(range(75))
    alone = client.embeddings.create(model="all-minilm-l6-v2", input=texts[70], encoding_format="float")
    np.testing.assert_allclose(reply.data[70].embedding, alone.data[0].embedding, atol=1e-5)
