"""A lean pooled HTTP/1.1 client for the request path: POST a body, stream the answer back.

Why not httpx: in front of an upstream that answers at once, half of the router's CPU went to
httpx/httpcore (a scan of every pooled connection per request, several layers of stream wrappers),
which kept the router's added latency over its 1 ms target. This client does only what a remote
backend needs, on asyncio's own transports with httptools (the C parser uvicorn uses) doing the
parsing and the chunked decoding:

- Connections are kept alive in a LIFO stack, so the warmest one is reused and the idle ones sink
  to the bottom, where they expire (`keepalive_expiry_s`) before the upstream closes them itself.
- A request that fails on a reused connection before any byte of the answer arrived is sent once
  more on a fresh connection: the upstream closed the idle connection as we wrote to it.
- A response read to its end hands its connection back; one closed early closes it, which tells
  the upstream that the client has gone (a streaming upstream then aborts the request).

Timeouts are the caller's (asyncio.timeout around a request) plus `read_timeout_s`, which bounds
each wait for more of the body so that a stalled stream fails instead of hanging.

Proxies are taken from the environment as curl and httpx take them (`HTTP_PROXY`, `HTTPS_PROXY`,
`NO_PROXY`, through the standard library's reading of them): a plain-HTTP upstream is asked through
the proxy in absolute form; an HTTPS upstream through a CONNECT tunnel, with TLS to the upstream
inside it, so the proxy never sees the request.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import time
import urllib.request
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools

from inferline.backends.base import WaitMeter, wait_meter


class HttpError(Exception):
    """The exchange failed below HTTP: no connection, a reset, a malformed answer, a stall."""


class ConnectError(HttpError):
    """The upstream refused the connection or could not be reached."""


class ConnectionClosedError(HttpError):
    """The upstream closed or reset the connection before the answer ended."""


class ReadTimeoutError(HttpError):
    """No more of the answer arrived within `read_timeout_s`."""


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None
    """The Proxy-Authorization header's value, from the proxy URL's user:password."""

    @classmethod
    def from_url(cls, url: str) -> Proxy:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"proxy must be http://[user:password@]host[:port]; got {url!r}")
        authorization = None
        if parts.username is not None:
            user_password = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(user_password.encode()).decode()
        return cls(parts.hostname, parts.port or 80, authorization)


def proxy_from_environment(scheme: str, host: str) -> Proxy | None:
    """The proxy the environment names for this scheme, unless NO_PROXY exempts the host."""
    url = urllib.request.getproxies_environment().get(scheme)
    if not url or urllib.request.proxy_bypass_environment(host):
        return None
    return Proxy.from_url(url)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.sent_at = 0.0
        self.arrived_at = 0.0
        """perf_counter() when the request went out, and when the latest bytes of its answer came in."""
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.chunks: deque[bytes] = deque()
        self.complete = False
        self.received_any = False
        self.error: HttpError | None = None
        self._waiter: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.arrived_at = time.perf_counter()
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(ConnectionClosedError(f"sent a malformed HTTP answer ({error})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            detail = f" ({exc})" if exc else ""
            self._fail(ConnectionClosedError(f"closed the connection{detail}"))

    # ---- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        if not self.parser.should_keep_alive():
            self.close()
        self._wake()

    # ---- the exchange -------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._reset()
        if self.transport is None or self.closed:
            self._fail(ConnectionClosedError("closed the connection"))
            return
        self.transport.write(data)
        self.sent_at = time.perf_counter()

    async def wait(self, timeout_s: float | None) -> None:
        """Until something new arrives (headers, body, the end) or the exchange fails."""
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(timeout_s, self._stalled) if timeout_s is not None else None
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _stalled(self) -> None:
        self._fail(ReadTimeoutError("stopped sending"))
        self.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: HttpError) -> None:
        if self.error is None:
            self.error = error
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def reusable(self) -> bool:
        return self.complete and not self.closed and self.transport is not None


class Response:
    """Status and headers at once; the body read whole (`read`) or as lines (`lines`)."""

    def __init__(self, pool: HttpPool, connection: _Connection, meter: WaitMeter | None) -> None:
        self._pool, self._connection, self._meter = pool, connection, meter
        self.status = connection.status
        self.headers = connection.headers
        self._released = False
        self._waited()

    def _waited(self) -> None:
        if self._meter is not None:
            self._meter.waited(self._connection.sent_at, self._connection.arrived_at)

    async def _next_chunk(self) -> bytes | None:
        connection = self._connection
        while not connection.chunks:
            if connection.complete:
                self._release()
                return None
            await connection.wait(self._pool.read_timeout_s)
            self._waited()
        return connection.chunks.popleft()

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self._next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    async def line_batches(self) -> AsyncIterator[list[str]]:
        """The body split at newlines (SSE framing), without the line ends: each batch holds the whole
        lines that arrived together, so a reader can pass on at once what came at once."""
        pending = b""
        while (chunk := await self._next_chunk()) is not None:
            *whole, pending = (pending + chunk).split(b"\n")
            if whole:
                yield [line.rstrip(b"\r").decode() for line in whole]
        if pending:
            yield [pending.rstrip(b"\r").decode()]

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._connection)

    async def aclose(self) -> None:
        """Hand the connection back when the body was read to its end, else close it."""
        if not self._released:
            if not self._connection.complete:
                self._connection.close()
            self._release()


class HttpPool:
    """Keep-alive connections to one origin (scheme, host, port)."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        max_connections: int = 1024,
        keepalive_expiry_s: float = 4.0,
        read_timeout_s: float | None = None,
        connect_timeout_s: float = 10.0,
        proxy: Proxy | None = None,
    ) -> None:
        """`proxy`: default, the one the environment names for the upstream (see the module's note)."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port][/path]; got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = self.port == (443 if self.ssl else 80)
        authority = self.host if default_port else f"{self.host}:{self.port}"
        self.proxy = proxy if proxy is not None else proxy_from_environment(parts.scheme, self.host)
        fixed = {"host": authority, "user-agent": "inferline", **(headers or {})}
        # Plain HTTP through a proxy: the request line carries the whole URL, and the proxy our credentials.
        self._target_prefix = self.prefix
        if self.proxy is not None and self.ssl is None:
            self._target_prefix = f"http://{authority}{self.prefix}"
            if self.proxy.authorization is not None:
                fixed["proxy-authorization"] = self.proxy.authorization
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self.keepalive_expiry_s = keepalive_expiry_s
        self.read_timeout_s = read_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()

    def url(self, path: str) -> str:
        scheme = "https" if self.ssl else "http"
        return f"{scheme}://{self.host}:{self.port}{self.prefix}/{path}"

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Response:
        """POST `body` (JSON) to base_url/path; returns once the answer's headers have arrived."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode("latin-1")
        head = (
            f"POST {self._target_prefix}/{path} HTTP/1.1\r\n".encode("latin-1")
            + self._fixed_headers
            + extra
            + b"content-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        await self._slots.acquire()
        try:
            return await self._exchange(head + body)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(self, data: bytes) -> Response:
        connection, reused = await self._acquire()
        try:
            return await self._send(connection, data)
        except ConnectionClosedError:
            if not reused or connection.received_any:
                raise
        except BaseException:
            self._discard(connection)
            raise
        # The upstream closed the idle connection as the request went out: one more try, fresh.
        self._discard(connection)
        connection = await self._connect()
        try:
            return await self._send(connection, data)
        except BaseException:
            self._discard(connection)
            raise

    async def _send(self, connection: _Connection, data: bytes) -> Response:
        connection.send(data)
        while not connection.headers_done:
            await connection.wait(None)
        return Response(self, connection, wait_meter.get())

    async def _acquire(self) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_expiry_s:
                return connection, True
            self._discard(connection)
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        via = "" if self.proxy is None else f" through the proxy {self.proxy.host}:{self.proxy.port}"
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self.proxy is None:
                    _, connection = await loop.create_connection(
                        _Connection, self.host, self.port, ssl=self.ssl
                    )
                elif self.ssl is None:
                    _, connection = await loop.create_connection(
                        _Connection, self.proxy.host, self.proxy.port
                    )
                else:
                    tunnel = await self._tunnel(self.proxy)
                    _, connection = await loop.create_connection(
                        _Connection, sock=tunnel, ssl=self.ssl, server_hostname=self.host
                    )
        except TimeoutError:
            raise ConnectError(
                f"did not accept the connection{via} within {self.connect_timeout_s:g} s"
            ) from None
        except OSError as error:
            raise ConnectError(f"refused the connection or could not be reached{via} ({error})") from error
        self._open.add(connection)
        return connection

    async def _tunnel(self, proxy: Proxy) -> socket.socket:
        """A socket to the upstream through the proxy's CONNECT; TLS goes on top of it."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
        family, kind, protocol, _, address = infos[0]
        sock = socket.socket(family, kind, protocol)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            target = f"{self.host}:{self.port}"
            request = f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n"
            if proxy.authorization is not None:
                request += f"proxy-authorization: {proxy.authorization}\r\n"
            await loop.sock_sendall(sock, (request + "\r\n").encode("latin-1"))
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk or len(answer) > 65536:
                    raise OSError("the proxy closed the connection during CONNECT")
                answer += chunk
            status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
            if status_line.split(" ")[1:2] != ["200"]:
                raise OSError(f"the proxy refused CONNECT {target}: {status_line}")
        except BaseException:
            sock.close()
            raise
        return sock

    def release(self, connection: _Connection) -> None:
        """Called once per response: the slot frees, and the connection idles if it can be reused."""
        self._slots.release()
        if not connection.reusable:
            self._discard(connection)
            return
        now = time.monotonic()
        connection.idle_since = now
        self._idle.append(connection)
        # The coldest connection sits at the bottom: expire it here, so an idle pool shrinks too.
        while self._idle and now - self._idle[0].idle_since >= self.keepalive_expiry_s:
            self._discard(self._idle.popleft())

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
