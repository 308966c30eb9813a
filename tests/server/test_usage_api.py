"""Metering in a real `inferline serve` process in front of a stub upstream: every finished request lands in
the usage database (through a SIGTERM drain, and across a kill -9 once written), a database that is down
never fails a request, and GET /v1/usage shows each key what it may see."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferline.telemetry.usage_store import UsageStore, usage_records
from inferline.testing.stub_upstream import StubProcess, start_stub
from tests.server.conftest import API_KEY, OTHER_KEY, ServerProcess, free_port, start_server

ADMIN_KEY = "sk-usage-admin"


@pytest.fixture(scope="module")
def stub() -> Iterator[StubProcess]:
    process = start_stub("--reply", "usage is metered", "--tokens", "3")
    yield process
    process.stop()


def server_config(stub: StubProcess, database_url: str, **telemetry: Any) -> dict[str, Any]:
    return {
        "admin_api_keys": [ADMIN_KEY],
        "tenants": [{"name": "alpha", "api_keys": [API_KEY]}, {"name": "beta", "api_keys": [OTHER_KEY]}],
        # $1 per prompt token and $2 per completion token: costs are easy to check.
        "deployments": [
            {
                "name": "fast",
                "kind": "remote",
                "base_url": f"{stub.url}/v1",
                "version": "7",
                "price_input_per_1m": 1_000_000,
                "price_output_per_1m": 2_000_000,
            }
        ],
        "telemetry": {"database_url": database_url, "flush_interval_s": 0.05, **telemetry},
    }


def chat(server: ServerProcess, key: str, words: int = 2) -> httpx.Response:
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "fast", "messages": [{"role": "user", "content": " ".join(["word"] * words)}]},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response


def stored_request_ids(database_url: str) -> set[str]:
    store = UsageStore(database_url)
    store.ensure_schema()
    with store.engine.connect() as connection:
        ids = set(
            connection.execute(usage_records.select().with_only_columns(usage_records.c.request_id)).scalars()
        )
    store.close()
    return ids


def get_usage(server: ServerProcess, key: str | None, **params: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{server.url}/v1/usage", params=params, headers=headers, timeout=10)


@dataclass
class Metered:
    server: ServerProcess
    sent: dict[str, tuple[int, int, int]]
    """tenant -> (requests, prompt tokens, completion tokens), as the responses' usage reported them."""


@pytest.fixture(scope="module")
def metered(stub: StubProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metered]:
    """Three requests from alpha and two from beta, already written."""
    tmp_path = tmp_path_factory.mktemp("metered")
    database_url = f"sqlite:///{tmp_path / 'usage.db'}"
    server = start_server(server_config(stub, database_url), tmp_path)
    ids: set[str] = set()
    sent: dict[str, tuple[int, int, int]] = {}
    for tenant, key, words in (("alpha", API_KEY, [1, 2, 3]), ("beta", OTHER_KEY, [4, 4])):
        responses = [chat(server, key, n) for n in words]
        ids |= {response.headers["x-request-id"] for response in responses}
        usages = [response.json()["usage"] for response in responses]
        sent[tenant] = (
            len(usages),
            sum(u["prompt_tokens"] for u in usages),
            sum(u["completion_tokens"] for u in usages),
        )
    deadline = time.monotonic() + 10
    while stored_request_ids(database_url) != ids:
        assert time.monotonic() < deadline, "usage records not written within 10 s"
        time.sleep(0.05)
    yield Metered(server, sent)
    server.stop()


def test_an_admin_key_sees_every_tenant_with_tokens_and_cost(metered: Metered) -> None:
    response = get_usage(metered.server, ADMIN_KEY, by="tenant", since="1h")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["by"], body["since"]) == ("list", "tenant", "1h")
    rows = {row["key"]: row for row in body["data"]}
    assert {key: (r["requests"], r["prompt_tokens"], r["completion_tokens"]) for key, r in rows.items()} == (
        metered.sent
    )
    assert metered.sent["alpha"][2] == 9  # three answers of three tokens: the stub's, not made up here
    for row in rows.values():
        assert row["cost_usd"] == row["prompt_tokens"] * 1 + row["completion_tokens"] * 2
        assert row["p95_latency_ms"] > 0
        assert row["p95_ttft_ms"] > 0
        assert (row["errors"], row["rejected"]) == (0, 0)


def test_usage_by_model_names_the_deployment_and_its_version(metered: Metered) -> None:
    response = get_usage(metered.server, ADMIN_KEY, by="model", since="2025-01-01")
    assert [(row["key"], row["requests"]) for row in response.json()["data"]] == [("fast@7", 5)]
    assert get_usage(metered.server, ADMIN_KEY, by="tenant", tenant="beta").json()["data"][0]["requests"] == 2


def test_a_tenant_key_sees_only_its_own_usage(metered: Metered) -> None:
    own = get_usage(metered.server, API_KEY, by="route")
    assert own.status_code == 200, own.text
    assert [(row["key"], row["requests"]) for row in own.json()["data"]] == [("fast", 3)]
    assert [row["key"] for row in get_usage(metered.server, OTHER_KEY).json()["data"]] == ["beta"]
    assert get_usage(metered.server, API_KEY, tenant="alpha").status_code == 200

    other = get_usage(metered.server, API_KEY, tenant="beta")
    assert other.status_code == 403
    assert other.json()["error"]["param"] == "tenant"
    assert "alpha" in other.json()["error"]["message"]
    assert get_usage(metered.server, None).status_code == 401
    assert get_usage(metered.server, "sk-wrong").status_code == 401


@pytest.mark.parametrize(
    ("params", "param", "named"),
    [({"by": "user"}, "by", "tenant, route, deployment, model"), ({"since": "last week"}, "since", "7d")],
)
def test_a_bad_parameter_is_a_400_naming_it_and_the_accepted_values(
    metered: Metered, params: dict[str, str], param: str, named: str
) -> None:
    response = get_usage(metered.server, ADMIN_KEY, **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert named in error["message"]


def test_sigterm_writes_every_finished_request_before_exiting(stub: StubProcess, tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'usage.db'}"
    # A flush interval longer than the test: only the shutdown's final write can get them in.
    server = start_server(server_config(stub, database_url, flush_interval_s=60), tmp_path)
    ids = {chat(server, API_KEY).headers["x-request-id"] for _ in range(4)}
    assert server.stop() == 0
    assert stored_request_ids(database_url) == ids


def test_kill_9_loses_no_written_record(stub: StubProcess, tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'usage.db'}"
    server = start_server(server_config(stub, database_url), tmp_path)
    ids = {chat(server, API_KEY).headers["x-request-id"] for _ in range(4)}
    deadline = time.monotonic() + 10
    while stored_request_ids(database_url) != ids:
        assert time.monotonic() < deadline, "usage records not written within 10 s"
        time.sleep(0.05)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    assert stored_request_ids(database_url) == ids


def test_a_database_that_is_down_fails_no_request(stub: StubProcess, tmp_path: Path) -> None:
    nowhere = f"postgresql+psycopg://inferline@127.0.0.1:{free_port()}/usage"
    server = start_server(server_config(stub, nowhere), tmp_path)
    try:
        for _ in range(3):
            chat(server, API_KEY)
        deadline = time.monotonic() + 10
        while "inferline_usage_database_up 0.0" not in (metrics := httpx.get(f"{server.url}/metrics").text):
            assert time.monotonic() < deadline, "the usage database was never reported down"
            time.sleep(0.05)
        assert "inferline_usage_buffered_records 3.0" in metrics
        assert "inferline_usage_write_failures_total" in metrics
        unavailable = get_usage(server, ADMIN_KEY)
        assert unavailable.status_code == 503
        assert "127.0.0.1" not in unavailable.text  # where the database lives is for the operator's log
    finally:
        assert server.stop() == 0
    log = server.log()
    assert log.count("cannot be written") == 1
    assert "3 usage records were not written" in log
