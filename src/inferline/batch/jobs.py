"""Batch jobs in inferline's database: one row per batch, its state, counts, timestamps and reports.

The row is the batch's state machine as the API shows it; which lines are done is not kept here but in
the output and error files themselves (runner.py), so the two can never disagree after a crash.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from sqlalchemy import (
    Column,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)

from inferline.db import create_schema
from inferline.errors import NotFoundError

Status = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
UNFINISHED: tuple[Status, ...] = ("validating", "in_progress", "finalizing", "cancelling")
TIMESTAMPS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)

metadata = MetaData()

batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("principal", Text, nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", String(64), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("model", String(256), nullable=True),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    *(Column(name, Double, nullable=True) for name in TIMESTAMPS),
    Column("output_file_id", String(64), nullable=True),
    Column("error_file_id", String(64), nullable=True),
    Column("num_total", Integer, nullable=False),
    Column("num_completed", Integer, nullable=False),
    Column("num_failed", Integer, nullable=False),
    Column("metadata", Text, nullable=False),
    Column("errors", Text, nullable=True),
    Column("carbon", Text, nullable=True),
    Column("lines_per_s", Double, nullable=True),
    Index("ix_batches_tenant_created_at", "tenant", "created_at"),
    Index("ix_batches_status", "status"),
)

_JSON_COLUMNS = ("principal", "metadata", "errors", "carbon")


@dataclass(frozen=True)
class BatchRecord:
    id: str
    tenant: str
    principal: dict[str, str | None]
    """Who the batch's lines are charged to (limits.Principal's fields)."""
    endpoint: str
    input_file_id: str
    completion_window: str
    status: Status
    created_at: float
    expires_at: float
    metadata: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    num_total: int = 0
    num_completed: int = 0
    num_failed: int = 0
    errors: list[dict[str, Any]] | None = None
    """Validation errors, each naming its line, when the batch failed at `validating`."""
    carbon: dict[str, Any] | None = None
    """The carbon-aware report: chosen window, estimated and measured energy and gCO2e."""
    lines_per_s: float | None = None
    """Measured once the batch finished; estimates the next batch's run time on the same model."""

    def to_openai(self) -> dict[str, Any]:
        def stamp(value: float | None) -> int | None:
            return None if value is None else int(value)

        body: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created_at),
            "expires_at": int(self.expires_at),
            **{name: stamp(getattr(self, name)) for name in TIMESTAMPS},
            "request_counts": {
                "total": self.num_total,
                "completed": self.num_completed,
                "failed": self.num_failed,
            },
            "metadata": self.metadata,
        }
        if self.carbon is not None:
            body["carbon"] = self.carbon
        return body


class BatchStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def _ensure_schema(self) -> None:
        with self._schema_lock:
            if not self._schema_ready:
                create_schema(self.engine, metadata)
                self._schema_ready = True

    def create(self, **values: Any) -> BatchRecord:
        self._ensure_schema()
        record = BatchRecord(
            id=f"batch_{secrets.token_hex(12)}", status="validating", created_at=time.time(), **values
        )
        with self.engine.begin() as connection:
            connection.execute(insert(batches), _row(asdict(record)))
        return record

    def get(self, tenant: str | None, batch_id: str) -> BatchRecord:
        """The batch, if `tenant` owns it (None: whoever does)."""
        self._ensure_schema()
        query = select(batches).where(batches.c.id == batch_id)
        if tenant is not None:
            query = query.where(batches.c.tenant == tenant)
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            raise NotFoundError(f"no batch {batch_id!r}: list yours with GET /v1/batches")
        return _record(row._mapping)

    def page(self, tenant: str, after: str | None = None, limit: int = 20) -> list[BatchRecord]:
        """The tenant's batches, newest first; `after` is the last id of the previous page."""
        self._ensure_schema()
        query = select(batches).where(batches.c.tenant == tenant)
        if after is not None:
            query = query.where(batches.c.created_at < self.get(tenant, after).created_at)
        query = query.order_by(batches.c.created_at.desc()).limit(limit)
        with self.engine.connect() as connection:
            return [_record(row._mapping) for row in connection.execute(query)]

    def unfinished(self) -> list[BatchRecord]:
        """Every batch a restarted server has to carry on with."""
        self._ensure_schema()
        query = select(batches).where(batches.c.status.in_(UNFINISHED)).order_by(batches.c.created_at)
        with self.engine.connect() as connection:
            return [_record(row._mapping) for row in connection.execute(query)]

    def last_lines_per_s(self, model: str) -> float | None:
        """The throughput the latest completed batch on `model` measured."""
        self._ensure_schema()
        query = (
            select(batches.c.lines_per_s)
            .where(batches.c.model == model, batches.c.lines_per_s.is_not(None))
            .order_by(batches.c.completed_at.desc())
            .limit(1)
        )
        with self.engine.connect() as connection:
            value = connection.execute(query).scalar()
        return None if value is None else float(value)

    def update(self, record: BatchRecord, **changes: Any) -> BatchRecord:
        updated = replace(record, **changes)
        values = _row({name: getattr(updated, name) for name in changes})
        with self.engine.begin() as connection:
            connection.execute(update(batches).where(batches.c.id == record.id).values(**values))
        return updated


def _row(values: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if k in _JSON_COLUMNS and v is not None else v for k, v in values.items()}


_FIELDS = {f.name for f in fields(BatchRecord)}


def _record(row: Any) -> BatchRecord:
    values = {k: row[k] for k in _FIELDS}
    for name in _JSON_COLUMNS:
        if values[name] is not None:
            values[name] = json.loads(values[name])
    return BatchRecord(**values)
