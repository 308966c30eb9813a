"""Results as rows of `stream_results` in inferline's database, one per (stream, message id): the primary
key makes a second write of the same message a no-op (INSERT ... ON CONFLICT DO NOTHING), and a batch is
one transaction, committed before the source acknowledges it."""

from __future__ import annotations

import asyncio
import json
import time

from sqlalchemy import Column, Double, Engine, MetaData, String, Table, Text
from sqlalchemy.dialects import postgresql, sqlite

from inferline.db import create_schema, open_engine
from inferline.streams.message import Output

metadata = MetaData()

stream_results = Table(
    "stream_results",
    metadata,
    Column("stream", String(128), primary_key=True),
    Column("message_id", String(128), primary_key=True),
    Column("result", Text, nullable=False),  # the output's fields as a JSON object
    Column("written_at", Double, nullable=False),
)


class DatabaseSink:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine | None = None

    async def open(self) -> None:
        self.engine = open_engine(self.url, "streams.sink.database_url")
        await asyncio.to_thread(create_schema, self.engine, metadata)

    async def write(self, outputs: list[Output]) -> None:
        if outputs:
            await asyncio.to_thread(self._insert, outputs)

    def _insert(self, outputs: list[Output]) -> None:
        if self.engine is None:
            raise RuntimeError("the database sink is not open")
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        now = time.time()
        rows = [
            {
                "stream": o.stream,
                "message_id": o.message_id,
                "result": json.dumps(o.fields),
                "written_at": now,
            }
            for o in outputs
        ]
        with self.engine.begin() as connection:
            connection.execute(dialect.insert(stream_results).values(rows).on_conflict_do_nothing())

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
