"""Stored responses in SQLite and in a real PostgreSQL: each tenant sees only its own, the count and age
limits hold on every write and at startup, and a database that is gone is an error that names it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from inferline.config import ResponsesConfig
from inferline.server.response_store import ResponseStore, ResponseStoreError, responses

Opener = Callable[..., ResponseStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens stores (several may share the database, as restarted servers do) and closes them after."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'inferline.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened: list[ResponseStore] = []

    def open_store(**limits: Any) -> ResponseStore:
        store = ResponseStore(url, ResponsesConfig(**{"max_age_s": None, "max_per_tenant": None, **limits}))
        opened.append(store)
        return store

    with open_store()._transaction() as connection:  # PostgreSQL's database is shared by the run
        connection.execute(responses.delete())
    yield open_store
    for store in opened:
        store.close()


def saved(store: ResponseStore, tenant: str, response_id: str) -> dict[str, Any]:
    response = {"id": response_id, "object": "response", "output": [{"type": "message"}]}
    store.save(tenant, response, [{"id": f"msg_{response_id}", "type": "message"}])
    return response


def test_a_tenant_reads_and_deletes_only_its_own(open_store: Opener) -> None:
    store = open_store()
    response = saved(store, "alpha", "resp_1")
    stored = store.load("alpha", "resp_1")
    assert stored is not None
    assert stored.response == response
    assert stored.input_items == [{"id": "msg_resp_1", "type": "message"}]
    assert store.load("beta", "resp_1") is None
    assert not store.delete("beta", "resp_1")
    assert store.delete("alpha", "resp_1")
    assert store.load("alpha", "resp_1") is None


def test_each_tenant_keeps_its_newest_max_per_tenant(open_store: Opener) -> None:
    store = open_store(max_per_tenant=2)
    for n in range(4):
        saved(store, "alpha", f"resp_a{n}")
    saved(store, "beta", "resp_b0")
    assert [store.load("alpha", f"resp_a{n}") is not None for n in range(4)] == [False, False, True, True]
    assert store.load("beta", "resp_b0") is not None


def test_an_old_response_is_never_served_and_goes_at_startup(open_store: Opener) -> None:
    saved(open_store(), "alpha", "resp_old")
    time.sleep(0.05)
    strict = open_store(max_age_s=0.01)
    assert strict.load("alpha", "resp_old") is None  # expired: hidden before anything prunes it
    assert open_store().load("alpha", "resp_old") is not None
    strict.prune()  # what the server does when it starts
    assert open_store().load("alpha", "resp_old") is None


def test_a_lowered_count_limit_applies_at_startup(open_store: Opener) -> None:
    unlimited = open_store()
    for n in range(3):
        saved(unlimited, "alpha", f"resp_{n}")
    open_store(max_per_tenant=1).prune()
    assert [unlimited.load("alpha", f"resp_{n}") is not None for n in range(3)] == [False, False, True]


def test_an_unreachable_database_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a-folder.db").mkdir()
    store = ResponseStore(f"sqlite:///{tmp_path / 'a-folder.db'}", ResponsesConfig())
    with pytest.raises(ResponseStoreError, match="a-folder.db"):
        store.load("alpha", "resp_1")
    store.close()
