"""The streaming client against canned server answers (httpx.MockTransport): what counts, what fails."""

import asyncio
import json
from typing import Any

import httpx
import pytest

from inferline.bench.client import StreamingClient, api_base
from inferline.bench.record import RequestRecord
from inferline.bench.workload import BenchRequest
from inferline.errors import InferlineError


def sse(*payloads: dict[str, Any] | str) -> bytes:
    return b"".join(f"data: {p if isinstance(p, str) else json.dumps(p)}\n\n".encode() for p in payloads)


def completion_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


def send(
    body: bytes, status: int = 200, endpoint: str = "completions", **options: Any
) -> tuple[RequestRecord, list[dict[str, Any]]]:
    """One request through a client whose server answers `body`; returns the record and the bodies sent."""
    sent: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(status, content=body, headers={"content-type": "text/event-stream"})

    async def main() -> RequestRecord:
        transport = httpx.MockTransport(answer)
        async with StreamingClient(
            "http://test:8000",
            "m",
            endpoint,
            transport=transport,
            **options,  # type: ignore[arg-type]
        ) as client:
            return await client.send(BenchRequest("hello world", None, 3))

    return asyncio.run(main()), sent


def test_completions_stream_counts_text_chunks_and_takes_usage() -> None:
    body = sse(
        completion_chunk("a"), completion_chunk("b"), completion_chunk("", "length"), usage(7, 3), "[DONE]"
    )
    record, sent = send(body, ignore_eos=True)
    assert record.ok, record.error
    assert (record.output_tokens, record.prompt_tokens) == (3, 7)  # usage, not the 2 text chunks
    assert len(record.token_times_s) == 2  # the empty finishing chunk is not a token
    assert record.send_s <= record.token_times_s[0] <= record.end_s
    assert sent == [
        {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.0,
            "prompt": "hello world",
            "max_tokens": 3,
            "ignore_eos": True,
        }
    ]


def test_chat_role_chunk_is_not_the_first_token_and_no_usage_falls_back_to_chunks() -> None:
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    content = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
    record, sent = send(sse(role, content, content, "[DONE]"), endpoint="chat")
    assert record.ok, record.error
    assert (record.output_tokens, record.prompt_tokens, len(record.token_times_s)) == (2, None, 2)
    assert sent[0]["messages"] == [{"role": "user", "content": "hello world"}]
    assert "ignore_eos" not in sent[0]


def test_http_error_is_recorded_with_the_servers_message() -> None:
    body = json.dumps({"error": {"message": "model 'm' does not exist", "code": 404}}).encode()
    record, _ = send(body, status=404)
    assert record.error == "HTTP 404 from /v1/completions: model 'm' does not exist"
    assert not record.ok
    assert record.output_tokens == 0


def test_error_frame_mid_stream_fails_the_request() -> None:
    record, _ = send(sse(completion_chunk("a"), {"error": {"message": "engine stopped"}}, "[DONE]"))
    assert record.error == "error in stream: engine stopped"


def test_stream_without_done_fails_the_request() -> None:
    record, _ = send(sse(completion_chunk("a")))
    assert record.error is not None
    assert "[DONE]" in record.error


def test_garbage_chunk_fails_the_request() -> None:
    record, _ = send(b"data: {not json\n\n")
    assert record.error is not None
    assert "unreadable stream chunk" in record.error


def test_base_url_with_or_without_v1() -> None:
    assert api_base("http://h:1") == api_base("http://h:1/v1/") == "http://h:1/v1"


def test_unreachable_server_is_a_clear_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def main() -> None:
        async with StreamingClient(
            "http://x:1", "m", "completions", transport=httpx.MockTransport(refuse)
        ) as c:
            record = await c.send(BenchRequest("p", None, 1))
            assert record.error == "ConnectError: connection refused"
            await c.list_models()

    with pytest.raises(InferlineError, match=r"cannot reach http://x:1/v1 \(connection refused\)"):
        asyncio.run(main())
