"""Files of the OpenAI Files API: metadata in inferline's database, content on disk under the data dir.

A file belongs to the tenant that uploaded it (or whose batch wrote it); every read names the tenant, and
another tenant's file is indistinguishable from a missing one. Batch output and error files grow while
their batch runs, so a file's size is read from disk, never stored.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Double, Engine, Index, MetaData, String, Table, delete, insert, select

from inferline.db import create_schema
from inferline.errors import NotFoundError

metadata = MetaData()

batch_files = Table(
    "batch_files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("filename", String(512), nullable=False),
    Column("created_at", Double, nullable=False),
    Index("ix_batch_files_tenant_created_at", "tenant", "created_at"),
)


@dataclass(frozen=True)
class FileRecord:
    id: str
    tenant: str
    purpose: str
    """"batch" for inputs; "batch_output" for what a batch writes (its output and error files)."""
    filename: str
    created_at: float
    path: Path

    def to_openai(self) -> dict[str, Any]:
        size = self.path.stat().st_size if self.path.exists() else 0
        return {
            "id": self.id,
            "object": "file",
            "bytes": size,
            "created_at": int(self.created_at),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class FileStore:
    """`add` an uploaded file, `create` an empty one a batch writes to, `get`, `list`, `delete`."""

    def __init__(self, engine: Engine, data_dir: Path) -> None:
        self.engine = engine
        self.files_dir = data_dir / "files"
        self.uploads_dir = data_dir / "uploads"
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def _ensure_schema(self) -> None:
        with self._schema_lock:
            if not self._schema_ready:
                self.files_dir.mkdir(parents=True, exist_ok=True)
                self.uploads_dir.mkdir(parents=True, exist_ok=True)
                create_schema(self.engine, metadata)
                self._schema_ready = True

    def upload_path(self) -> Path:
        """A fresh path to stream an upload into; `add` moves it into the store."""
        self._ensure_schema()
        return self.uploads_dir / secrets.token_hex(12)

    def add(self, tenant: str, purpose: str, filename: str, uploaded: Path) -> FileRecord:
        record = self._new(tenant, purpose, filename)
        uploaded.replace(record.path)
        self._insert(record)
        return record

    def create(self, tenant: str, purpose: str, filename: str) -> FileRecord:
        """An empty file for a batch to append to."""
        record = self._new(tenant, purpose, filename)
        record.path.touch()
        self._insert(record)
        return record

    def _new(self, tenant: str, purpose: str, filename: str) -> FileRecord:
        self._ensure_schema()
        file_id = f"file-{secrets.token_hex(12)}"
        return FileRecord(file_id, tenant, purpose, filename, time.time(), self.files_dir / file_id)

    def _insert(self, record: FileRecord) -> None:
        row = {
            "id": record.id,
            "tenant": record.tenant,
            "purpose": record.purpose,
            "filename": record.filename,
            "created_at": record.created_at,
        }
        with self.engine.begin() as connection:
            connection.execute(insert(batch_files), row)

    def get(self, tenant: str, file_id: str) -> FileRecord:
        self._ensure_schema()
        query = select(batch_files).where(batch_files.c.id == file_id, batch_files.c.tenant == tenant)
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            raise NotFoundError(f"no file {file_id!r}: list yours with GET /v1/files")
        return self._record(row._mapping)

    def of_tenant(self, tenant: str, purpose: str | None = None, limit: int = 10_000) -> list[FileRecord]:
        """The tenant's files, newest first."""
        self._ensure_schema()
        query = select(batch_files).where(batch_files.c.tenant == tenant)
        if purpose is not None:
            query = query.where(batch_files.c.purpose == purpose)
        query = query.order_by(batch_files.c.created_at.desc()).limit(limit)
        with self.engine.connect() as connection:
            return [self._record(row._mapping) for row in connection.execute(query)]

    def delete(self, tenant: str, file_id: str) -> None:
        record = self.get(tenant, file_id)
        with self.engine.begin() as connection:
            connection.execute(delete(batch_files).where(batch_files.c.id == record.id))
        record.path.unlink(missing_ok=True)

    def _record(self, row: Any) -> FileRecord:
        return FileRecord(
            row["id"],
            row["tenant"],
            row["purpose"],
            row["filename"],
            row["created_at"],
            self.files_dir / row["id"],
        )


def complete_size(path: Path) -> int:
    """The file's size up to the end of its last whole line: a reader never gets a line half-written."""
    size = path.stat().st_size
    with path.open("rb") as file:
        position = size
        while position > 0:
            step = min(position, 65536)
            file.seek(position - step)
            tail = file.read(step)
            newline = tail.rfind(b"\n")
            if newline >= 0:
                return position - step + newline + 1
            position -= step
    return 0
