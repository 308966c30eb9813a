"""/metrics and GET /v1/slo of a real `inferline serve` routing to stub upstreams: what an operator's
Prometheus, Grafana and alerting would read after real traffic, failures included."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferline.testing.stub_upstream import StubProcess, start_stub
from tests.server.conftest import API_KEY, OTHER_KEY, ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "sk-admin"
FRUGAL_KEY = "sk-frugal"
PRICE_IN, PRICE_OUT = 1_000.0, 3_000.0
"""USD per 1M tokens of the `steady` deployment."""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def remote(name: str, stub: StubProcess, **fields: Any) -> dict[str, Any]:
    return {"name": name, "kind": "remote", "base_url": f"{stub.url}/v1", **fields}


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, StubProcess]]:
    started = {
        name: start_stub("--reply", f"answer from {name}", "--tokens", "8") for name in ("steady", "flaky")
    }
    yield started
    for stub in started.values():
        stub.stop()


@pytest.fixture(scope="module")
def served(
    stubs: dict[str, StubProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    steady, flaky = stubs["steady"], stubs["flaky"]
    config = {
        "admin_api_keys": [ADMIN_KEY],
        "deployments": [
            remote("steady", steady, price_input_per_1m=PRICE_IN, price_output_per_1m=PRICE_OUT),
            remote("twin", steady),
            remote("flaky", flaky, circuit_breaker={"failure_threshold": 3, "cooldown_s": 60}),
            remote("pricey", steady, price_input_per_1m=0, price_output_per_1m=1_000_000),
        ],
        "routes": [
            {"name": "chat", "deployments": ["steady"], "slo": {"availability": 0.99, "ttft_p95_ms": 2000}},
            {"name": "guarded", "deployments": ["flaky"], "slo": {"availability": 0.999}},
            {"name": "split", "policy": "weighted", "weights": {"steady": 1, "twin": 1}, "sticky_by": "none"},
            {
                "name": "cascading",
                "policy": "cascade",
                "deployments": ["twin", "steady"],
                "cascade": {"escalate_patterns": ["answer"]},
            },
        ],
        "tenants": [
            {"name": "alpha", "api_keys": [API_KEY]},
            {"name": "beta", "api_keys": [OTHER_KEY]},
            {"name": "frugal", "api_keys": [FRUGAL_KEY], "team": "tight"},
        ],
        "teams": [{"name": "tight", "budget": {"limit_usd": 1, "period": "day"}}],
    }
    process = start_server(config, tmp_path_factory.mktemp("metrics"))
    yield process
    process.stop()


def chat(server: ServerProcess, model: str, key: str = API_KEY) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "say hi please"}], "max_tokens": 5},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def scrape(server: ServerProcess) -> Samples:
    response = httpx.get(f"{server.url}/metrics")
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def slo(server: ServerProcess, key: str = ADMIN_KEY) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/slo", headers={"authorization": f"Bearer {key}"})


def test_requests_are_counted_by_route_arm_and_tenant_with_tokens_and_cost(served: ServerProcess) -> None:
    before = scrape(served)
    answers = [chat(served, "chat") for _ in range(3)] + [chat(served, "chat", OTHER_KEY) for _ in range(2)]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    after = scrape(served)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    arm = {"route": "chat", "deployment": "steady"}
    assert grew("inferline_route_requests_total", **arm, outcome="ok") == 5
    for family in ("latency", "ttft", "tpot"):
        assert grew(f"inferline_route_{family}_seconds_count", **arm) == 5
    assert grew("inferline_http_requests_total", route="/v1/chat/completions", status="200") == 5
    for tenant, mine in (("alpha", answers[:3]), ("beta", answers[3:])):
        prompt = sum(a.json()["usage"]["prompt_tokens"] for a in mine)
        completion = sum(a.json()["usage"]["completion_tokens"] for a in mine)
        assert prompt > 0
        assert completion > 0
        assert grew("inferline_tenant_tokens_total", tenant=tenant, kind="prompt") == prompt
        assert grew("inferline_tenant_tokens_total", tenant=tenant, kind="completion") == completion
        cost = (prompt * PRICE_IN + completion * PRICE_OUT) / 1e6
        assert grew("inferline_tenant_cost_usd_total", tenant=tenant) == pytest.approx(cost)
        assert grew("inferline_tenant_requests_total", tenant=tenant, outcome="ok") == len(mine)
    # Live figures of every deployment are there too, read when scraped.
    assert ("inferline_requests_running", frozenset({("deployment", "twin")})) in after
    assert sample(after, "inferline_circuit_state", deployment="steady", state="closed") == 1


def test_router_decisions_show_splits_cascade_stages_and_rejections(served: ServerProcess) -> None:
    before = scrape(served)
    assert all(chat(served, "split").status_code == 200 for _ in range(20))
    assert all(chat(served, "cascading").status_code == 200 for _ in range(2))
    refused = chat(served, "pricey", FRUGAL_KEY)  # its worst case ($5) is over the team's $1 a day
    assert refused.status_code == 429, refused.text
    after = scrape(served)

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    arms = [
        grew("inferline_router_decisions_total", route="split", policy="weighted", deployment=d)
        for d in ("steady", "twin")
    ]
    assert sum(arms) == 20
    assert min(arms) > 0, "a 1:1 split sent everything one way"
    assert grew("inferline_router_cascade_stage_total", route="cascading", stage="2") == 2
    assert grew("inferline_router_cascade_stage_total", route="cascading", stage="1") == 0
    assert grew("inferline_router_rejections_total", route="pricey", reason="LimitExceededError") == 1
    assert grew("inferline_route_requests_total", route="pricey", deployment="", outcome="rejected") == 1


def test_injected_errors_raise_the_burn_rate_and_fire_the_fast_burn_alert(
    served: ServerProcess, stubs: dict[str, StubProcess]
) -> None:
    assert slo(served, API_KEY).status_code == 403
    assert all(chat(served, "guarded").status_code == 200 for _ in range(5))
    calm = slo(served).json()["routes"]["guarded"]["objectives"]["availability"]
    assert calm["burn_rates"]["5m"] == 0
    assert not any(a["firing"] for a in calm["alerts"])
    stubs["flaky"].set_faults(error_rate=1.0)
    try:
        assert all(chat(served, "guarded").status_code >= 500 for _ in range(5))
    finally:
        stubs["flaky"].set_faults()

    routes = slo(served).json()["routes"]
    assert set(routes) == {"chat", "guarded"}  # the routes with objectives
    burning = routes["guarded"]["objectives"]["availability"]
    assert (burning["events"], burning["bad_events"]) == (10, 5)
    assert burning["burn_rates"]["5m"] == pytest.approx(0.5 / (1 - 0.999))
    assert burning["error_budget_remaining"] < 0
    fast_burn = next(a for a in burning["alerts"] if (a["long_window"], a["short_window"]) == ("1h", "5m"))
    assert fast_burn["severity"] == "page"
    assert fast_burn["firing"]

    after = scrape(served)
    labels = {"route": "guarded", "objective": "availability"}
    assert sample(after, "inferline_slo_burn_rate", **labels, window="5m") == pytest.approx(500)
    page = {"severity": "page", "long_window": "1h", "short_window": "5m"}
    assert sample(after, "inferline_slo_alert_firing", **labels, **page) == 1
    assert sample(after, "inferline_slo_alert_firing", route="chat", objective="availability", **page) == 0
    assert sample(after, "inferline_slo_attainment", **labels) == pytest.approx(0.5)
    assert sample(after, "inferline_circuit_state", deployment="flaky", state="open") == 1
    assert sample(after, "inferline_circuit_opened_total", deployment="flaky") == 1


def dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"]]
    return {name for query in queries for name in re.findall(r"\binferline_[a-z0-9_]+", query)}


def test_the_grafana_dashboard_uses_only_metrics_the_server_exposes(served: ServerProcess) -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/inferline.json").read_text())
    assert dashboard["schemaVersion"] >= 36
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} queries nothing"
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"

    assert chat(served, "chat").status_code == 200
    text = httpx.get(f"{served.url}/metrics").text
    exposed = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    for family in text_string_to_metric_families(text):  # families with no series yet still name theirs
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        exposed |= {family.name, *(family.name + suffix for suffix in suffixes)}
    used = dashboard_metric_names(dashboard)
    assert len(used) >= 20
    assert used <= exposed, f"the dashboard queries metrics /metrics lacks: {sorted(used - exposed)}"


def test_with_metrics_off_requests_are_not_counted_but_deployments_still_show(
    stubs: dict[str, StubProcess], tmp_path: Path
) -> None:
    config = {"deployments": [remote("steady", stubs["steady"])], "telemetry": {"metrics": False}}
    server = start_server(config, tmp_path)
    try:
        assert chat(server, "steady").status_code == 200
        samples = scrape(server)
    finally:
        server.stop()
    assert not any(
        name.startswith(("inferline_route_", "inferline_tenant_", "inferline_http_")) for name, _ in samples
    )
    assert ("inferline_requests_running", frozenset({("deployment", "steady")})) in samples
