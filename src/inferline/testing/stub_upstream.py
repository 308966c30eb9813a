"""A tiny OpenAI-compatible upstream for tests and benchmarks: it answers at once, and fails on demand.

    python -m inferline.testing.stub_upstream --port 0 [--reply TEXT] [--tokens N] [--api-key KEY]

prints `listening on 127.0.0.1:PORT` on one stdout line once the port accepts connections, then
serves `/v1/chat/completions` and `/v1/completions` (streamed or not, usage always included, `n`,
optional logprobs), `/v1/embeddings`, `/v1/models` and `/health`. The reply is fixed: the words of
`--reply` repeated to `--tokens` tokens, one token per word, cut at `max_tokens` (or stretched to it
with `ignore_eos`). Prompt tokens are the prompt's words.

Faults are set while it runs: `POST /stub/faults` with any of Faults' fields (the rest reset to their
defaults; `{}` clears every fault) and `GET /stub/stats` for what it has seen.

It is raw ASGI on uvicorn with no validation framework on the hot path: it stands in for a model
server when the router's own overhead is measured in microseconds. Stream frames are built from
pre-encoded pieces, and a stream with no delay goes out in one write.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import select
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from starlette.types import Message, Receive, Scope, Send

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class Faults:
    """What goes wrong, from the next request on."""

    error_rate: float = 0.0
    """Share of /v1 POSTs answered with `status` instead (drawn from a RNG seeded with `seed`)."""
    status: int = 500
    """HTTP status of an injected error, and the `code` of an injected error frame."""
    retry_after_s: float | None = None
    """Sent as Retry-After with injected errors when set."""
    delay_s: float = 0.0
    """Wait before the response headers."""
    first_token_delay_s: float = 0.0
    """Streams: wait after the headers and the role chunk, before the first token."""
    token_delay_s: float = 0.0
    """Streams: wait between tokens (a slow model; also lets a test leave mid-stream)."""
    fail_after_chunks: int | None = None
    """Streams: after this many token chunks, fail as `fail_mode` says."""
    fail_mode: str = "frame"
    """"frame": an error data frame then `data: [DONE]`; "drop": close the connection mid-body."""
    omit_usage: bool = False
    """Streams: send no usage chunk even when include_usage asks for one (a non-conforming upstream)."""
    seed: int = 0

    LIMITS: ClassVar[dict[str, tuple[type, float, float]]] = {
        "error_rate": (float, 0.0, 1.0),
        "status": (int, 400, 599),
        "retry_after_s": (float, 0.0, 3600.0),
        "delay_s": (float, 0.0, 3600.0),
        "first_token_delay_s": (float, 0.0, 3600.0),
        "token_delay_s": (float, 0.0, 60.0),
        "fail_after_chunks": (int, 0, 1 << 30),
    }
    """Type and bounds of the numeric fields; the others must have their default's type."""

    @classmethod
    def parse(cls, body: Any) -> Faults:
        """From a JSON object; ValueError naming the first wrong field."""
        if not isinstance(body, dict):
            raise ValueError("faults must be a JSON object")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, value in body.items():
            if name not in defaults:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(defaults)}")
            if value is None and defaults[name] is None:
                continue
            limits = cls.LIMITS.get(name)
            if limits is None:
                _check_fault(name, value, type(defaults[name]))
            else:
                _check_fault(name, value, limits[0], limits[1], limits[2])
        if body.get("fail_mode", "frame") not in ("frame", "drop"):
            raise ValueError("fail_mode must be 'frame' or 'drop'")
        return cls(**body)


def _check_fault(
    name: str, value: Any, kind: type, low: float | None = None, high: float | None = None
) -> None:
    accepted = (int, float) if kind is float else kind  # JSON writes 1.0 as 1
    if not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"{name} must be of type {kind.__name__}; got {value!r}")
    if low is not None and high is not None and isinstance(value, int | float) and not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}]; got {value!r}")


@dataclass
class StubStats:
    requests: int = 0
    """POSTs to /v1/*."""
    by_path: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    """Answers sent in full."""
    failed: int = 0
    """Injected errors: status answers and broken streams."""
    aborted: int = 0
    """Clients that went away during a wait (the stub only notices while waiting)."""
    in_flight: int = 0
    last_traceparent: str | None = None
    """The W3C `traceparent` header of the last POST to /v1/* (None when it had none)."""


@dataclass
class _Plan:
    """One generation request, decoded."""

    chat: bool
    model: str
    n: int
    num_tokens: int
    finish_reason: str
    num_prompt_tokens: int
    logprobs: int | None
    stream: bool
    include_usage: bool


class StubUpstream:
    """The ASGI app. `reply` is split into words, the tokens; `num_tokens` defaults to their count."""

    def __init__(
        self,
        reply: str = "The quick brown fox jumps over the lazy dog.",
        num_tokens: int | None = None,
        model: str = "stub",
        api_key: str | None = None,
        embedding_dim: int = 8,
    ) -> None:
        words = reply.split() or ["ok"]
        self.num_tokens = num_tokens or len(words)
        self.first_token = words[0]
        self.tokens = [" " + w for w in words]
        self._token_json = [json.dumps(t) for t in self.tokens]
        self._first_json = json.dumps(self.first_token)
        self.model = model
        self.api_key = api_key
        self.embedding_dim = embedding_dim
        self.faults = Faults()
        self.rng = random.Random(0)
        self.stats = StubStats()
        self._num_ids = 0
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self._generate,
            ("POST", "/v1/completions"): self._generate,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("GET", "/v1/models"): self._models,
            ("GET", "/health"): self._health,
            ("POST", "/stub/faults"): self._set_faults,
            ("GET", "/stub/faults"): self._get_faults,
            ("GET", "/stub/stats"): self._get_stats,
        }

    def token(self, i: int) -> str:
        return self.first_token if i == 0 else self.tokens[i % len(self.tokens)]

    def _token_json_at(self, i: int) -> str:
        return self._first_json if i == 0 else self._token_json[i % len(self.tokens)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        handler = self._routes.get((scope["method"], scope["path"]))
        if handler is None:
            await _respond(send, 404, _error(f"no route {scope['method']} {scope['path']}", 404))
            return
        await handler(scope, receive, send)

    # ---- generation -------------------------------------------------------------------------

    async def _generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._admit(scope, receive, send)
        if body is None:
            return
        try:
            plan = self._plan(scope["path"] == "/v1/chat/completions", body)
        except _BadRequestError as error:
            await _respond(send, 400, _error(error.message, 400, error.param))
            return
        self.stats.in_flight += 1
        try:
            if plan.stream:
                await self._stream(plan, receive, send)
            else:
                await self._answer(plan, receive, send)
        finally:
            self.stats.in_flight -= 1

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> dict[str, Any] | None:
        """Count, authenticate, parse, wait delay_s and roll for an injected error; None if answered."""
        self.stats.requests += 1
        self.stats.by_path[scope["path"]] = self.stats.by_path.get(scope["path"], 0) + 1
        self.stats.last_traceparent = _header(scope, b"traceparent")
        raw = await _read_body(receive)
        if self.api_key is not None and _header(scope, b"authorization") != f"Bearer {self.api_key}":
            await _respond(send, 401, _error("invalid API key", 401, type_="authentication_error"))
            return None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            await _respond(send, 400, _error("request body must be a JSON object", 400))
            return None
        faults = self.faults
        if faults.delay_s and await _wait_or_leave(receive, faults.delay_s):
            self.stats.aborted += 1
            return None
        if faults.error_rate and self.rng.random() < faults.error_rate:
            self.stats.failed += 1
            headers = [] if faults.retry_after_s is None else [(b"retry-after", b"%g" % faults.retry_after_s)]
            message = f"stub upstream: injected error {faults.status}"
            await _respond(send, faults.status, _error(message, faults.status), headers)
            return None
        return body

    def _plan(self, chat: bool, body: dict[str, Any]) -> _Plan:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequestError("field 'model' is required", "model")
        n, max_tokens = body.get("n") or 1, body.get("max_tokens", body.get("max_completion_tokens"))
        if not isinstance(n, int) or not 1 <= n <= 128:
            raise _BadRequestError(f"n must be an integer in [1, 128]; got {n!r}", "n")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise _BadRequestError(f"max_tokens must be an integer >= 1; got {max_tokens!r}", "max_tokens")
        num_tokens, finish_reason = self.num_tokens, "stop"
        if max_tokens is not None and (max_tokens < num_tokens or body.get("ignore_eos")):
            num_tokens, finish_reason = max_tokens, "length"
        options = body.get("stream_options") or {}
        return _Plan(
            chat,
            model,
            n,
            num_tokens,
            finish_reason,
            _prompt_words(body, chat),
            _requested_logprobs(body, chat),
            bool(body.get("stream")),
            bool(options.get("include_usage")) and not self.faults.omit_usage,
        )

    async def _answer(self, plan: _Plan, receive: Receive, send: Send) -> None:
        faults = self.faults
        wait_s = faults.first_token_delay_s + faults.token_delay_s * plan.num_tokens
        if wait_s and await _wait_or_leave(receive, wait_s):
            self.stats.aborted += 1
            return
        text = "".join(self.token(i) for i in range(plan.num_tokens))
        choices = []
        for index in range(plan.n):
            choice: dict[str, Any] = {"index": index, "finish_reason": plan.finish_reason, "logprobs": None}
            if plan.chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            if plan.logprobs is not None:
                choice["logprobs"] = self._logprobs(plan, range(plan.num_tokens))
            choices.append(choice)
        response = self._envelope(plan, "chat.completion" if plan.chat else "text_completion")
        response["choices"] = choices
        response["usage"] = _usage(plan.num_prompt_tokens, plan.n * plan.num_tokens)
        await _respond(send, 200, json.dumps(response).encode())
        self.stats.completed += 1

    async def _stream(self, plan: _Plan, receive: Receive, send: Send) -> None:
        head = self._chunk_head(plan)
        role = b'{"index":%d,"delta":{"role":"assistant","content":""}}]}'
        preamble = [head + role % i for i in range(plan.n)] if plan.chat else []
        tokens = [
            self._token_frame(plan, head, i, index) for i in range(plan.num_tokens) for index in range(plan.n)
        ]
        tail = [
            head
            + b'{"index":%d,%s,"logprobs":null,"finish_reason":"%s"}]}'
            % (index, b'"delta":{}' if plan.chat else b'"text":""', plan.finish_reason.encode())
            for index in range(plan.n)
        ]
        if plan.include_usage:
            usage = json.dumps(_usage(plan.num_prompt_tokens, plan.n * plan.num_tokens)).encode()
            tail.append(head[: -len(b',"choices":[')] + b',"choices":[],"usage":%s}' % usage)
        faults = self.faults
        if not (faults.first_token_delay_s or faults.token_delay_s or faults.fail_after_chunks is not None):
            await _respond(
                send, 200, _sse([*preamble, *tokens, *tail, b"[DONE]"]), content_type=b"text/event-stream"
            )
            self.stats.completed += 1
            return
        await _start(send, 200, b"text/event-stream")
        await _body(send, _sse(preamble), more=True)
        if faults.first_token_delay_s and await _wait_or_leave(receive, faults.first_token_delay_s):
            self.stats.aborted += 1
            return
        for i, frame in enumerate(tokens):
            if i == faults.fail_after_chunks:
                await self._fail_stream(send)
                return
            if i and faults.token_delay_s and await _wait_or_leave(receive, faults.token_delay_s):
                self.stats.aborted += 1
                return
            await _body(send, _sse([frame]), more=True)
        await _body(send, _sse([*tail, b"[DONE]"]), more=False)
        self.stats.completed += 1

    async def _fail_stream(self, send: Send) -> None:
        self.stats.failed += 1
        if self.faults.fail_mode == "drop":
            return  # uvicorn closes a connection whose response was left unfinished
        error = _error("stub upstream: injected mid-stream failure", self.faults.status)
        await _body(send, _sse([error, b"[DONE]"]), more=False)

    def _envelope(self, plan: _Plan, object_type: str) -> dict[str, Any]:
        self._num_ids += 1
        prefix = "chatcmpl" if plan.chat else "cmpl"
        return {
            "id": f"{prefix}-stub-{self._num_ids}",
            "object": object_type,
            "created": int(time.time()),
            "model": plan.model,
        }

    def _chunk_head(self, plan: _Plan) -> bytes:
        envelope = self._envelope(plan, "chat.completion.chunk" if plan.chat else "text_completion")
        return json.dumps(envelope, separators=(",", ":")).encode()[:-1] + b',"choices":['

    def _token_frame(self, plan: _Plan, head: bytes, i: int, index: int) -> bytes:
        text = self._token_json_at(i).encode()
        logprobs = b"null" if plan.logprobs is None else json.dumps(self._logprobs(plan, [i])).encode()
        if plan.chat:
            return head + b'{"index":%d,"delta":{"content":%s},"logprobs":%s,"finish_reason":null}]}' % (
                index,
                text,
                logprobs,
            )
        return head + b'{"index":%d,"text":%s,"logprobs":%s,"finish_reason":null}]}' % (index, text, logprobs)

    def _logprobs(self, plan: _Plan, positions: range | list[int]) -> dict[str, Any]:
        """The chosen token at -0.25, then k-1 alternatives `<altJ>` at -(J+1)."""
        k = plan.logprobs or 0
        tops = [
            [(self.token(i), -0.25)] + [(f"<alt{j}>", -(j + 1.0)) for j in range(1, k)] for i in positions
        ]
        tokens = [self.token(i) for i in positions]
        if plan.chat:
            return {
                "content": [
                    {
                        "token": t,
                        "logprob": -0.25,
                        "bytes": list(t.encode()),
                        "top_logprobs": [
                            {"token": a, "logprob": lp, "bytes": list(a.encode())} for a, lp in top[:k]
                        ],
                    }
                    for t, top in zip(tokens, tops, strict=True)
                ]
            }
        offsets = [sum(len(self.token(j)) for j in range(i)) for i in positions]
        return {
            "tokens": tokens,
            "token_logprobs": [-0.25] * len(tokens),
            "top_logprobs": [dict(top[:k]) for top in tops],
            "text_offset": offsets,
        }

    # ---- the rest of the API ----------------------------------------------------------------

    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._admit(scope, receive, send)
        if body is None:
            return
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            await _respond(
                send, 400, _error("input must be a non-empty string or list of them", 400, "input")
            )
            return
        data = [
            {"object": "embedding", "index": i, "embedding": _embedding(text, self.embedding_dim)}
            for i, text in enumerate(texts)
        ]
        num_tokens = sum(len(t.split()) for t in texts)
        usage = {"prompt_tokens": num_tokens, "total_tokens": num_tokens}
        payload = {"object": "list", "data": data, "model": body.get("model"), "usage": usage}
        await _respond(send, 200, json.dumps(payload).encode())
        self.stats.completed += 1

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        card = {"id": self.model, "object": "model", "created": 0, "owned_by": "stub"}
        await _respond(send, 200, json.dumps({"object": "list", "data": [card]}).encode())

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, b'{"status":"ok"}')

    async def _set_faults(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            faults = Faults.parse(json.loads(await _read_body(receive) or b"{}"))
        except ValueError as error:
            await _respond(send, 400, _error(str(error), 400))
            return
        self.faults, self.rng = faults, random.Random(faults.seed)
        await self._get_faults(scope, receive, send)

    async def _get_faults(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, json.dumps(dataclasses.asdict(self.faults)).encode())

    async def _get_stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _respond(send, 200, json.dumps(dataclasses.asdict(self.stats)).encode())


class _BadRequestError(Exception):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def _prompt_words(body: dict[str, Any], chat: bool) -> int:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequestError("messages must be a non-empty list", "messages")
        return sum(_words(m.get("content")) for m in messages if isinstance(m, dict))
    prompt = body.get("prompt")
    if not prompt:
        raise _BadRequestError("prompt must be a non-empty string or token list", "prompt")
    return _words(prompt)


def _words(content: Any) -> int:
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):  # token ids, several prompts, or content parts
        return sum(
            1 if isinstance(c, int) else _words(c.get("text") if isinstance(c, dict) else c) for c in content
        )
    return 0


def _requested_logprobs(body: dict[str, Any], chat: bool) -> int | None:
    if chat:
        return int(body.get("top_logprobs") or 0) if body.get("logprobs") else None
    value = body.get("logprobs")
    return None if value is None else int(value)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _embedding(text: str, dim: int) -> list[float]:
    """Deterministic across processes (crc32, not hash()), different per text."""
    seed = zlib.crc32(text.encode())
    return [((seed * (j + 1) * 2654435761) % 2001) / 1000 - 1.0 for j in range(dim)]


def _error(message: str, status: int, param: str | None = None, type_: str | None = None) -> bytes:
    kind = type_ or ("invalid_request_error" if status < 500 else "server_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": status}}).encode()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _sse(frames: list[bytes]) -> bytes:
    return b"".join(b"data: " + frame + b"\n\n" for frame in frames)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _wait_or_leave(receive: Receive, seconds: float) -> bool:
    """Sleep `seconds` unless the client disconnects first (the body is read, so the next message
    can only be http.disconnect); True when it did."""
    try:
        message: Message = await asyncio.wait_for(receive(), seconds)
    except TimeoutError:
        return False
    return message["type"] == "http.disconnect"


async def _start(
    send: Send, status: int, content_type: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), *(headers or [])],
        }
    )


async def _body(send: Send, data: bytes, more: bool) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def _respond(
    send: Send,
    status: int,
    payload: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"application/json",
) -> None:
    length = [(b"content-length", b"%d" % len(payload))]
    await _start(send, status, content_type, [*length, *(headers or [])])
    await _body(send, payload, more=False)


# ---- the process ----------------------------------------------------------------------------------


@dataclass
class StubProcess:
    """A stub upstream in a child process; `url` is its root (the OpenAI API is under `url/v1`)."""

    process: subprocess.Popen[str]
    url: str

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        import httpx

        response = httpx.post(f"{self.url}/stub/faults", json=faults, timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def stats(self) -> dict[str, Any]:
        import httpx

        return dict(httpx.get(f"{self.url}/stub/stats", timeout=5).json())

    def stop(self, timeout_s: float = 10) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.wait()


def start_stub(*args: str, log_path: Path | None = None, ready_timeout_s: float = 15) -> StubProcess:
    """Start `python -m inferline.testing.stub_upstream --port 0 ARGS` and wait for its port line.
    Its log (stderr) goes to `log_path`, or nowhere."""
    command = [sys.executable, "-m", "inferline.testing.stub_upstream", "--port", "0", *args]
    log = log_path.open("w") if log_path is not None else subprocess.DEVNULL
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    finally:
        if log_path is not None:
            log.close()  # type: ignore[union-attr]
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], ready_timeout_s)
    line = process.stdout.readline() if ready else ""
    if not line.startswith("listening on "):
        process.kill()
        process.wait()
        raise RuntimeError(f"stub upstream did not start in {ready_timeout_s} s (said {line!r}): {command}")
    return StubProcess(process, f"http://{line.removeprefix('listening on ').strip()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--reply", default="The quick brown fox jumps over the lazy dog.")
    parser.add_argument(
        "--tokens", type=int, default=None, help="completion tokens (default: the reply's words)"
    )
    parser.add_argument("--model", default="stub", help="the id /v1/models lists (any model name is served)")
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1")
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    import uvicorn

    app = StubUpstream(args.reply, args.tokens, args.model, args.api_key, args.embedding_dim)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)  # connections made before uvicorn runs wait in the backlog, so the port is ready now
    print(f"listening on {args.host}:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
