"""Stored responses of the Responses API: each tenant's own, kept within the retention limits.

Design note: one row per response in the `responses` table of inferline's database (db.py). A row holds
the response object as it was returned and the whole conversation that produced it (the earlier turns'
inputs and outputs, then its own input), so continuing from it is one read by primary key, and an earlier
turn deleted or expired never breaks a later one; the price is that a chain of N turns holds its history
N times, which the per-tenant count bounds. Every read and delete is keyed by tenant and id, so another
tenant's id is not found exactly like an id that never existed. A row past its age is never served, even
before the next write prunes it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Double,
    Index,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from inferline.config import ResponsesConfig
from inferline.db import create_schema, describe_error, display_url, open_engine
from inferline.errors import InferlineError

metadata = MetaData()

responses = Table(
    "responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("response", Text, nullable=False),  # the response object, JSON
    Column("input_items", Text, nullable=False),  # its conversation's input items, JSON, oldest first
    # Retention deletes a tenant's oldest rows and every row past its age.
    Index("ix_responses_tenant_created_at", "tenant", "created_at"),
    Index("ix_responses_created_at", "created_at"),
)


class ResponseStoreError(InferlineError):
    """The stored responses cannot be read or written: the database is unreachable or unwritable."""


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    """Every input item of the conversation up to this response, oldest first."""


class ResponseStore:
    """Stored responses in the database at `url`; the table is created on first use."""

    def __init__(self, url: str, config: ResponsesConfig) -> None:
        self.config = config
        self._engine = open_engine(url, "telemetry.database_url")
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def _ensure_schema(self) -> None:
        with self._schema_lock:
            if not self._schema_ready:
                create_schema(self._engine, metadata)
                self._schema_ready = True

    def _oldest_kept(self, now: float) -> float | None:
        return None if self.config.max_age_s is None else now - self.config.max_age_s

    def save(self, tenant: str, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        """Store the response, then apply the limits to this tenant's responses and everyone's ages."""
        now = time.time()
        row = {
            "id": response["id"],
            "tenant": tenant,
            "created_at": now,
            "response": json.dumps(response, separators=(",", ":")),
            "input_items": json.dumps(input_items, separators=(",", ":")),
        }
        with self._transaction() as connection:
            connection.execute(insert(responses), [row])
            self._prune_age(connection, now)
            self._prune_count(connection, tenant)

    def load(self, tenant: str, response_id: str) -> StoredResponse | None:
        """The tenant's response with this id; None if it has none (another tenant's included)."""
        query = select(responses.c.response, responses.c.input_items).where(
            responses.c.tenant == tenant, responses.c.id == response_id
        )
        oldest = self._oldest_kept(time.time())
        if oldest is not None:
            query = query.where(responses.c.created_at >= oldest)
        with self._transaction() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        return StoredResponse(json.loads(row.response), json.loads(row.input_items))

    def delete(self, tenant: str, response_id: str) -> bool:
        """Delete the tenant's response with this id; False if it has none."""
        with self._transaction() as connection:
            result = connection.execute(
                delete(responses).where(responses.c.tenant == tenant, responses.c.id == response_id)
            )
        return result.rowcount > 0

    def prune(self) -> None:
        """Apply the limits to every tenant (at startup: they may have been lowered since the last run)."""
        with self._transaction() as connection:
            tenants: list[str] = []
            if self.config.max_per_tenant is not None:
                over = (
                    select(responses.c.tenant)
                    .group_by(responses.c.tenant)
                    .having(func.count() > self.config.max_per_tenant)
                )
                tenants = list(connection.execute(over).scalars())
            self._prune_age(connection, time.time())
            for tenant in tenants:
                self._prune_count(connection, tenant)

    def _prune_count(self, connection: Connection, tenant: str) -> None:
        if self.config.max_per_tenant is not None:
            # The oldest kept response's time, read from the (tenant, created_at) index alone: selecting
            # the ids beyond the limit would read every kept row (their JSON included) on every write.
            oldest_kept = connection.execute(
                select(responses.c.created_at)
                .where(responses.c.tenant == tenant)
                .order_by(responses.c.created_at.desc())
                .offset(self.config.max_per_tenant - 1)
                .limit(1)
            ).scalar()
            if oldest_kept is not None:
                connection.execute(
                    delete(responses).where(
                        responses.c.tenant == tenant, responses.c.created_at < oldest_kept
                    )
                )

    def _prune_age(self, connection: Connection, now: float) -> None:
        oldest = self._oldest_kept(now)
        if oldest is not None:
            connection.execute(delete(responses).where(responses.c.created_at < oldest))

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One transaction; a database failure becomes a ResponseStoreError naming the database (its
        password hidden) and the driver's reason."""
        try:
            self._ensure_schema()
            with self._engine.begin() as connection:
                yield connection
        except (SQLAlchemyError, OSError) as error:
            url = self._engine.url
            raise ResponseStoreError(
                f"stored responses in {display_url(url)}: {describe_error(error, url)}"
            ) from error

    def close(self) -> None:
        self._engine.dispose()
