"""The usage writer: off the request path, batched, bounded while the database is down, and complete once
it is back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import event, select

from inferline.telemetry.metering import UsageWriter
from inferline.telemetry.usage_store import UsageStore, usage_records
from inferline.types import UsageRecord
from tests.postgres import PostgresServer
from tests.server.conftest import free_port
from tests.telemetry.records import usage_record


def record(i: int, tenant: str = "alpha") -> UsageRecord:
    return usage_record(
        request_id=f"req-{i}", tenant=tenant, deployment="fast", ttft_s=0.01, latency_s=0.02, cost=0.001
    )


def stored_ids(store: UsageStore) -> list[str]:
    store.ensure_schema()  # the test may look before the writer's first batch made the table
    with store.engine.connect() as connection:
        return list(
            connection.execute(select(usage_records.c.request_id).order_by(usage_records.c.id)).scalars()
        )


def metric(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    assert value is not None, name
    return value


def wait_for(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[UsageStore]:
    store = UsageStore(f"sqlite:///{tmp_path / 'usage.db'}")
    yield store
    store.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def writers() -> Iterator[list[UsageWriter]]:
    """Writers a test starts; closed at the end whatever happened."""
    started: list[UsageWriter] = []
    yield started
    for writer in started:
        writer.close()
        writer.store.close()


def start(
    writers: list[UsageWriter], store: UsageStore, registry: CollectorRegistry, **options: float
) -> UsageWriter:
    writer = UsageWriter(store, registry, **options)  # type: ignore[arg-type]
    writer.start()
    writers.append(writer)
    return writer


def test_submit_takes_microseconds_and_records_arrive_in_a_few_batches(
    store: UsageStore, registry: CollectorRegistry, writers: list[UsageWriter]
) -> None:
    commits: list[int] = []
    event.listen(store.engine, "commit", lambda connection: commits.append(1))
    writer = start(writers, store, registry, flush_interval_s=0.5, batch_max_records=1000)
    records = [record(i) for i in range(5000)]
    started = time.perf_counter()
    for each in records:
        writer.submit(each)
    per_submit_s = (time.perf_counter() - started) / len(records)
    assert per_submit_s < 50e-6  # about 1 µs on a laptop: an append, never a database call
    wait_for(lambda: len(stored_ids(store)) == 5000)
    assert stored_ids(store) == [f"req-{i}" for i in range(5000)]
    assert len(commits) <= 10  # batches of up to 1000 (and the table's creation), not one per record
    assert metric(registry, "inferline_usage_buffered_records") == 0
    assert metric(registry, "inferline_usage_database_up") == 1


def test_a_full_batch_is_written_without_waiting_for_the_interval(
    store: UsageStore, registry: CollectorRegistry, writers: list[UsageWriter]
) -> None:
    writer = start(writers, store, registry, flush_interval_s=60, batch_max_records=50)
    for i in range(50):
        writer.submit(record(i))
    wait_for(lambda: len(stored_ids(store)) == 50, timeout_s=5)


def test_close_writes_every_record_left(store: UsageStore, registry: CollectorRegistry) -> None:
    writer = UsageWriter(store, registry, flush_interval_s=60)
    writer.start()  # closed by the test itself
    for i in range(7):
        writer.submit(record(i))
    writer.close()
    assert stored_ids(store) == [f"req-{i}" for i in range(7)]


def test_a_database_that_cannot_be_written_keeps_a_bounded_buffer_then_catches_up(
    tmp_path: Path, registry: CollectorRegistry, writers: list[UsageWriter], caplog: pytest.LogCaptureFixture
) -> None:
    # A file where the database's folder should be: no write can succeed, even as root.
    blocker = tmp_path / "blocked"
    blocker.write_text("not a folder")
    store = UsageStore(f"sqlite:///{blocker / 'usage.db'}")
    caplog.set_level(logging.WARNING, logger="inferline.telemetry.metering")
    writer = start(
        writers,
        store,
        registry,
        flush_interval_s=0.02,
        buffer_max_records=100,
        batch_max_records=10,
        max_retry_interval_s=0.1,
    )
    for i in range(150):
        writer.submit(record(i))  # never raises, never blocks
    wait_for(lambda: (registry.get_sample_value("inferline_usage_write_failures_total") or 0) >= 3)
    wait_for(lambda: metric(registry, "inferline_usage_dropped_records_total") == 50)
    assert metric(registry, "inferline_usage_buffered_records") == 100
    assert metric(registry, "inferline_usage_database_up") == 0
    alerts = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(alerts) == 1, "one alert when writes start failing, not one per retry"
    assert "cannot be written" in alerts[0].getMessage()
    assert str(blocker) in alerts[0].getMessage()

    blocker.unlink()
    blocker.mkdir()
    wait_for(lambda: metric(registry, "inferline_usage_database_up") == 1)
    wait_for(lambda: len(stored_ids(store)) == 100)
    # The oldest were dropped; the newest 100 survived the outage, in order.
    assert stored_ids(store) == [f"req-{i}" for i in range(50, 150)]
    wait_for(lambda: metric(registry, "inferline_usage_buffered_records") == 0)  # set after the commit
    recovered = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(recovered) == 1
    assert "writable again" in recovered[0].getMessage()


def test_retries_back_off_while_traffic_keeps_filling_batches(
    tmp_path: Path, registry: CollectorRegistry, writers: list[UsageWriter]
) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("not a folder")
    options = {"flush_interval_s": 0.01, "batch_max_records": 10, "max_retry_interval_s": 0.16}
    writer = start(writers, UsageStore(f"sqlite:///{blocker / 'usage.db'}"), registry, **options)
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        for i in range(5):
            writer.submit(record(i))
        time.sleep(0.01)
    # Waits of 0.01, 0.02, 0.04, 0.08, then 0.16 s: about 10 tries in a second, not one per full batch.
    assert 3 <= metric(registry, "inferline_usage_write_failures_total") <= 12


def test_an_unreachable_postgresql_only_costs_an_alert(
    registry: CollectorRegistry, writers: list[UsageWriter], caplog: pytest.LogCaptureFixture
) -> None:
    store = UsageStore(f"postgresql+psycopg://postgres:secret@127.0.0.1:{free_port()}/usage")
    writer = start(writers, store, registry, flush_interval_s=0.02, max_retry_interval_s=0.1)
    for i in range(10):
        writer.submit(record(i))
    wait_for(lambda: registry.get_sample_value("inferline_usage_database_up") == 0)
    assert metric(registry, "inferline_usage_buffered_records") == 10
    (alert,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "OperationalError" in alert
    assert "secret" not in alert  # the URL's password is hidden


def test_the_writer_writes_to_postgresql(postgres_url: str, registry: CollectorRegistry) -> None:
    writer = UsageWriter(UsageStore(postgres_url), registry, flush_interval_s=0.05)
    writer.start()
    for i in range(20):
        writer.submit(record(i, tenant="metered-on-postgresql"))
    writer.close()
    writer.store.close()
    reader = UsageStore(postgres_url)
    (row,) = reader.summary("tenant", 0, tenant="metered-on-postgresql")
    reader.close()
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (20, 60, 100)


def test_a_postgresql_restart_costs_no_record(
    postgres: PostgresServer,
    registry: CollectorRegistry,
    writers: list[UsageWriter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tenant = "through-a-restart"
    reader = UsageStore(postgres.url)

    def num_stored() -> int:
        return sum(row.requests for row in reader.summary("tenant", 0, tenant=tenant))

    writer = start(
        writers, UsageStore(postgres.url), registry, flush_interval_s=0.02, max_retry_interval_s=0.1
    )
    writer.submit(record(0, tenant))
    wait_for(lambda: num_stored() == 1)
    postgres.stop()  # the writer's pooled connection is now dead
    try:
        for i in range(1, 6):
            writer.submit(record(i, tenant))
        wait_for(lambda: metric(registry, "inferline_usage_database_up") == 0)
        assert metric(registry, "inferline_usage_buffered_records") == 5
    finally:
        postgres.start()
    wait_for(lambda: metric(registry, "inferline_usage_database_up") == 1)
    reader.close()  # its pooled connection died with the server too
    try:
        assert num_stored() == 6
    finally:
        reader.close()
    levels = [r.levelname for r in caplog.records if r.name == "inferline.telemetry.metering"]
    assert levels == ["ERROR", "WARNING"]
