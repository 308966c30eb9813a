"""Real message brokers on loopback for stream tests and benchmarks: redis-server and nats-server (with
JetStream, its store in a temporary folder), each started on a free port and stopped on exit."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from inferline.bench.harness import free_port

START_TIMEOUT_S = 15.0


def _answers(port: int, probe: bytes, expected: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            if probe:
                sock.sendall(probe)
            return sock.recv(64).startswith(expected)
    except OSError:
        return False


@contextmanager
def _server(args: list[str], port: int, probe: bytes, expected: bytes) -> Iterator[None]:
    binary = shutil.which(args[0])
    if binary is None:
        raise RuntimeError(f"{args[0]} is not installed: run scripts/install.sh --test")
    server = subprocess.Popen([binary, *args[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(port, probe, expected):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[0]} did not start on port {port} (exit code {server.poll()})")
            time.sleep(0.02)
        yield
    finally:
        server.terminate()
        server.wait(timeout=10)


@contextmanager
def redis_server() -> Iterator[str]:
    """redis://127.0.0.1:PORT/0 of a fresh server that keeps nothing on disk."""
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with _server(args, port, b"PING\r\n", b"+PONG"):
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def nats_server() -> Iterator[str]:
    """nats://127.0.0.1:PORT of a fresh server with JetStream."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="inferline-nats-") as store:
        args = ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store]
        with _server(args, port, b"", b"INFO"):
            yield f"nats://127.0.0.1:{port}"
