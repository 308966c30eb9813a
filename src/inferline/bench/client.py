"""One streamed OpenAI-compatible request → one RequestRecord, over one shared httpx.AsyncClient.

Every request asks for `stream_options: {include_usage: true}` so token counts come from the server;
servers that send no usage fall back to counting text chunks. A request never raises: connection
failures, HTTP errors, error frames mid-stream and streams cut short all become the record's `error`,
in words, so they are counted and reported rather than hidden.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx

from inferline.bench.record import RequestRecord
from inferline.bench.workload import BenchRequest, Endpoint
from inferline.errors import InferlineError


def api_base(base_url: str) -> str:
    """`http://host:8000` or `http://host:8000/v1` → `http://host:8000/v1`."""
    base = base_url.rstrip("/")
    return base if base.endswith("/v1") else f"{base}/v1"


def server_label(base_url: str) -> str:
    return urlsplit(base_url).netloc or base_url


@dataclass
class _Stream:
    """What has arrived so far on one SSE stream."""

    token_times_s: list[float] = field(default_factory=list)
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    done: bool = False
    error: str | None = None

    def feed(self, line: str, now: float) -> None:
        if not line.startswith("data:"):
            return  # blank separators, `: keep-alive` comments, `event:` lines
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            self.done = True
            return
        try:
            payload = json.loads(data)
        except json.JSONDecodeError:
            self.error = f"unreadable stream chunk: {data[:120]!r}"
            return
        if not isinstance(payload, dict):
            self.error = f"unexpected stream chunk: {data[:120]!r}"
        elif "error" in payload:
            self.error = f"error in stream: {error_message(payload)}"
        else:
            self._chunk(payload, now)

    def _chunk(self, payload: dict[str, Any], now: float) -> None:
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.output_tokens = usage.get("completion_tokens", self.output_tokens)
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            text = choice.get("text") or delta.get("content") or delta.get("reasoning_content")
            if text:
                self.token_times_s.append(now)
                return


def error_message(body: Any) -> str:
    """The message of OpenAI's `{"error": {"message"}}`, `{"error": "..."}` or FastAPI's `{"detail"}`."""
    if isinstance(body, dict):
        error = body.get("error", body.get("detail"))
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if error is not None:
            return str(error)
    return str(body)[:200]


def _http_error(response: httpx.Response) -> str:
    try:
        message = error_message(response.json())
    except (json.JSONDecodeError, UnicodeDecodeError):
        message = response.text[:200].strip() or response.reason_phrase
    return f"HTTP {response.status_code} from {response.request.url.path}: {message}"


class StreamingClient:
    """Sends benchmark requests to one server and model; use as `async with StreamingClient(...)`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        endpoint: Endpoint,
        *,
        api_key: str | None = None,
        ignore_eos: bool = False,
        temperature: float = 0.0,
        timeout_s: float = 300.0,
        max_connections: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = api_base(base_url)
        self.url = self.base_url + ("/chat/completions" if endpoint == "chat" else "/completions")
        self.model, self.endpoint = model, endpoint
        self.ignore_eos, self.temperature, self.timeout_s = ignore_eos, temperature, timeout_s
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # Keep-alive for every connection a worker may hold, so no request pays for a new handshake.
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(
            headers=headers,
            limits=limits,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,  # tests hand in an httpx.MockTransport
        )

    async def __aenter__(self) -> StreamingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    def body(self, request: BenchRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": self.temperature,
        }
        if self.endpoint == "chat":
            body["messages"] = request.chat_messages()
        else:
            body["prompt"] = request.prompt
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if self.ignore_eos:
            body["ignore_eos"] = True  # an extension: inferline, vLLM and llama.cpp accept it
        return body

    async def list_models(self) -> list[str]:
        """The server's model ids ([] if it will not say); InferlineError when nothing answers at the URL."""
        try:
            response = await self._http.get(f"{self.base_url}/models", timeout=min(self.timeout_s, 10.0))
        except httpx.TransportError as error:
            raise_unreachable(self.base_url, error)
        if response.status_code != 200:
            return []
        try:
            return [str(m.get("id")) for m in response.json().get("data", [])]
        except (json.JSONDecodeError, AttributeError):
            return []

    async def send(self, request: BenchRequest) -> RequestRecord:
        stream = _Stream()
        send_s = time.perf_counter()
        try:
            async with self._http.stream("POST", self.url, json=self.body(request)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    stream.error = _http_error(response)
                else:
                    async for line in response.aiter_lines():
                        stream.feed(line, time.perf_counter())
                        if stream.done or stream.error:
                            break
                    if not (stream.done or stream.error):
                        kind = response.headers.get("content-type", "no content type")
                        stream.error = f"stream ended before `data: [DONE]` (response was {kind})"
        except httpx.TimeoutException:
            stream.error = f"no answer from the server for {self.timeout_s:g} s (--timeout)"
        except httpx.TransportError as error:
            stream.error = f"{type(error).__name__}: {error or 'connection failed'}"
        end_s = time.perf_counter()
        output_tokens = (
            stream.output_tokens if stream.output_tokens is not None else len(stream.token_times_s)
        )
        return RequestRecord(
            send_s, end_s, stream.token_times_s, output_tokens, stream.prompt_tokens, stream.error
        )


def raise_unreachable(base_url: str, error: httpx.TransportError) -> NoReturn:
    reason = str(error) or type(error).__name__
    raise InferlineError(
        f"cannot reach {base_url} ({reason}): is the server running, and are --base-url's host and "
        "port right?"
    ) from None
