"""RemoteBackend against real processes on loopback: the stub upstream (answers, fails on demand) and
the suite's shared `inferline serve` (tests/server/conftest.py), whose own answers the backend must
reproduce."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest

from inferline.backends.base import Backend, UnsupportedOperationError
from inferline.backends.openai_stream import StreamDecoder
from inferline.backends.remote import RemoteBackend, request_body
from inferline.config import RemoteDeploymentConfig
from inferline.errors import BackendUnavailableError, InvalidRequestError, ModelLoadError
from inferline.testing.stub_upstream import StubProcess, start_stub
from inferline.types import Delta, Request, SamplingParams, StructuredOutput, Usage
from tests.server.conftest import API_KEY, ServerProcess, free_port

REPLY = "one two three four five six"
KEY_ENV = "INFERLINE_TEST_STUB_KEY"
STUB_KEY = "sk-stub-test"
SERVER_KEY_ENV = "INFERLINE_TEST_SERVER_KEY"
AUTH = {"authorization": f"Bearer {API_KEY}"}
LLM = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
T = TypeVar("T")


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubProcess]:
    log_path = tmp_path_factory.mktemp("stub") / "stub.log"
    process = start_stub("--reply", REPLY, "--api-key", STUB_KEY, log_path=log_path)
    yield process
    process.stop()


@pytest.fixture
def upstream(stub: StubProcess, monkeypatch: pytest.MonkeyPatch) -> StubProcess:
    """The stub with no faults, and its key in the environment."""
    stub.set_faults()
    monkeypatch.setenv(KEY_ENV, STUB_KEY)
    return stub


@pytest.fixture
def upstream_server(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    """The shared server (the default chat and embedding models), its tenant's key in the environment."""
    monkeypatch.setenv(SERVER_KEY_ENV, API_KEY)
    return server


def deployment(url: str, **fields: Any) -> RemoteDeploymentConfig:
    defaults: dict[str, Any] = {"name": "remote", "base_url": f"{url}/v1"}
    return RemoteDeploymentConfig(**{**defaults, **fields})


def on_stub(stub: StubProcess, **fields: Any) -> RemoteDeploymentConfig:
    return deployment(stub.url, api_key_env=KEY_ENV, **fields)


def on_server(server: ServerProcess, **fields: Any) -> RemoteDeploymentConfig:
    return deployment(server.url, api_key_env=SERVER_KEY_ENV, **fields)


def run(config: RemoteDeploymentConfig, work: Callable[[RemoteBackend], Awaitable[T]]) -> T:
    """Load a RemoteBackend, run `work` with it, unload it."""

    async def main() -> T:
        backend = RemoteBackend(config)
        await backend.load()
        try:
            return await work(backend)
        finally:
            await backend.unload()

    return asyncio.run(main())


def completion(prompt: str | list[int], **sampling: Any) -> Request:
    if isinstance(prompt, str):
        return Request("r1", prompt_text=prompt, sampling=SamplingParams(**sampling))
    return Request("r1", prompt_token_ids=prompt, sampling=SamplingParams(**sampling))


def chat(content: str, **sampling: Any) -> Request:
    return Request("r1", messages=[{"role": "user", "content": content}], sampling=SamplingParams(**sampling))


async def collect(backend: RemoteBackend, request: Request) -> list[Delta]:
    return [delta async for delta in backend.generate(request)]


def texts(deltas: list[Delta]) -> dict[int, str]:
    joined: dict[int, str] = {}
    for delta in deltas:
        joined[delta.index] = joined.get(delta.index, "") + delta.text
    return joined


# ---- the request body -----------------------------------------------------------------------------


def test_body_sends_extensions_only_when_they_change_something() -> None:
    path, body = request_body(chat("hi"), "up")
    assert path == "chat/completions"
    assert body["model"] == "up"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert not {"top_k", "min_p", "repetition_penalty", "ignore_eos", "logprobs", "seed", "stop"} & set(body)
    assert body["max_tokens"] == 16

    sampling = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "ignore_eos": True, "seed": 7}
    _, body = request_body(chat("hi", logprobs=3, stop=["\n"], max_tokens=None, **sampling), "up")
    assert {k: body[k] for k in sampling} == sampling
    assert (body["logprobs"], body["top_logprobs"], body["stop"]) == (True, 3, ["\n"])
    assert "max_tokens" not in body  # chat: omitted means as many as fit

    path, body = request_body(completion([1, 2, 3], logprobs=2, max_tokens=None), "up")
    assert (path, body["prompt"], body["logprobs"]) == ("completions", [1, 2, 3], 2)
    assert body["max_tokens"] is None  # completions: omitted would mean 16

    with pytest.raises(InvalidRequestError, match="no messages and no prompt"):
        request_body(Request("r1"), "up")


def test_body_carries_the_output_constraint_as_the_upstream_takes_it() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    cases = [
        (StructuredOutput("json_schema", json.dumps(schema)), "response_format"),
        (StructuredOutput("json_object"), "response_format"),
        (StructuredOutput("regex", "[0-9]+"), "guided_regex"),
        (StructuredOutput("choice", '["yes", "no"]'), "guided_choice"),
        (StructuredOutput("grammar", 'start: "a"'), "guided_grammar"),
    ]
    bodies = [request_body(chat("hi", structured=structured), "up")[1] for structured, _ in cases]
    assert [next(k for k in b if k in {f for _, f in cases}) for b in bodies] == [f for _, f in cases]
    assert bodies[0]["response_format"]["json_schema"]["schema"] == schema
    assert bodies[1]["response_format"] == {"type": "json_object"}
    assert bodies[3]["guided_choice"] == ["yes", "no"]


def test_decoder_reads_usage_details_and_skips_non_data_lines() -> None:
    decoder = StreamDecoder("r1", chat=True, where="upstream")
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop", "stop_reason": 7}]}
    usage = {"prompt_tokens": 9, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 8}}
    lines = [": keep-alive", "", "event: message", f"data: {json.dumps(chunk)}"]
    lines += [f"data: {json.dumps({'choices': [], 'usage': usage})}", "data: [DONE]", "data: {late"]
    deltas = [delta for line in lines for delta in decoder.feed(line)]
    assert [(d.text, d.finish_reason, d.stop_reason) for d in deltas[:1]] == [("Hi", "stop", 7)]
    assert deltas[-1].usage == Usage(prompt_tokens=9, completion_tokens=1, cached_prompt_tokens=8)
    assert decoder.finish() is None


def test_decoder_end_without_done() -> None:
    finished = StreamDecoder("r1", chat=False, where="upstream")
    finished.feed('data: {"choices": [{"index": 0, "text": "a", "finish_reason": "length"}]}')
    final = finished.finish()
    assert final is not None
    assert final.usage == Usage(prompt_tokens=0, completion_tokens=1)

    cut = StreamDecoder("r1", chat=False, where="upstream U")
    cut.feed('data: {"choices": [{"index": 0, "text": "a", "finish_reason": null}]}')
    with pytest.raises(BackendUnavailableError, match="upstream U ended the stream after 1 chunks"):
        cut.finish()
    with pytest.raises(BackendUnavailableError, match="failed mid-stream: boom"):
        cut.feed('data: {"error": {"message": "boom", "code": 500}}')
    with pytest.raises(BackendUnavailableError, match="unreadable chunk"):
        cut.feed("data: {nope")


# ---- against the stub upstream --------------------------------------------------------------------


def test_completion_stream_text_finish_and_usage(upstream: StubProcess) -> None:
    before = upstream.stats()["by_path"].get("/v1/completions", 0)
    deltas = run(on_stub(upstream), lambda b: collect(b, completion("a b c", max_tokens=4)))
    assert texts(deltas) == {0: "one two three four"}
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]
    assert deltas[-1].usage is not None
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (3, 4)
    assert all(d.token_ids == [] for d in deltas)
    assert upstream.stats()["by_path"]["/v1/completions"] == before + 1


def test_chat_with_n_and_logprobs(upstream: StubProcess) -> None:
    deltas = run(on_stub(upstream), lambda b: collect(b, chat("hi", n=2, logprobs=2, max_tokens=None)))
    assert texts(deltas) == {0: REPLY, 1: REPLY}
    for index in (0, 1):
        entries = [e for d in deltas if d.index == index for e in d.logprobs or []]
        assert "".join(e.token for e in entries) == REPLY
        assert all(e.logprob == -0.25 and e.token_id is None for e in entries)
        assert [t.token for t in entries[1].top] == [" two", "<alt1>"]
    usage = deltas[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 12


def test_completion_logprobs(upstream: StubProcess) -> None:
    deltas = run(on_stub(upstream), lambda b: collect(b, completion("x", logprobs=1, max_tokens=2)))
    entries = [e for d in deltas for e in d.logprobs or []]
    assert [(e.token, e.logprob, [t.token for t in e.top]) for e in entries] == [
        ("one", -0.25, ["one"]),
        (" two", -0.25, [" two"]),
    ]


def test_usage_counted_from_chunks_when_upstream_sends_none(upstream: StubProcess) -> None:
    upstream.set_faults(omit_usage=True)
    deltas = run(on_stub(upstream), lambda b: collect(b, completion("a b", max_tokens=5)))
    assert deltas[-1].usage is not None
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (0, 5)


def test_embeddings_in_input_order(upstream: StubProcess) -> None:
    result = run(on_stub(upstream), lambda b: b.embed(["alpha beta", "gamma", "alpha beta"]))
    assert result.vectors.dtype == np.float32
    assert result.vectors.shape == (3, 8)
    assert np.array_equal(result.vectors[0], result.vectors[2])
    assert not np.array_equal(result.vectors[0], result.vectors[1])
    assert result.num_tokens == 5


def test_protocol_metadata_stats_and_health(upstream: StubProcess) -> None:
    backend = RemoteBackend(on_stub(upstream, version="3"))
    assert isinstance(backend, Backend)
    assert (backend.metadata.kind, backend.metadata.platform, backend.metadata.version) == (
        "llm",
        "openai-remote",
        "3",
    )
    assert not backend.health()

    async def main() -> None:
        await backend.load()
        assert backend.health()
        with pytest.raises(UnsupportedOperationError):
            await backend.infer({"x": np.zeros(1)})
        await backend.unload()
        assert not backend.health()

    asyncio.run(main())


def test_many_concurrent_streams(upstream: StubProcess) -> None:
    async def work(backend: RemoteBackend) -> list[list[Delta]]:
        return await asyncio.gather(*(collect(backend, completion("a", max_tokens=3)) for _ in range(64)))

    results = run(on_stub(upstream), work)
    assert all(texts(deltas) == {0: "one two three"} for deltas in results)


@pytest.mark.parametrize(("status", "retry_after_s"), [(500, None), (503, 3.0), (429, 1.5)])
def test_upstream_5xx_and_429_are_unavailable(
    upstream: StubProcess, status: int, retry_after_s: float | None
) -> None:
    upstream.set_faults(error_rate=1.0, status=status, retry_after_s=retry_after_s)
    with pytest.raises(BackendUnavailableError) as caught:
        run(on_stub(upstream), lambda b: collect(b, chat("hi")))
    message = str(caught.value)
    assert "deployment 'remote'" in message
    assert f"{upstream.url}/v1/chat/completions" in message
    assert f"answered {status}" in message
    assert caught.value.retry_after_s == retry_after_s


def test_upstream_400_is_invalid_request_with_its_message(upstream: StubProcess) -> None:
    upstream.set_faults(error_rate=1.0, status=400)
    with pytest.raises(InvalidRequestError, match="injected error 400"):
        run(on_stub(upstream), lambda b: collect(b, chat("hi")))
    upstream.set_faults()
    bad = completion("hi")
    bad.sampling.max_tokens = 0  # not validated here: the upstream refuses it
    with pytest.raises(InvalidRequestError, match="max_tokens must be") as caught:
        run(on_stub(upstream), lambda b: collect(b, bad))
    assert caught.value.param == "max_tokens"


def test_wrong_key_is_unavailable_and_logged(upstream: StubProcess, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(BackendUnavailableError, match="answered 401: invalid API key"):
        run(deployment(upstream.url), lambda b: collect(b, chat("hi")))
    assert "check base_url, upstream_model and api_key_env" in caplog.text


def test_missing_key_variable_fails_load(upstream: StubProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ModelLoadError, match=KEY_ENV):
        asyncio.run(RemoteBackend(on_stub(upstream)).load())


def test_connection_refused_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="refused the connection") as caught:
        run(deployment(url), lambda b: collect(b, chat("hi")))
    assert f"{url}/v1/chat/completions" in str(caught.value)
    with pytest.raises(BackendUnavailableError, match=f"{url}/v1/embeddings"):
        run(deployment(url), lambda b: b.embed(["x"]))
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("fault", ["delay_s", "first_token_delay_s"])
def test_slow_first_token_times_out(upstream: StubProcess, fault: str) -> None:
    upstream.set_faults(**{fault: 5.0})
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="sent no token within 0.3 s"):
        run(on_stub(upstream, timeout_s=0.3), lambda b: collect(b, chat("hi")))
    assert time.monotonic() - started < 1.5


def test_slow_embeddings_time_out(upstream: StubProcess) -> None:
    upstream.set_faults(delay_s=5.0)
    with pytest.raises(BackendUnavailableError, match="did not answer within 0.3 s"):
        run(on_stub(upstream, timeout_s=0.3), lambda b: b.embed(["x"]))


@pytest.mark.parametrize(("mode", "match"), [("frame", "injected mid-stream failure"), ("drop", "closed")])
def test_failure_mid_stream_raises_after_deltas(upstream: StubProcess, mode: str, match: str) -> None:
    upstream.set_faults(fail_after_chunks=3, fail_mode=mode)
    received: list[Delta] = []

    async def work(backend: RemoteBackend) -> None:
        async for delta in backend.generate(completion("hi")):
            received.append(delta)

    with pytest.raises(BackendUnavailableError, match=match):
        run(on_stub(upstream), work)
    assert texts(received) == {0: "one two three"}


def test_closing_early_aborts_the_upstream_request(upstream: StubProcess) -> None:
    upstream.set_faults(token_delay_s=0.05)
    aborted_before = upstream.stats()["aborted"]

    async def work(backend: RemoteBackend) -> tuple[int, int]:
        stream: AsyncGenerator[Delta, None] = backend.generate(
            completion("hi", max_tokens=200, ignore_eos=True)
        )
        await anext(stream)
        await anext(stream)
        running = backend.stats().running
        await stream.aclose()
        return running, backend.stats().running

    assert run(on_stub(upstream), work) == (1, 0)
    deadline = time.monotonic() + 2
    while upstream.stats()["aborted"] == aborted_before and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = upstream.stats()
    assert stats["aborted"] == aborted_before + 1
    assert stats["in_flight"] == 0


# ---- against the shared inferline server --------------------------------------------------------


def test_greedy_completion_matches_the_server(upstream_server: ServerProcess) -> None:
    prompt = "The capital of France is"
    own = httpx.post(
        f"{upstream_server.url}/v1/completions",
        json={"model": LLM, "prompt": prompt, "max_tokens": 12, "temperature": 0},
        headers=AUTH,
        timeout=60,
    ).json()
    deltas = run(
        on_server(upstream_server, upstream_model=LLM),
        lambda b: collect(b, completion(prompt, max_tokens=12, temperature=0.0)),
    )
    assert texts(deltas) == {0: own["choices"][0]["text"]}
    usage = deltas[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        own["usage"]["prompt_tokens"],
        own["usage"]["completion_tokens"],
    )


def test_greedy_chat_streams_with_logprobs_like_the_server(upstream_server: ServerProcess) -> None:
    question = "What is the capital of France?"
    own = httpx.post(
        f"{upstream_server.url}/v1/chat/completions",
        json={
            "model": LLM,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 10,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 2,
        },
        headers=AUTH,
        timeout=60,
    ).json()
    deltas = run(
        on_server(upstream_server, name=LLM),  # upstream_model defaults to the deployment's name
        lambda b: collect(b, chat(question, max_tokens=10, temperature=0.0, logprobs=2)),
    )
    content = [d for d in deltas if d.text]
    assert len(content) > 1  # streamed, not one lump
    assert texts(deltas) == {0: own["choices"][0]["message"]["content"]}
    assert [d.finish_reason for d in deltas if d.finish_reason] == [own["choices"][0]["finish_reason"]]
    entries = [e for d in deltas for e in d.logprobs or []]
    expected = own["choices"][0]["logprobs"]["content"]
    assert [e.token for e in entries] == [e["token"] for e in expected]
    assert [e.logprob for e in entries] == pytest.approx([e["logprob"] for e in expected], abs=1e-4)
    assert [[t.token for t in e.top] for e in entries] == [
        [t["token"] for t in e["top_logprobs"]] for e in expected
    ]
    usage = deltas[-1].usage
    assert usage is not None
    assert usage.prompt_tokens == own["usage"]["prompt_tokens"]
    assert usage.completion_tokens == own["usage"]["completion_tokens"]


def test_token_id_prompt_matches_the_server(upstream_server: ServerProcess) -> None:
    ids = [504, 3575, 282, 4649, 314]
    own = httpx.post(
        f"{upstream_server.url}/v1/completions",
        json={"model": LLM, "prompt": ids, "max_tokens": 6, "temperature": 0},
        headers=AUTH,
        timeout=60,
    ).json()
    deltas = run(
        on_server(upstream_server, upstream_model="default"),  # an alias on the upstream
        lambda b: collect(b, completion(ids, max_tokens=6, temperature=0.0)),
    )
    assert texts(deltas) == {0: own["choices"][0]["text"]}


def test_server_refusal_is_invalid_request(upstream_server: ServerProcess) -> None:
    with pytest.raises(InvalidRequestError, match="ask for at most") as caught:
        run(
            on_server(upstream_server, upstream_model=LLM),
            lambda b: collect(b, completion("Hello", max_tokens=1_000_000)),
        )
    assert caught.value.param == "max_tokens"


def test_embeddings_match_the_server(upstream_server: ServerProcess) -> None:
    inputs = ["The cat sat on the mat.", "Paris is the capital of France."]
    own = httpx.post(
        f"{upstream_server.url}/v1/embeddings",
        json={"model": EMBEDDER, "input": inputs},
        headers=AUTH,
        timeout=60,
    ).json()
    result = run(on_server(upstream_server, upstream_model=EMBEDDER), lambda b: b.embed(inputs))
    expected = np.asarray([row["embedding"] for row in own["data"]], dtype=np.float32)
    assert result.vectors.shape == (2, 384)
    np.testing.assert_allclose(result.vectors, expected, atol=1e-6)
    assert result.num_tokens == own["usage"]["prompt_tokens"]
