"""The usage database: one row per finished request, and the showback summaries read from it.

Design note: SQLAlchemy Core over one `usage_records` table, the same on SQLite (the default, a file in
$INFERLINE_HOME) and PostgreSQL. Summaries aggregate in the database; the one thing the two dialects do
not share is a percentile aggregate, so PostgreSQL uses its own `percentile_cont` and SQLite gets an
aggregate of the same definition (linear interpolation between the two nearest ranks) registered on each
connection. SQLite runs in WAL mode so `inferline usage` can read while the server writes.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    case,
    create_engine,
    desc,
    event,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.schema import CreateIndex, CreateTable

from inferline.errors import InferlineError, InvalidRequestError
from inferline.types import UsageRecord

GroupBy = Literal["tenant", "route", "deployment", "model"]
GROUP_BY: tuple[str, ...] = get_args(GroupBy)
P95 = 0.95
DATABASE_FILE = "inferline.db"

metadata = MetaData()

usage_records = Table(
    "usage_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("route", String(256), nullable=False),
    Column("deployment", String(128), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("ttft_s", Double, nullable=True),
    Column("latency_s", Double, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("cost", Double, nullable=False),
    Column("policy", String(32), nullable=False),
    Column("cascade_stage", Integer, nullable=True),
    Column("degraded", Boolean, nullable=False),
    Column("error_type", String(128), nullable=False),
    Column("finished_at", Double, nullable=False),
    # Columns added after the first release are nullable: ensure_schema adds them to older tables.
    Column("mean_logprob", Double, nullable=True),
    # Every summary filters on a time window, and a tenant's own view on the tenant too.
    Index("ix_usage_records_finished_at", "finished_at"),
    Index("ix_usage_records_tenant_finished_at", "tenant", "finished_at"),
)

_RECORD_FIELDS = tuple(c.name for c in usage_records.columns if c.name != "id")

_GROUP_COLUMNS: dict[str, tuple[Column[Any], ...]] = {
    "tenant": (usage_records.c.tenant,),
    "route": (usage_records.c.route,),
    "deployment": (usage_records.c.deployment,),
    "model": (usage_records.c.deployment, usage_records.c.model_version),
}


class UsageDatabaseError(InferlineError):
    """The usage database cannot be read: unreachable, unreadable, or not a database."""


@dataclass(frozen=True)
class UsageRow:
    """One group of a usage summary (a row of `inferline usage`, an item of GET /v1/usage)."""

    key: str
    """The tenant, route, deployment or "deployment@version"; "" for requests refused before routing."""
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    p95_latency_ms: float | None
    p95_ttft_ms: float | None
    """None when no request of the group produced a first token."""
    errors: int
    """Requests whose outcome is "error"."""
    rejected: int
    """Requests refused by admission, quotas or validation (outcome "rejected")."""


def database_url(configured: str | None, home: Path) -> str:
    """`telemetry.database_url`, else the SQLite file inferline.db in `home` ($INFERLINE_HOME)."""
    return configured if configured is not None else f"sqlite:///{home / DATABASE_FILE}"


def parse_group_by(text: str) -> GroupBy:
    if text not in GROUP_BY:
        raise InvalidRequestError(f"by={text!r} is not a grouping: use one of {', '.join(GROUP_BY)}", "by")
    return text  # type: ignore[return-value]  # checked against the Literal's members just above


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([mhd])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """Unix seconds from `30m`, `24h`, `7d` (that long before `now`) or an ISO date or datetime (UTC
    unless it carries an offset)."""
    match = _DURATION.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequestError(
            f"since={text!r} is neither a duration (30m, 24h, 7d) nor an ISO date (2025-01-31, "
            "2025-01-31T12:00:00Z)",
            "since",
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def percentile_cont(values: list[float], fraction: float) -> float | None:
    """PostgreSQL's percentile_cont: linear interpolation at rank fraction * (n - 1); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


class _P95Aggregate:
    """SQLite aggregate `inferline_p95(x)`; NULLs are skipped as percentile_cont skips them."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def step(self, value: float | None) -> None:
        if value is not None:
            self.values.append(value)

    def finalize(self) -> float | None:
        return percentile_cont(self.values, P95)


def _enable_wal(dbapi_connection: Any, _record: Any) -> None:
    # Writers (the server, the registry) and readers (the CLI) share the file.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def open_engine(url: str, setting: str = "telemetry.database_url") -> Engine:
    """An engine on inferline's one database (usage, registry, rollouts): SQLite in WAL mode, or
    PostgreSQL through psycopg, the driver inferline installs. `setting` is named in errors."""
    expected = "SQLite (sqlite:///FILE) or PostgreSQL (postgresql+psycopg://USER@HOST/DB)"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidRequestError(f"{setting} is not a database URL: give {expected}", setting) from None
    dialect = parsed.get_backend_name()
    if dialect not in ("sqlite", "postgresql"):
        raise InvalidRequestError(f"{setting} {parsed.render_as_string()!r}: use {expected}", setting)
    if parsed.drivername == "postgresql":  # whatever SQLAlchemy's default driver is
        parsed = parsed.set(drivername="postgresql+psycopg")
    # Connections are checked before use, so a restarted PostgreSQL costs one failed call at most.
    connect_args = {"connect_timeout": 5} if dialect == "postgresql" else {}
    engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    if dialect == "sqlite":
        event.listen(engine, "connect", _enable_wal)
    return engine


def _add_p95(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.create_aggregate("inferline_p95", 1, _P95Aggregate)


class UsageStore:
    """`insert_many` and `summary` over one database URL; tables are created on first use, so a store can
    be built while its database is still unreachable (its callers retry)."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = open_engine(url)
        self.dialect = self.engine.dialect.name
        database = self.engine.url.database
        self._sqlite_file = Path(database) if self.dialect == "sqlite" and database else None
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _add_p95)
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The URL with any password hidden, for logs and errors."""
        return self.engine.url.render_as_string(hide_password=True)

    def ensure_schema(self) -> None:
        """Create the table and its indexes unless they exist; several processes may race to do it."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            if self._sqlite_file is not None:
                self._sqlite_file.parent.mkdir(parents=True, exist_ok=True)
            # IF NOT EXISTS rather than create_all's look-then-create, which loses races with the CLI
            # or another replica creating the same table.
            with self.engine.begin() as connection:
                connection.execute(CreateTable(usage_records, if_not_exists=True))
                for index in usage_records.indexes:
                    connection.execute(CreateIndex(index, if_not_exists=True))
            self._add_new_columns()
            self._schema_ready = True

    def _add_new_columns(self) -> None:
        """Give a table an older inferline created the columns added since; another process adding the
        same column at the same moment is not an error."""
        present = self._column_names()
        for column in usage_records.columns:
            if column.name in present:
                continue
            kind = column.type.compile(self.engine.dialect)
            try:
                with self.engine.begin() as connection:
                    connection.execute(text(f"ALTER TABLE usage_records ADD COLUMN {column.name} {kind}"))
            except SQLAlchemyError:
                if column.name not in self._column_names():
                    raise

    def _column_names(self) -> set[str]:
        return {column["name"] for column in inspect(self.engine).get_columns(usage_records.name)}

    def insert_many(self, records: list[UsageRecord]) -> None:
        """All of them in one transaction: once this returns they are on disk."""
        if not records:
            return
        self.ensure_schema()
        rows = [{name: getattr(record, name) for name in _RECORD_FIELDS} for record in records]
        with self.engine.begin() as connection:
            connection.execute(insert(usage_records), rows)

    def summary(self, by: GroupBy, since: float, tenant: str | None = None) -> list[UsageRow]:
        """Requests finished at or after `since` (Unix s), grouped by `by`, the most expensive first."""
        t = usage_records
        keys = _GROUP_COLUMNS[by]
        query = (
            select(
                *keys,
                func.count().label("requests"),
                func.sum(t.c.prompt_tokens).label("prompt_tokens"),
                func.sum(t.c.completion_tokens).label("completion_tokens"),
                func.sum(t.c.cost).label("cost_usd"),
                self._p95(t.c.latency_s).label("p95_latency_s"),
                self._p95(t.c.ttft_s).label("p95_ttft_s"),
                func.sum(case((t.c.outcome == "error", 1), else_=0)).label("errors"),
                func.sum(case((t.c.outcome == "rejected", 1), else_=0)).label("rejected"),
            )
            .where(t.c.finished_at >= since)
            .group_by(*keys)
            .order_by(desc("cost_usd"), *keys)
        )
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        try:
            self.ensure_schema()
            with self.engine.connect() as connection:
                result = connection.execute(query).all()
        except (SQLAlchemyError, OSError) as error:
            raise UsageDatabaseError(
                f"cannot read the usage database {self.url}: {describe_error(error)}"
            ) from error
        return [_row(by, row._mapping) for row in result]

    def _p95(self, column: Column[float]) -> ColumnElement[float]:
        if self.dialect == "postgresql":
            return func.percentile_cont(P95).within_group(column.asc())
        return func.inferline_p95(column, type_=Double)

    def close(self) -> None:
        self.engine.dispose()


def describe_error(error: BaseException) -> str:
    """The driver's own message, on one line (SQLAlchemy's wrapper adds the statement and parameters)."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(float(seconds) * 1000, 3)


def _row(by: GroupBy, row: Any) -> UsageRow:
    if by == "model":
        key = f"{row['deployment']}@{row['model_version']}" if row["deployment"] else ""
    else:
        key = row[by]
    # PostgreSQL sums integers as NUMERIC (Decimal in Python): every figure is converted here.
    return UsageRow(
        key=key,
        requests=int(row["requests"]),
        prompt_tokens=int(row["prompt_tokens"]),
        completion_tokens=int(row["completion_tokens"]),
        cost_usd=float(row["cost_usd"]),
        p95_latency_ms=_ms(row["p95_latency_s"]),
        p95_ttft_ms=_ms(row["p95_ttft_s"]),
        errors=int(row["errors"]),
        rejected=int(row["rejected"]),
    )
