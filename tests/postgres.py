"""A real PostgreSQL server for the database's tests (db, usage, metering), started from Debian's binaries on
loopback; tests/conftest.py shares its fixtures with every test.

CI installs the `postgresql` package (scripts/install.sh --test), so a server that cannot start fails
the tests instead of skipping them. PostgreSQL refuses to run as root: as root, the server runs as
`nobody` from a data folder that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.server.conftest import free_port

DATABASE = "inferline_test"
UNPRIVILEGED_USER = "nobody"


def pg_binary(name: str) -> str:
    """On PATH, else in Debian's versioned folder (/usr/lib/postgresql/<version>/bin), newest first."""
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

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> None:
        # fsync off: a test database need not survive a power cut, and fsyncs cost seconds on CI disks.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F"
        _run([pg_binary("pg_ctl"), "-D", str(self.root / "data"), "-o", options,
              "-l", str(self.root / "postgres.log"), "-w", "-t", "30", "start"], self.root)  # fmt: skip

    def stop(self) -> None:
        _run([pg_binary("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"], self.root)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server started for this run, with an empty database `inferline_test`."""
    # Not under pytest's tmp folder: as root that folder is private to root, and the server runs as nobody.
    root = Path(tempfile.mkdtemp(prefix="inferline-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(UNPRIVILEGED_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
    server = PostgresServer(root, free_port())
    _run([pg_binary("initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "trust", "--no-locale",
          "-E", "UTF8", "--no-sync"], root)  # fmt: skip
    server.start()
    try:
        with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres", autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {DATABASE}")
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer) -> str:
    """`postgresql+psycopg://` URL of the test database."""
    return postgres.url
