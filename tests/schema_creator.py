"""A creator process for tests/test_db.py, which starts several at once to race on new databases. Apart from
the test module so that each new interpreter imports the database set-up alone (the stores' modules would
add seconds per process); the tables come pickled."""

from __future__ import annotations

import queue
import threading

from sqlalchemy import MetaData

from inferline.db import create_schema, describe_error, open_engine


def create_schemas(
    urls: list[str], metadatas: tuple[MetaData, ...], barrier: threading.Barrier, errors: queue.Queue[str]
) -> None:
    """On each database in turn: wait for the other creators, then create every table of `metadatas`."""
    for url in urls:
        barrier.wait(timeout=60)
        engine = open_engine(url, "test")
        try:
            for metadata in metadatas:
                create_schema(engine, metadata)
        except Exception as error:
            errors.put(f"{url}: {describe_error(error, engine.url)}")
        finally:
            engine.dispose()
