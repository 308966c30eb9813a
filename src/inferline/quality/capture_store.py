"""Captured requests and feedback: two tables of inferline's database (db.py).

Design note: a captured row holds text that has already been redacted (quality/capture.py redacts before
anything reaches this module), with what a reviewer or a training job needs beside it: the model version
that answered, the route's decision (policy, deployment, cascade stage, degraded) and the prompt template.
Feedback rows are kept apart and joined by request id: feedback may arrive for a request that was never
captured (it still counts for the canary) and a request may be rated more than once.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from inferline.db import create_schema, describe_error, display_url, open_engine
from inferline.errors import InferlineError

metadata = MetaData()

captured_requests = Table(
    "captured_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False, unique=True),
    Column("tenant", String(128), nullable=False),
    Column("route", String(256), nullable=False),
    Column("policy", String(32), nullable=False),
    Column("deployment", String(128), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("cascade_stage", Integer, nullable=True),
    Column("degraded", Boolean, nullable=False),
    Column("endpoint", String(128), nullable=False),
    Column("prompt_template", String(256), nullable=True),
    Column("prompt", Text, nullable=False),
    Column("completion", Text, nullable=False),
    Column("finish_reason", String(32), nullable=True),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("mean_logprob", Double, nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("flags", String(256), nullable=False),
    Column("captured_at", Double, nullable=False),
    Index("ix_captured_requests_captured_at", "captured_at"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("route", String(256), nullable=False),
    Column("deployment", String(128), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("score", Double, nullable=True),
    Column("label", String(64), nullable=True),
    Column("comment", Text, nullable=True),
    Column("created_at", Double, nullable=False),
    Index("ix_feedback_request_id", "request_id"),
)


class CaptureStoreError(InferlineError):
    """The capture database cannot be read or written."""


@dataclass(frozen=True)
class CapturedRow:
    """One captured request, as stored (prompt and completion already redacted)."""

    request_id: str
    tenant: str
    route: str
    policy: str
    deployment: str
    model_version: str
    cascade_stage: int | None
    degraded: bool
    endpoint: str
    prompt_template: str | None
    prompt: Any
    completion: list[str]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    mean_logprob: float | None
    outcome: str
    flags: list[str]
    captured_at: float


@dataclass(frozen=True)
class FeedbackRow:
    request_id: str
    tenant: str
    route: str
    deployment: str
    model_version: str
    score: float | None
    label: str | None
    comment: str | None
    created_at: float


class CaptureStore:
    """Inserts, retention and reads over `captured_requests` and `feedback`; tables made on first use."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = open_engine(url, "telemetry.database_url")
        self.url = display_url(self.engine.url)
        self._ready = False
        self._lock = threading.Lock()

    def close(self) -> None:
        self.engine.dispose()

    def _ensure_schema(self) -> None:
        with self._lock:
            if not self._ready:
                create_schema(self.engine, metadata)
                self._ready = True

    def _run(self, verb: str, work: Any) -> Any:
        try:
            self._ensure_schema()
            with self.engine.begin() as connection:
                return work(connection)
        except (SQLAlchemyError, OSError) as error:
            raise CaptureStoreError(
                f"cannot {verb} in {self.url}: {describe_error(error, self.engine.url)}"
            ) from error

    def insert(self, row: CapturedRow) -> None:
        """Store `row`; a request captured twice (a retried write) is stored once."""
        values = {
            **vars(row),
            "prompt": json.dumps(row.prompt, ensure_ascii=False),
            "completion": json.dumps(row.completion, ensure_ascii=False),
            "flags": ",".join(row.flags),
        }
        t = captured_requests

        def work(connection: Any) -> None:
            if connection.execute(select(t.c.id).where(t.c.request_id == row.request_id)).first() is None:
                connection.execute(insert(t), values)

        self._run("store a captured request", work)

    def add_flag(self, request_id: str, flag: str) -> bool:
        """Add `flag` to a captured request; False when it was not captured."""
        t = captured_requests

        def work(connection: Any) -> bool:
            flags = connection.execute(select(t.c.flags).where(t.c.request_id == request_id)).scalar()
            if flags is None:
                return False
            merged = ",".join(dict.fromkeys([*filter(None, flags.split(",")), flag]))
            connection.execute(update(t).where(t.c.request_id == request_id).values(flags=merged))
            return True

        return bool(self._run("flag a captured request", work))

    def owner(self, request_id: str) -> CapturedRow | None:
        rows = self.captured(request_id=request_id)
        return rows[0] if rows else None

    def prune(self, max_records: int, max_age_s: float | None, now: float) -> int:
        """Apply the retention limits; returns how many rows went."""
        t = captured_requests

        def work(connection: Any) -> int:
            removed = 0
            if max_age_s is not None:
                removed += connection.execute(delete(t).where(t.c.captured_at < now - max_age_s)).rowcount
            count = connection.execute(select(func.count()).select_from(t)).scalar() or 0
            if count > max_records:
                cutoff = connection.execute(
                    select(t.c.id).order_by(t.c.id.desc()).offset(max_records).limit(1)
                ).scalar()
                removed += connection.execute(delete(t).where(t.c.id <= cutoff)).rowcount
            return int(removed)

        return int(self._run("prune captured requests", work))

    def add_feedback(self, row: FeedbackRow) -> None:
        self._run("store feedback", lambda connection: connection.execute(insert(feedback), vars(row)))

    def captured(
        self,
        since: float | None = None,
        route: str | None = None,
        flag: str | None = None,
        request_id: str | None = None,
    ) -> list[CapturedRow]:
        """Captured requests oldest first, filtered; `flag` matches one of a row's flags."""
        t = captured_requests
        query = select(t).order_by(t.c.captured_at, t.c.id)
        if since is not None:
            query = query.where(t.c.captured_at >= since)
        if route is not None:
            query = query.where(t.c.route == route)
        if request_id is not None:
            query = query.where(t.c.request_id == request_id)
        rows = self._run("read captured requests", lambda c: c.execute(query).mappings().all())
        found = [_captured(row) for row in rows]
        return [row for row in found if flag is None or flag in row.flags]

    def feedback(self, request_ids: list[str] | None = None, since: float | None = None) -> list[FeedbackRow]:
        f = feedback
        query = select(f).order_by(f.c.created_at, f.c.id)
        if request_ids is not None:
            query = query.where(f.c.request_id.in_(request_ids))
        if since is not None:
            query = query.where(f.c.created_at >= since)
        rows = self._run("read feedback", lambda c: c.execute(query).mappings().all())
        return [FeedbackRow(**{k: v for k, v in row.items() if k != "id"}) for row in rows]


def _captured(row: Any) -> CapturedRow:
    values = {k: v for k, v in row.items() if k != "id"}
    values["prompt"] = json.loads(values["prompt"])
    values["completion"] = json.loads(values["completion"])
    values["flags"] = [f for f in values["flags"].split(",") if f]
    values["degraded"] = bool(values["degraded"])
    return CapturedRow(**values)
