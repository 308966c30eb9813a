"""A throwaway PostgreSQL server on loopback for tests and benchmarks: Debian's binaries, or another
build's (pgserver's, which carries pgvector). PostgreSQL refuses to run as root: as root, the server
runs as `nobody` from a data folder that user owns.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from inferline.bench.harness import free_port

DATABASE = "inferline_test"
UNPRIVILEGED_USER = "nobody"


def pg_binary(name: str, bin_dir: Path | None = None) -> str:
    """In `bin_dir` when given; else on PATH, else in Debian's versioned folder
    (/usr/lib/postgresql/<version>/bin), newest first."""
    if bin_dir is not None:
        return str(bin_dir / name)
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]), reverse=True
    )
    if not candidates:
        raise RuntimeError(
            f"PostgreSQL's {name} is not on PATH nor in /usr/lib/postgresql/*/bin: "
            "run `bash scripts/install.sh --test` (it installs Debian's postgresql package)"
        )
    return candidates[0]


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", UNPRIVILEGED_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], root: Path) -> None:
    done = subprocess.run(
        _as_server_user(command), capture_output=True, text=True, timeout=60, check=False, cwd=root
    )
    if done.returncode != 0:
        log = root / "postgres.log"
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            + (log.read_text() if log.exists() else "")
        )


@dataclass
class PostgresServer:
    """A PostgreSQL server this test run owns; `stop()` and `start()` simulate a lost database."""

    root: Path
    port: int
    bin_dir: Path | None = None
    """Where its binaries are; None: Debian's PostgreSQL."""

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> None:
        # fsync off: a test database need not survive a power cut, and fsyncs cost seconds on CI disks.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F"
        _run(
            [
                pg_binary("pg_ctl", self.bin_dir),
                "-D",
                str(self.root / "data"),
                "-o",
                options,
                "-l",
                str(self.root / "postgres.log"),
                "-w",
                "-t",
                "30",
                "start",
            ],
            self.root,
        )

    def stop(self) -> None:
        command = [
            pg_binary("pg_ctl", self.bin_dir),
            "-D",
            str(self.root / "data"),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]
        _run(command, self.root)


@contextmanager
def started_postgres(bin_dir: Path | None = None) -> Iterator[PostgresServer]:
    """A server with an empty database `inferline_test`, stopped and deleted afterwards."""
    # Not under a private tmp folder: as root that folder is root's alone, and the server runs as nobody.
    root = Path(tempfile.mkdtemp(prefix="inferline-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
    server = PostgresServer(root, free_port(), bin_dir)
    try:
        _run(
            [
                pg_binary("initdb", bin_dir),
                "-D",
                str(root / "data"),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            root,
        )
        server.start()
        try:
            with psycopg.connect(
                f"host=127.0.0.1 port={server.port} user=postgres", autocommit=True
            ) as admin:
                admin.execute(f"CREATE DATABASE {DATABASE}")
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pgvector_bin_dir() -> Path:
    """The binaries of the `pgserver` package: PostgreSQL with pgvector (Debian 12 packages no pgvector)."""
    # Found, not imported: importing pgserver sets up its own server management, which is not used here.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pgserver package is not installed: pip install -e '.[test]'")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
