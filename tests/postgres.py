"""Real PostgreSQL servers for the tests (db, usage, metering; pgvector for the vector stores), started
on loopback on first use; tests/conftest.py shares these fixtures with every test.

CI installs the `postgresql` package (scripts/install.sh --test) and pgserver (the test extra), so a
server that cannot start fails the tests instead of skipping them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inferline.testing.postgres import PostgresServer, pgvector_bin_dir, started_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server started for this run, with an empty database `inferline_test`."""
    with started_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def pgvector_url() -> Iterator[str]:
    """The `postgresql+psycopg://` URL of a PostgreSQL server with the pgvector extension."""
    with started_postgres(pgvector_bin_dir()) as server:
        yield server.url


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer) -> str:
    """`postgresql+psycopg://` URL of the test database."""
    return postgres.url
