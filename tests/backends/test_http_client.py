"""The pooled HTTP/1.1 client against small loopback servers whose every byte the test controls."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from inferline.backends.base import WaitMeter, wait_meter
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
            batches = [batch async for batch in response.line_batches()]
            await response.aclose()
            await pool.aclose()
        # A line split across reads comes once it is whole; lines that arrived together come together.
        assert [line for batch in batches for line in batch] == [
            "data: one",
            "",
            "data: two",
            "",
            "data: [DONE]",
            "",
        ]
        assert len(batches) <= 3

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
            lines = response.line_batches()
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


class ForwardProxy:
    """An HTTP proxy's handler: forwards absolute-form requests and tunnels CONNECT, recording each
    request line and Proxy-Authorization it got. Serve it with `Server(proxy.serve)`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *headers = head.decode("latin-1").split("\r\n")
        auth = next((h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("proxy-auth")), None)
        self.requests.append((line, auth))
        method, target, _ = line.split(" ")
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            parts = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port)
            kept = [h for h in headers if h and not h.lower().startswith("proxy-")]
            up_writer.write(f"{method} {parts.path} HTTP/1.1\r\n".encode() + "\r\n".join(kept).encode())
            up_writer.write(b"\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def with_credentials(server: Server) -> str:
    """The proxy's URL with user `user` and password `s@cret`."""
    return server.url.removesuffix("/v1").replace("http://", "http://user:s%40cret@")


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_plain_http_goes_through_the_environment_proxy_with_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def work() -> None:
        proxy = ForwardProxy()
        async with Server() as upstream, Server(proxy.serve) as proxy_server:
            monkeypatch.setenv("HTTP_PROXY", with_credentials(proxy_server))
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            pool = HttpPool(upstream.url)
            response = await pool.post("chat/completions", b'{"a": 1}')
            assert await response.read() == b'{"a": 1}'
            await pool.aclose()
            port = upstream.url.split(":")[2].split("/")[0]
            expected = f"POST http://127.0.0.1:{port}/v1/chat/completions HTTP/1.1"
            assert proxy.requests == [(expected, "Basic dXNlcjpzQGNyZXQ=")]  # user:s@cret
            assert b"proxy-authorization" not in upstream.heads[0].lower()

    run(work)


def test_https_goes_through_a_connect_tunnel_and_no_proxy_exempts_hosts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert_file, key_file = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_file, key_file)

    async def work() -> None:
        proxy = ForwardProxy()
        async with Server() as upstream, Server(proxy.serve) as proxy_server:
            upstream.server.close()  # type: ignore[union-attr]  (re-opened with TLS below)
            tls_server = await asyncio.start_server(lambda r, w: upstream.echo(r, w), "127.0.0.1", 0, ssl=tls)
            port = tls_server.sockets[0].getsockname()[1]
            monkeypatch.setenv("HTTPS_PROXY", with_credentials(proxy_server))
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            pool = HttpPool(f"https://127.0.0.1:{port}/v1")
            assert pool.ssl is not None
            pool.ssl.load_verify_locations(cert_file)
            response = await pool.post("embeddings", b"{}")
            assert await response.read() == b"{}"
            await pool.aclose()
            assert proxy.requests == [(f"CONNECT 127.0.0.1:{port} HTTP/1.1", "Basic dXNlcjpzQGNyZXQ=")]
            assert upstream.heads[0].startswith(b"POST /v1/embeddings HTTP/1.1")  # the proxy saw only TLS

            monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
            direct = HttpPool(f"https://127.0.0.1:{port}/v1")
            assert direct.proxy is None
            direct.ssl.load_verify_locations(cert_file)  # type: ignore[union-attr]
            assert await (await direct.post("embeddings", b"[]")).read() == b"[]"
            await direct.aclose()
            assert len(proxy.requests) == 1
            tls_server.close()

    run(work)


def test_a_proxy_that_refuses_connect_is_a_connect_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    async def work() -> None:
        async with Server(refuse) as proxy:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url.removesuffix("/v1"))
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            pool = HttpPool("https://upstream.invalid/v1")
            with pytest.raises(ConnectError, match="through the proxy .* refused CONNECT .* 403"):
                await pool.post("embeddings", b"{}")

    run(work)


def test_the_wait_meter_counts_the_upstreams_time_not_ours() -> None:
    async def slow_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.1)  # the upstream thinks
        writer.write(reply(b"answer"))
        await writer.drain()
        await reader.read()

    async def work() -> None:
        async with Server(slow_upstream) as server:
            pool = HttpPool(server.url)
            meter = WaitMeter()
            wait_meter.set(meter)
            response = await pool.post("completions", b"{}")
            await asyncio.sleep(0.3)  # our own slow work after the answer came: not the upstream's
            assert await response.read() == b"answer"
            await pool.aclose()
            assert meter.measured
            assert 0.1 <= meter.upstream_s < 0.25

    run(work)
