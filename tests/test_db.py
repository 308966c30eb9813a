"""The one database set-up, on a SQLite file and on a real PostgreSQL: every store's tables created at once by
several threads and processes without an error, a second creation that changes nothing, and no password
in any error a bad URL or an unreachable server produces."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import MetaData, event, insert, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from inferline.db import create_schema, describe_error, open_engine
from inferline.errors import InvalidRequestError
from inferline.registry import catalog, dataset, rollout
from inferline.registry.catalog import Catalog, RegistryError
from inferline.registry.dataset import Dataset, DatasetError
from inferline.registry.rollout import RolloutError, RolloutStore
from inferline.telemetry import usage_store
from inferline.telemetry.usage_store import UsageDatabaseError, UsageStore
from tests.schema_creator import create_schemas
from tests.server.conftest import free_port

EVERY_STORE: tuple[MetaData, ...] = (
    usage_store.metadata,
    catalog.metadata,
    dataset.metadata,
    rollout.metadata,
)
PASSWORD = "s3cr3t-pw"
NUM_CREATORS = 4
NUM_ROUNDS = 3
"""Each round is a new database that every creator starts on at the same moment: create_all lost on SQLite
and CREATE TABLE IF NOT EXISTS on PostgreSQL in most rounds of this size."""


def postgresql_schema(postgres_url: str, name: str) -> str:
    """A URL on a new, empty schema `name` of the test database (it becomes the connections' search_path)."""
    with psycopg.connect(
        postgres_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as db:
        db.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        db.execute(f"CREATE SCHEMA {name}")
    return f"{postgres_url}?options=-csearch_path%3D{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """Makes URLs of new, empty databases of the parametrized kind."""
    if request.param == "sqlite":
        return lambda name: f"sqlite:///{tmp_path / name / 'inferline.db'}"
    postgres_url: str = request.getfixturevalue("postgres_url")
    return lambda name: postgresql_schema(postgres_url, name)


def table_columns(url: str) -> dict[str, list[str]]:
    engine = open_engine(url, "test")
    inspector = inspect(engine)
    columns = {
        table: [c["name"] for c in inspector.get_columns(table)] for table in inspector.get_table_names()
    }
    engine.dispose()
    return columns


def expected_columns() -> dict[str, list[str]]:
    return {
        table.name: list(table.columns.keys())
        for metadata in EVERY_STORE
        for table in metadata.tables.values()
    }


# ---- concurrent creation ------------------------------------------------------------------------


def open_every_store(url: str, root: Path, first: int) -> None:
    """Open the four stores as the server and the CLI do, starting with the `first`-th."""

    def usage() -> None:
        store = UsageStore(url)
        store.ensure_schema()
        store.close()

    def registry() -> None:
        Catalog(url, root).close()

    def telemetry() -> None:
        Dataset(url).close()

    def rollouts() -> None:
        store = RolloutStore(url)
        assert store.load("chat") is None
        store.close()

    openers = [usage, registry, telemetry, rollouts]
    for opener in openers[first:] + openers[:first]:
        opener()


def test_threads_opening_every_store_on_a_new_database_at_once(
    new_database: Callable[[str], str], tmp_path: Path
) -> None:
    url = new_database("threads")
    barrier = threading.Barrier(NUM_CREATORS * 2)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=60)
            open_every_store(url, tmp_path / "registry", index % 4)
        except BaseException as error:  # collected, then reported by the test's own thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(NUM_CREATORS * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert table_columns(url) == expected_columns()


def test_processes_creating_the_schema_of_new_databases_at_once(tmp_path: Path, postgres_url: str) -> None:
    urls = [f"sqlite:///{tmp_path / f'round-{i}.db'}" for i in range(NUM_ROUNDS)]
    urls += [postgresql_schema(postgres_url, f"processes_{i}") for i in range(NUM_ROUNDS)]
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter, as another replica would be
    barrier = spawn.Barrier(NUM_CREATORS)
    errors = spawn.Queue()
    args = (urls, EVERY_STORE, barrier, errors)
    creators = [spawn.Process(target=create_schemas, args=args) for _ in range(NUM_CREATORS)]
    for creator in creators:
        creator.start()
    for creator in creators:
        creator.join(timeout=120)
    assert [creator.exitcode for creator in creators] == [0] * NUM_CREATORS
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []
    for url in urls:
        assert table_columns(url) == expected_columns()


def test_a_second_creation_changes_nothing(new_database: Callable[[str], str]) -> None:
    url = new_database("twice")
    engine = open_engine(url, "test")
    for metadata in EVERY_STORE:
        create_schema(engine, metadata)
    row = {"device_id": "cam-1", "num_dropped": 3, "last_upload_at": 1.0}
    with engine.begin() as connection:
        connection.execute(insert(dataset.telemetry_devices).values(**row))
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    for metadata in EVERY_STORE:
        create_schema(engine, metadata)
    with engine.connect() as connection:
        assert connection.execute(select(dataset.telemetry_devices)).mappings().all() == [row]
    engine.dispose()
    assert not [s for s in statements if s.lstrip().upper().startswith(("ALTER", "DROP"))]
    assert table_columns(url) == expected_columns()


# ---- passwords in errors ------------------------------------------------------------------------

BAD_URLS = [
    pytest.param(f"mysql://inferline:{PASSWORD}@db/usage", "use SQLite", id="unsupported database"),
    pytest.param(f"postgresql+nosuch://inferline:{PASSWORD}@db/usage", "driver", id="unknown driver"),
    pytest.param(f"postgresql://inferline:{PASSWORD}@db:port/usage", "not a database URL", id="bad port"),
    pytest.param(f"postgres ql://inferline:{PASSWORD}@db/usage", "not a database URL", id="not a URL"),
]


@pytest.mark.parametrize(("url", "reason"), BAD_URLS)
def test_a_bad_url_is_refused_by_every_store_without_its_password(
    url: str, reason: str, tmp_path: Path
) -> None:
    opens: list[tuple[Callable[[], object], str]] = [
        (lambda: UsageStore(url), "telemetry.database_url"),
        (lambda: Catalog(url, tmp_path / "registry"), "--database-url"),
        (lambda: Dataset(url), "--database-url"),
        (lambda: RolloutStore(url), "telemetry.database_url"),
    ]
    for open_store, setting in opens:
        with pytest.raises(InvalidRequestError, match=reason) as error:
            open_store()
        assert setting in str(error.value)
        assert PASSWORD not in str(error.value)


def test_an_unreachable_postgresql_is_reported_by_every_store_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://inferline:{PASSWORD}@127.0.0.1:{free_port()}/usage"
    usage = UsageStore(url)
    with pytest.raises(UsageDatabaseError) as usage_error:
        usage.summary("tenant", 0)
    rollouts = RolloutStore(url)
    with pytest.raises(RolloutError) as rollout_error:
        rollouts.load("chat")
    with pytest.raises(RegistryError) as registry_error:
        Catalog(url, tmp_path / "registry")
    with pytest.raises(DatasetError) as dataset_error:
        Dataset(url)
    for error in (usage_error, rollout_error, registry_error, dataset_error):
        message = str(error.value)
        assert "OperationalError" in message
        assert "inferline:***@127.0.0.1" in message  # where, for the operator; not the password
        assert PASSWORD not in message
    for store in (usage, rollouts):
        assert PASSWORD not in store.url


def test_a_driver_message_that_quotes_the_password_is_shown_without_it() -> None:
    url = make_url(f"postgresql+psycopg://inferline:{PASSWORD}@db/usage")
    quoted = OperationalError("connect", {}, Exception(f'password "{PASSWORD}" refused\nDETAIL: more'))
    assert describe_error(quoted, url) == 'Exception: password "***" refused'
