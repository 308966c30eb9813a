"""A load generator cheap enough to measure a proxy that adds well under a millisecond.

One asyncio Protocol per keep-alive HTTP/1.1 connection, one request in flight on it at a time: the
request is pre-encoded bytes, and the reply is parsed only as far as the status line, the length
(Content-Length or chunked, so SSE streams end at their last byte) and a few named headers. No
per-request task, timer or header dict: on this machine it costs ~0.1 ms of CPU per request, where an
httpx.AsyncClient costs ~5 ms. benchmarks/router_overhead.py, telemetry_overhead.py and
http_overhead.py drive servers with it.

Also here: CPU seconds of other processes from /proc, so a run can say how the cores were shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    """Only the headers named in the connection's `wanted`, lower-case names."""
    body: bytes


class _Connection(asyncio.Protocol):
    def __init__(self, wanted: tuple[bytes, ...]) -> None:
        self.wanted = wanted
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Reply] | None = None
        self._reset()

    def _reset(self) -> None:
        self.head: tuple[int, dict[bytes, bytes], int | None, bool] | None = None
        self.body_start = 0
        self.scan = 0  # chunked: where the next chunk-size line starts
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed mid-response: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        reply = self._parse()
        if reply is not None:
            self._reset()
            self.waiter.set_result(reply)

    def _parse(self) -> Reply | None:
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            self.head = self._parse_head(bytes(self.buffer[:end]))
            self.body_start = self.scan = end + 4
        status, headers, length, chunked = self.head
        if not chunked:
            length = length or 0
            if len(self.buffer) < self.body_start + length:
                return None
            body = bytes(self.buffer[self.body_start : self.body_start + length])
            del self.buffer[: self.body_start + length]
            return Reply(status, headers, body)
        while True:
            eol = self.buffer.find(b"\r\n", self.scan)
            if eol < 0:
                return None
            size = int(self.buffer[self.scan : eol].split(b";")[0], 16)
            if size == 0:
                if len(self.buffer) < eol + 4:  # no trailers: the terminating CRLF follows at once
                    return None
                del self.buffer[: eol + 4]
                return Reply(status, headers, b"".join(self.chunks))
            if len(self.buffer) < eol + 2 + size + 2:
                return None
            self.chunks.append(bytes(self.buffer[eol + 2 : eol + 2 + size]))
            self.scan = eol + 2 + size + 2

    def _parse_head(self, head: bytes) -> tuple[int, dict[bytes, bytes], int | None, bool]:
        lines = head.split(b"\r\n")
        status = int(lines[0][9:12])
        length, chunked, headers = None, False, {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name in self.wanted:
                headers[name] = value.strip()
        return status, headers, length, chunked

    async def request(self, payload: bytes) -> Reply:
        if self.transport is None:
            raise ConnectionError("connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(port: int, wanted: tuple[bytes, ...] = ()) -> _Connection:
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(lambda: _Connection(wanted), "127.0.0.1", port)
    return connection


def post(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A whole POST request as bytes, sent as is on every call."""
    lines = [f"POST {path} HTTP/1.1", "Host: bench", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()] + [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def chat_request(model: str, api_key: str, stream: bool, max_tokens: int = 16) -> bytes:
    """POST /v1/chat/completions with one short user message (streamed with usage when `stream`)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": max_tokens,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return post("/v1/chat/completions", json.dumps(body).encode(), {"Authorization": f"Bearer {api_key}"})


@dataclass
class Sequential:
    latencies_s: list[float] = field(default_factory=list)
    """Successful requests only, in order."""
    headers: list[dict[bytes, bytes]] = field(default_factory=list)
    num_errors: int = 0
    error_examples: list[str] = field(default_factory=list)


async def sequential(
    port: int, payload: bytes, num_requests: int, num_warmup: int, wanted: tuple[bytes, ...] = ()
) -> Sequential:
    """One client, one keep-alive connection, each request sent when the last one has fully arrived."""
    result = Sequential()
    connection = await connect(port, wanted)
    for i in range(num_warmup + num_requests):
        started = time.perf_counter()
        try:
            reply = await connection.request(payload)
        except ConnectionError as error:
            reply = Reply(0, {}, str(error).encode())
            connection = await connect(port, wanted)
        elapsed = time.perf_counter() - started
        if i < num_warmup:
            continue
        if reply.status == 200:
            result.latencies_s.append(elapsed)
            result.headers.append(reply.headers)
        else:
            result.num_errors += 1
            if len(result.error_examples) < 3:
                result.error_examples.append(f"{reply.status}: {reply.body[:200]!r}")
    connection.close()
    return result


@dataclass
class ClosedLoop:
    concurrency: int
    duration_s: float
    num_ok: int = 0
    """Requests answered 200 whose last byte arrived inside the timed window."""
    num_errors: int = 0
    """Non-200 answers and broken connections inside the window, plus requests still unanswered when
    the run was stopped (a grace of `stall_s` after the window)."""
    latencies_s: list[float] = field(default_factory=list)
    error_examples: list[str] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return self.num_ok / self.duration_s

    def record(self, reply: Reply, elapsed_s: float) -> None:
        if reply.status == 200:
            self.num_ok += 1
            self.latencies_s.append(elapsed_s)
        else:
            self.record_error(f"{reply.status}: {reply.body[:200]!r}")

    def record_error(self, message: str) -> None:
        self.num_errors += 1
        if len(self.error_examples) < 3:
            self.error_examples.append(message)


async def closed_loop(
    port: int,
    payload: bytes,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    meter: CpuMeter | None = None,
    stall_s: float = 10,
) -> ClosedLoop:
    """`concurrency` connections, each sending its next request as soon as its last one is answered.
    Only completions inside [warm-up end, warm-up end + duration] count; `meter` runs over that window."""
    result = ClosedLoop(concurrency, duration_s)
    window_start = time.perf_counter() + warmup_s
    window_end = window_start + duration_s
    if meter is not None:
        loop = asyncio.get_running_loop()
        loop.call_later(warmup_s, meter.__enter__)
        loop.call_later(warmup_s + duration_s, meter.__exit__)

    async def worker() -> None:
        connection = await connect(port)
        try:
            while (started := time.perf_counter()) < window_end:
                try:
                    reply = await connection.request(payload)
                except ConnectionError as error:
                    reply = Reply(0, {}, str(error).encode())
                    connection = await connect(port)
                done = time.perf_counter()
                if window_start <= done <= window_end:
                    result.record(reply, done - started)
        finally:
            connection.close()

    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    _, stalled = await asyncio.wait(workers, timeout=warmup_s + duration_s + stall_s)
    for task in stalled:
        task.cancel()
        result.record_error(f"no answer within {stall_s} s after the window closed")
    for task in workers:
        if task.done() and not task.cancelled() and task.exception() is not None:
            result.record_error(f"worker failed: {task.exception()!r}")
    return result


# ---- how the CPU was shared ------------------------------------------------------------------------


def process_tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (threads included)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        todo.extend(children.get(current, []))
    return total


def machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds, wall CPU seconds) summed over all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS, sum(values[:8]) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds each named process used, this process, and the whole machine, over a `with` block."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.used_s: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        busy, total = machine_busy_s()
        readings = {name: process_tree_cpu_s(pid) for name, pid in self.pids.items()}
        return {**readings, "client": time.process_time(), "machine": busy, "machine_total": total}

    def __enter__(self) -> CpuMeter:
        self.start = self._read()
        return self

    def __exit__(self, *_: object) -> None:
        end = self._read()
        self.used_s = {name: end[name] - self.start[name] for name in end}
