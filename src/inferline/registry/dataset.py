"""The fleet's telemetry dataset: usage records and flagged cases uploaded by edge devices, stored with the
model version that produced each, and exported as JSONL or Parquet.

Design note: devices upload at least once (a batch whose acknowledgement was lost is sent again), so every
record carries the id (device_id, seq) its device gave it and the table holds that pair unique; a re-sent
batch inserts nothing twice. Each device also reports how many records its bounded queue dropped in total;
that count only grows, so storing the largest one seen is right however often a batch is re-sent.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from inferline.db import create_schema, database_url, describe_error, display_url, open_engine
from inferline.errors import InferlineError
from inferline.models.store import inferline_home

RecordKind = Literal["usage", "flagged", "state"]
RECORD_KINDS: tuple[str, ...] = get_args(RecordKind)
MAX_BATCH_RECORDS = 1000
"""The most records one upload may carry; devices send smaller batches (edge/outbox.py)."""
ExportFormat = Literal["jsonl", "parquet"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)

metadata = MetaData()

telemetry_records = Table(
    "telemetry_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(128), nullable=False),
    # Devices number from the clock in microseconds (edge/outbox.py): past 32 bits.
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("model", String(128), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("ts", Double, nullable=False),
    Column("received_at", Double, nullable=False),
    Column("payload", Text, nullable=False),
    UniqueConstraint("device_id", "seq", name="uq_telemetry_records_device_seq"),
    # Exports filter on a model and a time window.
    Index("ix_telemetry_records_model_ts", "model", "ts"),
)

telemetry_devices = Table(
    "telemetry_devices",
    metadata,
    Column("device_id", String(128), primary_key=True),
    Column("num_dropped", Integer, nullable=False),
    Column("last_upload_at", Double, nullable=False),
)

# Both dialects can skip a conflicting row inside one INSERT, which a pre-check alone cannot do when two
# uploads of the same batch race.
_INSERTS: dict[str, Callable[[Table], Any]] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


class DatasetError(InferlineError):
    """The telemetry dataset cannot be opened, read or written."""


class TelemetryBatchError(DatasetError):
    """An upload body is not a valid telemetry batch (the device's fault, not worth retrying as is)."""


class UploadedRecord(BaseModel):
    """One record of an upload; fields beyond these are the record's payload."""

    model_config = ConfigDict(extra="allow")

    seq: int = Field(ge=0, description="the device's sequence number; (device_id, seq) is unique")
    kind: RecordKind = Field(
        description="usage (a served request), flagged (an error, user feedback, ...) or state (the device's "
        "installed versions and last error, sent when they change)"
    )
    model: str = Field(min_length=1, max_length=128, description="the model name that served it")
    model_version: str = Field(min_length=1, max_length=64, description="the version that produced it")
    ts: float = Field(description="when it happened on the device, Unix seconds")


class TelemetryBatch(BaseModel):
    """The body of POST /v1/telemetry."""

    device_id: str = Field(min_length=1, max_length=128)
    num_dropped: int = Field(ge=0, description="records the device's queue dropped so far, in total")
    records: list[UploadedRecord] = Field(max_length=MAX_BATCH_RECORDS)


@dataclass(frozen=True)
class StoreResult:
    """What one upload changed: the acknowledgement sent back to the device."""

    num_stored: int
    num_duplicates: int
    """Records already stored by an earlier send of the same batch."""


@dataclass(frozen=True)
class DatasetRecord:
    """One stored record, as exported."""

    device_id: str
    seq: int
    kind: str
    model: str
    model_version: str
    ts: float
    received_at: float
    payload: dict[str, Any]


def parse_batch(body: bytes) -> TelemetryBatch:
    """Validate an upload body; the error names the first wrong field."""
    try:
        return TelemetryBatch.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise TelemetryBatchError(
            f"telemetry upload rejected: {where}: {first['msg']} ({error.error_count()} error(s)); send "
            f'{{"device_id", "num_dropped", "records": [{{"seq", "kind", "model", "model_version", "ts"}}]}}'
        ) from None


def open_dataset(configured_url: str | None = None) -> Dataset:
    """The dataset in the registry database (`configured_url`, else inferline.db in $INFERLINE_HOME)."""
    return Dataset(database_url(configured_url, inferline_home()))


class Dataset:
    """`store` uploads and read them back (`records`, `dropped_counts`) in the database at `url`."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = open_engine(url, "--database-url")
        self.url = display_url(self._engine.url)
        """The database's URL with any password hidden."""
        try:
            create_schema(self._engine, metadata)
        except (SQLAlchemyError, OSError) as error:
            raise DatasetError(
                f"cannot open the registry database {self.url} ({describe_error(error, self._engine.url)}): "
                "check --database-url"
            ) from None

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def store(self, batch: TelemetryBatch) -> StoreResult:
        """Insert the batch's new records and the device's drop count in one transaction."""
        now = time.time()
        rows = {
            record.seq: {
                "device_id": batch.device_id,
                "seq": record.seq,
                "kind": record.kind,
                "model": record.model,
                "model_version": record.model_version,
                "ts": record.ts,
                "received_at": now,
                "payload": json.dumps(record.model_extra or {}, sort_keys=True),
            }
            for record in batch.records
        }
        t = telemetry_records
        try:
            with self._engine.begin() as connection:
                known = select(t.c.seq).where(t.c.device_id == batch.device_id, t.c.seq.in_(list(rows)))
                seen = set(connection.execute(known).scalars())
                new_rows = [row for seq, row in rows.items() if seq not in seen]
                if new_rows:
                    statement = _INSERTS[self._engine.dialect.name](t).on_conflict_do_nothing()
                    connection.execute(statement, new_rows)
                self._record_drops(connection, batch.device_id, batch.num_dropped, now)
        except SQLAlchemyError as error:
            raise DatasetError(
                f"cannot store telemetry in {self.url} ({describe_error(error, self._engine.url)}): "
                "the device will retry"
            ) from None
        return StoreResult(num_stored=len(new_rows), num_duplicates=len(batch.records) - len(new_rows))

    def _record_drops(self, connection: Any, device_id: str, num_dropped: int, now: float) -> None:
        d = telemetry_devices
        current = connection.execute(select(d.c.num_dropped).where(d.c.device_id == device_id)).scalar()
        if current is None:
            connection.execute(
                d.insert().values(device_id=device_id, num_dropped=num_dropped, last_upload_at=now)
            )
        else:
            connection.execute(
                update(d)
                .where(d.c.device_id == device_id)
                .values(num_dropped=max(current, num_dropped), last_upload_at=now)
            )

    def records(self, model: str | None = None, since: float | None = None) -> Iterator[DatasetRecord]:
        """Stored records oldest first, of one model and from `since` (Unix s) when given."""
        t = telemetry_records
        query = select(t).order_by(t.c.ts, t.c.device_id, t.c.seq)
        if model is not None:
            query = query.where(t.c.model == model)
        if since is not None:
            query = query.where(t.c.ts >= since)
        try:
            with self._engine.connect() as connection:
                rows = connection.execute(query).mappings().all()
        except SQLAlchemyError as error:
            raise DatasetError(
                f"cannot read telemetry from {self.url} ({describe_error(error, self._engine.url)})"
            ) from None
        for row in rows:
            yield DatasetRecord(
                device_id=row["device_id"],
                seq=row["seq"],
                kind=row["kind"],
                model=row["model"],
                model_version=row["model_version"],
                ts=row["ts"],
                received_at=row["received_at"],
                payload=json.loads(row["payload"]),
            )

    def dropped_counts(self) -> dict[str, int]:
        """Per device, how many records its queue dropped before they could be uploaded."""
        d = telemetry_devices
        with self._engine.connect() as connection:
            return {row.device_id: row.num_dropped for row in connection.execute(select(d))}


def export_records(records: Iterator[DatasetRecord], out: Path, fmt: ExportFormat) -> int:
    """Write `records` to `out` (replaced whole, never left half-written); returns how many."""
    rows = [asdict(record) for record in records]
    partial = out.with_name(f".{out.name}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with partial.open("w", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row, sort_keys=True) + "\n")
    else:
        _write_parquet(rows, partial)
    os.replace(partial, out)
    return len(rows)


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Payloads differ by kind and device, so they stay one JSON string column rather than a union schema.
    schema = pa.schema(
        [
            ("device_id", pa.string()),
            ("seq", pa.int64()),
            ("kind", pa.string()),
            ("model", pa.string()),
            ("model_version", pa.string()),
            ("ts", pa.float64()),
            ("received_at", pa.float64()),
            ("payload", pa.string()),
        ]
    )
    columns = {name: [row[name] for row in rows] for name in schema.names}
    columns["payload"] = [json.dumps(payload, sort_keys=True) for payload in columns["payload"]]
    pq.write_table(pa.table(columns, schema=schema), path)
