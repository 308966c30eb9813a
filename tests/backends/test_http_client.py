"""The pooled HTTP/1.1 client against small loopback servers whose every byte the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from inferline.backends.http_client import (
    ConnectError,
    ConnectionClosedError,
    HttpPool,
    ReadTimeoutError,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one request, by its content-length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head, await reader.readexactly(length)


def reply(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 " + status.encode() + b"\r\ncontent-length: %d\r\n" % len(body) + extra + b"\r\n" + body


class Server:
    """Counts connections and requests; `handler` answers each connection (by default: echo the body
    back on a kept-alive connection, recording each request's head)."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler or self.echo
        self.connections = 0
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            self.heads.append(head)
            writer.write(reply(body))
            await writer.drain()


def run(work: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(work(), 10))


def test_keeps_one_connection_alive_across_requests_and_sends_the_headers() -> None:
    async def work() -> None:
        async with Server() as server:
            pool = HttpPool(server.url, headers={"authorization": "Bearer k"})
            for i in range(5):
                response = await pool.post("chat/completions", b'{"i": %d}' % i, {"x-request-id": f"r{i}"})
                assert response.status == 200
                assert await response.read() == b'{"i": %d}' % i
                await response.aclose()
            await pool.aclose()
        assert server.connections == 1
        head = server.heads[4].decode()
        assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
        for line in ("authorization: Bearer k", "x-request-id: r4", "content-type: application/json"):
            assert line in head

    run(work)


def test_chunked_body_splits_into_lines_across_chunk_borders() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b"data: one\n\nda", b"ta: tw", b"o\r\n\r\ndata: [DONE]\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def work() -> None:
        async with Server(handler) as server:
            pool = HttpPool(server.url)
            response = await pool.post("completions", b"{}")
            lines = [line async for line in response.lines()]
            await response.aclose()
            await pool.aclose()
        assert lines == ["data: one", "", "data: two", "", "data: [DONE]", ""]

    run(work)


def test_stale_idle_connection_is_replaced_without_the_caller_noticing() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await read_request(reader)
        writer.write(reply(body, extra=b"connection: keep-alive\r\n"))
        await writer.drain()
        # Closes the kept-alive connection right after answering, as a server's idle timeout does.

    async def work() -> None:
        async with Server(handler) as server:
            pool = HttpPool(server.url)
            for i in range(3):
                response = await pool.post("x", b"%d" % i)
                assert await response.read() == b"%d" % i
                await response.aclose()
                await asyncio.sleep(0.05)
            await pool.aclose()
            assert server.connections == 3

    run(work)


def test_idle_connections_expire() -> None:
    async def work() -> None:
        async with Server() as server:
            pool = HttpPool(server.url, keepalive_expiry_s=0.1)
            for _ in range(2):
                response = await pool.post("x", b"{}")
                await response.read()
                await response.aclose()
                await asyncio.sleep(0.2)
            await pool.aclose()
        assert server.connections == 2

    run(work)


def test_closing_a_response_early_closes_its_connection() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        if await reader.read() == b"":
            closed.set()

    async def work() -> None:
        async with Server(handler) as server:
            pool = HttpPool(server.url)
            response = await pool.post("x", b"{}")
            lines = response.lines()
            await asyncio.sleep(0.05)
            await response.aclose()
            await lines.aclose()
            await asyncio.wait_for(closed.wait(), 2)
            await pool.aclose()

    run(work)


def test_refused_connection_and_mid_body_reset_and_stall_are_told_apart() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(5)

    async def work() -> None:
        async with Server(cut) as server:
            url = server.url
            response = await HttpPool(url).post("x", b"{}")
            with pytest.raises(ConnectionClosedError, match="closed the connection"):
                await response.read()
        with pytest.raises(ConnectError, match="refused the connection"):
            await HttpPool(url).post("x", b"{}")
        async with Server(stall) as server:
            response = await HttpPool(server.url, read_timeout_s=0.2).post("x", b"{}")
            with pytest.raises(ReadTimeoutError, match="stopped sending"):
                await response.read()

    run(work)


def test_connection_cap_queues_the_next_request_until_one_frees() -> None:
    async def work() -> None:
        async with Server() as server:
            pool = HttpPool(server.url, max_connections=1)
            first = await pool.post("x", b"1")
            second = asyncio.create_task(pool.post("x", b"2"))
            await asyncio.sleep(0.05)
            assert not second.done()
            assert await first.read() == b"1"
            await first.aclose()
            response = await asyncio.wait_for(second, 2)
            assert await response.read() == b"2"
            await response.aclose()
            await pool.aclose()
        assert server.connections == 1

    run(work)
