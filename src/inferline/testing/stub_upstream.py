"""A tiny OpenAI-compatible upstream for tests and benchmarks: it answers at once, and fails on demand.

    python -m inferline.testing.stub_upstream --port 0 [--reply TEXT] [--tokens N] [--api-key KEY]

prints `listening on 127.0.0.1:PORT` on one stdout line once the port accepts connections, then
serves `/v1/chat/completions` and `/v1/completions` (streamed or not, usage always included, `n`,
optional logprobs), `/v1/embeddings`, `/v1/models` and `/health`. The reply is fixed: the words of
`--reply` repeated to `--tokens` tokens, one token per word, cut at `max_tokens` (or stretched to it
with `ignore_eos`). Prompt tokens are the prompt's words.

Faults are set while it runs: `POST /stub/faults` with any of Faults' fields (the rest reset to their
defaults; `{}` clears every fault) and `GET /stub/stats` for what it has seen.

This module is the server (routes, faults, the child process); the answers' OpenAI shapes are in
`openai_shapes`, the raw ASGI input and output in `asgi`. A stream with no delay goes out in one write.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import select
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from starlette.types import Receive, Scope, Send

from inferline.asgi import header, lifespan, read_body, respond, send_body, sse, start, wait_or_leave
from inferline.testing.openai_shapes import BadRequestError, Plan, Reply, embeddings, error_body

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
        self.reply = Reply(reply, num_tokens)
        self.model = model
        self.api_key = api_key
        self.embedding_dim = embedding_dim
        self.faults = Faults()
        self.rng = random.Random(0)
        self.stats = StubStats()
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        handler = self._routes.get((scope["method"], scope["path"]))
        if handler is None:
            await respond(send, 404, error_body(f"no route {scope['method']} {scope['path']}", 404))
            return
        await handler(scope, receive, send)

    # ---- generation -------------------------------------------------------------------------

    async def _generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._admit(scope, receive, send)
        if body is None:
            return
        try:
            plan = self.reply.plan(scope["path"] == "/v1/chat/completions", body, self.faults.omit_usage)
        except BadRequestError as error:
            await respond(send, 400, error_body(error.message, 400, error.param))
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
        self.stats.last_traceparent = header(scope, b"traceparent")
        raw = await read_body(receive)
        if self.api_key is not None and header(scope, b"authorization") != f"Bearer {self.api_key}":
            await respond(send, 401, error_body("invalid API key", 401, type_="authentication_error"))
            return None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            await respond(send, 400, error_body("request body must be a JSON object", 400))
            return None
        faults = self.faults
        if faults.delay_s and await wait_or_leave(receive, faults.delay_s):
            self.stats.aborted += 1
            return None
        if faults.error_rate and self.rng.random() < faults.error_rate:
            self.stats.failed += 1
            headers = [] if faults.retry_after_s is None else [(b"retry-after", b"%g" % faults.retry_after_s)]
            message = f"stub upstream: injected error {faults.status}"
            await respond(send, faults.status, error_body(message, faults.status), headers)
            return None
        return body

    async def _answer(self, plan: Plan, receive: Receive, send: Send) -> None:
        faults = self.faults
        wait_s = faults.first_token_delay_s + faults.token_delay_s * plan.num_tokens
        if wait_s and await wait_or_leave(receive, wait_s):
            self.stats.aborted += 1
            return
        await respond(send, 200, self.reply.completion(plan))
        self.stats.completed += 1

    async def _stream(self, plan: Plan, receive: Receive, send: Send) -> None:
        frames = self.reply.stream_frames(plan)
        faults = self.faults
        if not (faults.first_token_delay_s or faults.token_delay_s or faults.fail_after_chunks is not None):
            everything = sse([*frames.preamble, *frames.tokens, *frames.tail, b"[DONE]"])
            await respond(send, 200, everything, content_type=b"text/event-stream")
            self.stats.completed += 1
            return
        await start(send, 200, b"text/event-stream")
        await send_body(send, sse(frames.preamble), more=True)
        if faults.first_token_delay_s and await wait_or_leave(receive, faults.first_token_delay_s):
            self.stats.aborted += 1
            return
        for i, frame in enumerate(frames.tokens):
            if i == faults.fail_after_chunks:
                await self._fail_stream(send)
                return
            if i and faults.token_delay_s and await wait_or_leave(receive, faults.token_delay_s):
                self.stats.aborted += 1
                return
            await send_body(send, sse([frame]), more=True)
        await send_body(send, sse([*frames.tail, b"[DONE]"]), more=False)
        self.stats.completed += 1

    async def _fail_stream(self, send: Send) -> None:
        self.stats.failed += 1
        if self.faults.fail_mode == "drop":
            return  # uvicorn closes a connection whose response was left unfinished
        error = error_body("stub upstream: injected mid-stream failure", self.faults.status)
        await send_body(send, sse([error, b"[DONE]"]), more=False)

    # ---- the rest of the API ----------------------------------------------------------------

    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._admit(scope, receive, send)
        if body is None:
            return
        try:
            payload = embeddings(body, self.embedding_dim)
        except BadRequestError as error:
            await respond(send, 400, error_body(error.message, 400, error.param))
            return
        await respond(send, 200, payload)
        self.stats.completed += 1

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        card = {"id": self.model, "object": "model", "created": 0, "owned_by": "stub"}
        await respond(send, 200, json.dumps({"object": "list", "data": [card]}).encode())

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, b'{"status":"ok"}')

    async def _set_faults(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            faults = Faults.parse(json.loads(await read_body(receive) or b"{}"))
        except ValueError as error:
            await respond(send, 400, error_body(str(error), 400))
            return
        self.faults, self.rng = faults, random.Random(faults.seed)
        await self._get_faults(scope, receive, send)

    async def _get_faults(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, json.dumps(dataclasses.asdict(self.faults)).encode())

    async def _get_stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, json.dumps(dataclasses.asdict(self.stats)).encode())


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
