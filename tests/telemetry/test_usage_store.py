"""The usage database on SQLite and on a real PostgreSQL: every field kept, every grouping summed, and p95
and cost figures that are exact and the same on both."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from inferline.db import database_url
from inferline.errors import InvalidRequestError
from inferline.stats import percentile
from inferline.telemetry.usage_store import (
    UsageRow,
    UsageStore,
    parse_group_by,
    parse_since,
    usage_records,
)
from inferline.types import UsageRecord
from tests.telemetry.records import usage_record

NOW = time.time()


def record(**overrides: Any) -> UsageRecord:
    defaults = {"request_id": "req", "deployment": "fast", "prompt_tokens": 1, "completion_tokens": 1}
    return usage_record(
        **{**defaults, "ttft_s": 0.01, "latency_s": 0.1, "finished_at": NOW - 60, **overrides}
    )


# cost and latencies are chosen so that sums and interpolations are exact in binary floating point.
HAND_MADE = [
    record(request_id="a1", prompt_tokens=10, completion_tokens=20, latency_s=0.1, ttft_s=0.05, cost=0.5),
    record(
        request_id="a2",
        deployment="slow",
        model_version="2",
        prompt_tokens=30,
        completion_tokens=40,
        latency_s=0.3,
        ttft_s=0.1,
        outcome="error",
        error_type="BackendUnavailableError",
        cost=0.25,
        policy="cascade",
        cascade_stage=2,
    ),
    record(
        request_id="b1",
        tenant="beta",
        prompt_tokens=5,
        completion_tokens=5,
        latency_s=0.2,
        ttft_s=None,
        cost=0.125,
        degraded=True,
    ),
    record(
        request_id="b2",
        tenant="beta",
        route="embed",
        deployment="",
        model_version="",
        prompt_tokens=0,
        completion_tokens=0,
        latency_s=0.001,
        ttft_s=None,
        outcome="rejected",
        error_type="LimitExceededError",
    ),
    # Outside every window below but "30d": it must not be counted.
    record(request_id="old", latency_s=9.0, cost=100.0, finished_at=NOW - 10 * 86400),
]

# key -> (requests, prompt_tokens, completion_tokens, cost_usd, p95_latency_ms, p95_ttft_ms, errors, rejected)
EXPECTED: dict[str, list[tuple[Any, ...]]] = {
    "tenant": [
        ("alpha", 2, 40, 60, 0.75, 290.0, 97.5, 1, 0),
        ("beta", 2, 5, 5, 0.125, 190.05, None, 0, 1),
    ],
    "route": [
        ("chat", 3, 45, 65, 0.875, 290.0, 97.5, 1, 0),
        ("embed", 1, 0, 0, 0.0, 1.0, None, 0, 1),
    ],
    "deployment": [
        ("fast", 2, 15, 25, 0.625, 195.0, 50.0, 0, 0),
        ("slow", 1, 30, 40, 0.25, 300.0, 100.0, 1, 0),
        ("", 1, 0, 0, 0.0, 1.0, None, 0, 1),
    ],
    "model": [
        ("fast@1", 2, 15, 25, 0.625, 195.0, 50.0, 0, 0),
        ("slow@2", 1, 30, 40, 0.25, 300.0, 100.0, 1, 0),
        ("", 1, 0, 0, 0.0, 1.0, None, 0, 1),  # refused before routing: no deployment, no model
    ],
}


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[UsageStore]:
    store = UsageStore(f"sqlite:///{tmp_path / 'usage.db'}")
    yield store
    store.close()


@pytest.fixture
def postgresql_store(postgres_url: str) -> Iterator[UsageStore]:
    store = UsageStore(postgres_url)
    store.ensure_schema()
    with store.engine.begin() as connection:
        connection.execute(usage_records.delete())
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> UsageStore:
    return request.getfixturevalue(f"{request.param}_store")  # type: ignore[no-any-return]


def as_tuples(rows: list[UsageRow]) -> list[tuple[Any, ...]]:
    return [tuple(asdict(row).values()) for row in rows]


def test_every_field_of_a_record_round_trips(store: UsageStore) -> None:
    store.insert_many(HAND_MADE)
    with store.engine.connect() as connection:
        stored = connection.execute(select(usage_records).order_by(usage_records.c.id)).mappings().all()
    assert [{f.name: row[f.name] for f in fields(UsageRecord)} for row in stored] == [
        asdict(r) for r in HAND_MADE
    ]


@pytest.mark.parametrize("by", ["tenant", "route", "deployment", "model"])
def test_summary_by_each_grouping_is_exact(store: UsageStore, by: str) -> None:
    store.insert_many(HAND_MADE)
    assert as_tuples(store.summary(parse_group_by(by), since=NOW - 7 * 86400)) == EXPECTED[by]


def test_a_tenant_filter_and_the_time_window_narrow_the_summary(store: UsageStore) -> None:
    store.insert_many(HAND_MADE)
    assert as_tuples(store.summary("tenant", NOW - 7 * 86400, tenant="beta")) == [EXPECTED["tenant"][1]]
    assert store.summary("tenant", NOW - 7 * 86400, tenant="nobody") == []
    month = store.summary("tenant", NOW - 30 * 86400, tenant="alpha")
    assert month[0].requests == 3
    assert month[0].cost_usd == 100.75
    assert store.summary("tenant", NOW) == []


def test_p95_of_twenty_requests_interpolates_like_percentile_cont(store: UsageStore) -> None:
    store.insert_many([record(latency_s=i / 1000, ttft_s=i / 4000, cost=1 / 8) for i in range(1, 21)])
    (row,) = store.summary("tenant", NOW - 3600)
    # rank 0.95 * 19 = 18.05: between the 19th (19 ms) and 20th (20 ms) values, 5 % of the way.
    assert row.p95_latency_ms == 19.05
    assert row.p95_ttft_ms == 4.763  # 4.7625 ms, kept to the microsecond
    assert row.cost_usd == 2.5
    assert percentile([float(i) for i in range(1, 21)], 95) == pytest.approx(19.05)


def test_sqlite_and_postgresql_give_the_same_summaries(
    sqlite_store: UsageStore, postgresql_store: UsageStore
) -> None:
    rng = random.Random(6)
    records = [
        record(
            tenant=rng.choice(["alpha", "beta", "gamma"]),
            route=rng.choice(["chat", "embed"]),
            deployment=rng.choice(["fast", "slow"]),
            model_version=rng.choice(["1", "2"]),
            prompt_tokens=rng.randrange(1000),
            completion_tokens=rng.randrange(1000),
            latency_s=rng.uniform(0.01, 2),
            ttft_s=rng.choice([None, rng.uniform(0.001, 0.5)]),
            outcome=rng.choice(["ok", "ok", "ok", "error", "rejected", "aborted"]),
            cost=rng.randrange(1000) / 1024,
        )
        for _ in range(300)
    ]
    sqlite_store.insert_many(records)
    postgresql_store.insert_many(records)
    for by in ("tenant", "route", "deployment", "model"):
        on_sqlite = sqlite_store.summary(parse_group_by(by), NOW - 3600)
        on_postgres = postgresql_store.summary(parse_group_by(by), NOW - 3600)
        assert on_sqlite == on_postgres
        assert sum(row.requests for row in on_sqlite) == 300


def test_sqlite_runs_in_wal_mode_so_readers_never_wait_for_the_server(sqlite_store: UsageStore) -> None:
    sqlite_store.insert_many([record()])
    with sqlite_store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_the_default_database_is_a_sqlite_file_in_the_inferline_home(tmp_path: Path) -> None:
    assert database_url(None, tmp_path) == f"sqlite:///{tmp_path}/inferline.db"
    assert database_url("postgresql+psycopg://u@db/x", tmp_path) == "postgresql+psycopg://u@db/x"
    store = UsageStore(database_url(None, tmp_path / "fresh"))
    store.insert_many([record()])
    store.close()
    assert (tmp_path / "fresh" / "inferline.db").exists()


def test_an_unsupported_database_is_refused_with_the_field_name() -> None:
    with pytest.raises(InvalidRequestError, match=r"telemetry\.database_url.*SQLite.*PostgreSQL") as error:
        UsageStore("mysql://u:secret@db/usage")
    assert "secret" not in str(error.value)
    with pytest.raises(InvalidRequestError, match=r"telemetry\.database_url is not a database URL"):
        UsageStore("usage.db")


def test_a_plain_postgresql_url_uses_the_installed_driver(postgres_url: str) -> None:
    store = UsageStore(postgres_url.replace("postgresql+psycopg://", "postgresql://"))
    assert store.engine.dialect.driver == "psycopg"
    store.summary("tenant", 0)
    store.close()


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("30m", NOW - 1800),
        ("24h", NOW - 86400),
        ("7d", NOW - 7 * 86400),
        ("1.5h", NOW - 5400),
        ("2025-01-31", datetime(2025, 1, 31, tzinfo=UTC).timestamp()),
        ("2025-01-31T12:00:00+02:00", datetime(2025, 1, 31, 10, tzinfo=UTC).timestamp()),
    ],
)
def test_since_accepts_durations_and_iso_dates(since: str, expected: float) -> None:
    assert parse_since(since, NOW) == pytest.approx(expected)


def test_bad_since_and_by_name_the_parameter_and_the_accepted_values() -> None:
    with pytest.raises(InvalidRequestError, match=r"since='yesterday'.*30m, 24h, 7d.*ISO date") as since:
        parse_since("yesterday", NOW)
    assert since.value.param == "since"
    with pytest.raises(InvalidRequestError, match=r"by='user'.*tenant, route, deployment, model") as by:
        parse_group_by("user")
    assert by.value.param == "by"


def test_a_table_made_before_mean_logprob_existed_gets_the_column_on_first_use(store: UsageStore) -> None:
    store.ensure_schema()
    with store.engine.begin() as connection:  # the table as an earlier inferline created it
        connection.execute(text("ALTER TABLE usage_records DROP COLUMN mean_logprob"))
    upgraded = UsageStore(store.engine.url.render_as_string(hide_password=False))
    upgraded.insert_many([record(request_id="old-table", mean_logprob=-1.25)])
    with upgraded.engine.connect() as connection:
        rows = connection.execute(select(usage_records.c.request_id, usage_records.c.mean_logprob)).all()
    upgraded.close()
    assert [tuple(row) for row in rows] == [("old-table", -1.25)]
