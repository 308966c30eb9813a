"""The usage database: one row per finished request, and the showback summaries read from it.

Design note: SQLAlchemy Core over one `usage_records` table in inferline's database (db.py: SQLite in
$INFERLINE_HOME by default, PostgreSQL by URL). Summaries aggregate in the database; the one thing the two
dialects do not share is a percentile aggregate, so PostgreSQL uses its own `percentile_cont` and SQLite
gets `inferline_p95`, registered on each connection, which is `stats.percentile`: the same definition, so
both databases give the same figure.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
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
    desc,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from inferline.db import create_schema, describe_error, display_url, open_engine
from inferline.errors import InferlineError, InvalidRequestError
from inferline.stats import percentile
from inferline.types import UsageRecord

GroupBy = Literal["tenant", "route", "deployment", "model"]
GROUP_BY: tuple[str, ...] = get_args(GroupBy)
P95 = 95

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
    # Columns added after the first release are nullable: create_schema adds them to older tables.
    Column("mean_logprob", Double, nullable=True),
    Column("endpoint", String(128), nullable=True),
    Column("batch_id", String(64), nullable=True),
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


class _P95Aggregate:
    """SQLite aggregate `inferline_p95(x)`; NULLs are skipped as percentile_cont skips them."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def step(self, value: float | None) -> None:
        if value is not None:
            self.values.append(value)

    def finalize(self) -> float | None:
        return percentile(self.values, P95) if self.values else None


def _add_p95(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.create_aggregate("inferline_p95", 1, _P95Aggregate)


class UsageStore:
    """`insert_many` and `summary` over one database URL; tables are created on first use, so a store can
    be built while its database is still unreachable (its callers retry)."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = open_engine(url, "telemetry.database_url")
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _add_p95)
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The URL with any password hidden, for logs and errors."""
        return display_url(self.engine.url)

    def ensure_schema(self) -> None:
        """Create the table and its indexes unless they exist (once per store; other processes may be
        creating them at the same moment)."""
        with self._schema_lock:
            if not self._schema_ready:
                create_schema(self.engine, metadata)
                self._schema_ready = True

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
                f"cannot read the usage database {self.url}: {describe_error(error, self.engine.url)}"
            ) from error
        return [_row(by, row._mapping) for row in result]

    def _p95(self, column: Column[float]) -> ColumnElement[float]:
        if self.dialect == "postgresql":
            return func.percentile_cont(P95 / 100).within_group(column.asc())
        return func.inferline_p95(column, type_=Double)

    def close(self) -> None:
        self.engine.dispose()


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
