"""inferline's one database: SQLite by default, PostgreSQL by URL, opened and given its tables the same way
by every store in it (usage, the registry's catalog, the fleet's telemetry dataset, rollouts).

Design note: several processes create the same tables at once (server replicas starting together, the CLI
beside a running server), so schema creation must be idempotent and must not race. SQLAlchemy's
`create_all` looks, then creates: two creators both find no table and the second fails. `IF NOT EXISTS` is
not enough either: on PostgreSQL two concurrent `CREATE TABLE IF NOT EXISTS` can both pass the check, and
the second fails on the catalog's unique index (pg_type_typname_nsp_index). So creators take turns: on
PostgreSQL under a transaction-scoped advisory lock, on SQLite inside a `BEGIN IMMEDIATE` transaction (the
file's write lock, waited for like any write), and whoever comes second finds everything there.

A URL may carry a password: errors and logs show a URL only through `display_url`, and a driver's message
only through `describe_error`, which hide it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event, func, inspect, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.schema import CreateIndex, CreateTable

from inferline.errors import InvalidRequestError

DATABASE_FILE = "inferline.db"
SUPPORTED_URLS = "SQLite (sqlite:///FILE) or PostgreSQL (postgresql+psycopg://USER@HOST/DB)"
SQLITE_BUSY_TIMEOUT_S = 5.0
"""How long a SQLite connection waits for another's write lock: the sqlite3 module's default timeout."""
SCHEMA_LOCK_KEY = int.from_bytes(b"inferlin")
"""PostgreSQL advisory lock id held while creating tables; any fixed 64-bit number no one else uses."""


def database_url(configured: str | None, home: Path) -> str:
    """The configured URL, else the SQLite file inferline.db in `home` ($INFERLINE_HOME)."""
    return configured if configured is not None else f"sqlite:///{home / DATABASE_FILE}"


def open_engine(url: str, setting: str) -> Engine:
    """An engine on `url`: SQLite in WAL mode, or PostgreSQL through psycopg, the driver inferline installs.
    Nothing connects yet. `setting` (the config field or flag the URL came from) is named in errors."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise InvalidRequestError(
            f"{setting} is not a database URL: give {SUPPORTED_URLS}", setting
        ) from None
    dialect = parsed.get_backend_name()
    if dialect not in ("sqlite", "postgresql"):
        raise InvalidRequestError(f"{setting} {display_url(parsed)!r}: use {SUPPORTED_URLS}", setting)
    if parsed.drivername == "postgresql":  # whatever SQLAlchemy's default driver is
        parsed = parsed.set(drivername="postgresql+psycopg")
    # Connections are checked before use, so a restarted PostgreSQL costs one failed call at most.
    connect_args = {"connect_timeout": 5} if dialect == "postgresql" else {}
    try:
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, ImportError):  # an unknown or uninstalled driver (postgresql+psycopg2://)
        raise InvalidRequestError(
            f"{setting} {display_url(parsed)!r}: the driver {parsed.drivername} is not available: use "
            f"{SUPPORTED_URLS}",
            setting,
        ) from None
    if dialect == "sqlite":
        event.listen(engine, "connect", _enable_wal)
    return engine


def _enable_wal(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    """WAL mode lets writers (the server, the registry) and readers (the CLI) share the file. The file keeps
    the mode once set, but setting it needs the file to itself, and SQLite answers "locked" at once rather
    than wait (its busy timeout does not cover the switch): a new file opened by several processes together
    is retried for as long as a write would wait."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL").close()
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def create_schema(engine: Engine, metadata: MetaData) -> None:
    """Create `metadata`'s tables and indexes that do not exist, and give tables an older inferline created
    the columns added since (which must be nullable); a no-op when everything is there. Safe while other
    threads or processes create the same schema. The folder of a SQLite file is created too."""
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    with engine.begin() as connection:
        _take_schema_turn(connection)
        for table in metadata.sorted_tables:
            connection.execute(CreateTable(table, if_not_exists=True))
            for index in table.indexes:
                connection.execute(CreateIndex(index, if_not_exists=True))
        _add_new_columns(connection, metadata)


def _take_schema_turn(connection: Connection) -> None:
    """Wait until no other creator is inside its schema transaction; the turn ends at commit."""
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
    else:
        # pysqlite opens no transaction before DDL on its own; this one holds the write lock until commit.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _add_new_columns(connection: Connection, metadata: MetaData) -> None:
    inspector = inspect(connection)
    quote = connection.dialect.identifier_preparer
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                kind = column.type.compile(connection.dialect)
                added = f"{quote.format_column(column)} {kind}"
                connection.execute(text(f"ALTER TABLE {quote.format_table(table)} ADD COLUMN {added}"))


def display_url(url: URL) -> str:
    """The URL as errors and logs show it: the password, if any, as ***."""
    return url.render_as_string(hide_password=True)


def describe_error(error: BaseException, url: URL) -> str:
    """The driver's own message on one line (SQLAlchemy's wrapper adds the statement and its parameters),
    with the password of `url` hidden should the driver quote it."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    message = f"{type(cause).__name__}: {lines[0] if lines else ''}"
    return message.replace(url.password, "***") if url.password else message
