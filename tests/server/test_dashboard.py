"""The live dashboard of a real `inferline serve` routing between two stub upstreams: its data endpoint
after known traffic, its auth, and the page itself in headless Chromium under traffic (every chart
drew points, the drift panel shows /v1/drift's signals; the screenshot is kept in
test-artifacts/dashboard.png)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from inferline.config import RemoteDeploymentConfig, ServerConfig, TenantConfig
from inferline.server.app import create_app
from inferline.testing.stub_upstream import StubProcess, start_stub
from tests.server.chromium import chromium
from tests.server.conftest import ServerProcess, llm_deployment, start_server

ADMIN_KEY = "sk-dash-admin"
TENANT_KEYS = {"alpha": "sk-dash-alpha", "beta": "sk-dash-beta", "gamma": "sk-dash-gamma"}
PRICES = {"small": (1.0, 2.0), "large": (10.0, 30.0)}
"""USD per million prompt and completion tokens."""
ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard.png"
CHART_STATES = """Object.fromEntries([...document.querySelectorAll('[data-chart]')].map((e) => [
    e.dataset.chart,
    {state: e.dataset.state, points: Number(e.dataset.points), empty: e.querySelector('.empty').textContent,
     canvas: Boolean(e.querySelector('canvas'))},
]))"""
"""Each chart card's name -> what the page says it drew."""
CHARTS = ("requests", "tokens", "ttft", "tpot", "queue", "kv", "tenant-requests", "tenant-cost", "slo")
DRIFT_PANEL = """(() => {
    const panel = document.querySelector('[data-panel=drift]');
    return {state: panel.dataset.state, signals: Number(panel.dataset.signals),
            alerts: Number(panel.dataset.alerts), text: panel.textContent,
            flagged: [...panel.querySelectorAll('tr.alert')].map((row) => row.cells[2].textContent)};
})()"""
"""What the drift panel shows: its state, how many signals and alerts, and the metrics of flagged rows."""
SHORT, LONG = "tell me three things", "tell me three things " + "and more " * 60
"""Prompts of the reference window, and of the later traffic whose prompt length drift must flag."""


@pytest.fixture(scope="module")
def stubs() -> Iterator[dict[str, StubProcess]]:
    started = {name: start_stub("--reply", f"answer from {name}", "--tokens", "8") for name in PRICES}
    # Streams that take a while, so TTFT and TPOT have something to show (and the large arm is slower).
    started["small"].set_faults(first_token_delay_s=0.004, token_delay_s=0.001)
    started["large"].set_faults(first_token_delay_s=0.02, token_delay_s=0.003)
    yield started
    for stub in started.values():
        stub.stop()


@pytest.fixture(scope="module")
def front(stubs: dict[str, StubProcess], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = {
        "admin_api_keys": [ADMIN_KEY],
        "tenants": [{"name": name, "api_keys": [key]} for name, key in TENANT_KEYS.items()],
        "deployments": [
            *(
                {
                    "name": name,
                    "kind": "remote",
                    "base_url": f"{stub.url}/v1",
                    "price_input_per_1m": PRICES[name][0],
                    "price_output_per_1m": PRICES[name][1],
                }
                for name, stub in stubs.items()
            ),
            # A local LLM, for a KV cache to chart; it serves no route, so it idles at 0 %.
            llm_deployment(),
        ],
        "quality": {"drift": {"enabled": True, "window": 20, "min_samples": 10}},
        "routes": [
            {
                "name": "chat",
                "policy": "weighted",
                "weights": {"small": 3, "large": 1},
                "sticky_by": "none",
                "slo": {"availability": 0.99, "ttft_p95_ms": 15},
            }
        ],
    }
    process = start_server(config, tmp_path_factory.mktemp("dashboard"))
    yield process
    process.stop()


def chat(http: httpx.Client, key: str, prompt: str = SHORT) -> tuple[str, int, int]:
    """One streamed chat request on route "chat": the deployment that answered and the usage it billed."""
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with http.stream(
        "POST", "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as r:
        assert r.status_code == 200, r.read()
        usage = None
        for line in r.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
        assert usage is not None
        return r.headers["x-inferline-model"], usage["prompt_tokens"], usage["completion_tokens"]


def drive(
    url: str, num_requests: int, pause_s: float = 0.0, prompt: str = SHORT
) -> list[tuple[str, str, int, int]]:
    """`num_requests` chats over four connections, tenants in turn: (tenant, deployment, in, out) each."""
    tenants = itertools.cycle(TENANT_KEYS)
    plan = [next(tenants) for _ in range(num_requests)]

    def worker(share: list[str]) -> list[tuple[str, str, int, int]]:
        with httpx.Client(base_url=url, timeout=30) as http:
            sent = []
            for tenant in share:
                time.sleep(pause_s)
                sent.append((tenant, *chat(http, TENANT_KEYS[tenant], prompt)))
            return sent

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return [one for sent in pool.map(worker, [plan[i::4] for i in range(4)]) for one in sent]


def data(url: str, key: str | None = ADMIN_KEY) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{url}/dashboard/data", headers=headers, timeout=10)


def wait_for_totals(url: str, requests: int, timeout_s: float = 10) -> dict[str, Any]:
    """The data once its sealed buckets hold `requests` requests (the open bucket is not shown)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = dict(data(url).json())
        if body["totals"]["requests"] >= requests:
            return body
        time.sleep(0.2)
    raise AssertionError(f"the dashboard's totals did not reach {requests} requests in {timeout_s} s")


def test_data_counts_known_traffic(front: ServerProcess) -> None:
    before = data(front.url).json()["totals"]
    sent = drive(front.url, 120)
    body = wait_for_totals(front.url, before["requests"] + len(sent))
    totals = body["totals"]

    assert totals["requests"] - before["requests"] == len(sent)
    assert totals["errors"] == before["errors"] == 0
    assert totals["completion_tokens"] - before["completion_tokens"] == sum(out for *_, out in sent)
    cost = sum((tokens_in * PRICES[d][0] + out * PRICES[d][1]) / 1e6 for _, d, tokens_in, out in sent)
    assert totals["cost_usd"] - before["cost_usd"] == pytest.approx(cost)
    per_tenant = Counter(tenant for tenant, *_ in sent)
    for tenant, count in per_tenant.items():
        seen = totals["tenants"][tenant]["requests"] - before["tenants"].get(tenant, {}).get("requests", 0)
        assert seen == count, tenant
    per_arm = Counter(deployment for _, deployment, *_ in sent)
    before_arms = before.get("splits", {}).get("chat", {})
    assert {d: n - before_arms.get(d, 0) for d, n in totals["splits"]["chat"].items()} == per_arm
    assert per_arm["small"] > per_arm["large"] > 0  # weights 3:1

    # Columns line up with the bucket times; the series show the traffic.
    num_buckets = len(body["t"])
    assert num_buckets >= 1
    assert body["t"] == sorted(body["t"])
    assert all(len(body[k]) == num_buckets for k in ("requests_per_s", "prompt_tokens_per_s"))
    assert sum(body["requests_per_s"]) * body["interval_s"] == pytest.approx(totals["requests"])
    ttft_p95 = [v for v in body["ttft_ms"]["p95"] if v is not None]
    tpot_p50 = [v for v in body["tpot_ms"]["p50"] if v is not None]
    assert ttft_p95
    assert max(ttft_p95) >= 4  # the stubs wait at least 4 ms before the first token
    assert tpot_p50
    assert min(tpot_p50) > 0
    assert set(body["tenants"]) == set(TENANT_KEYS)
    assert {"small", "large", "smollm2-135m-instruct"} <= set(body["deployments"])
    kv = [v for v in body["deployments"]["smollm2-135m-instruct"]["kv_usage"] if v is not None]
    assert kv
    assert all(0 <= v <= 1 for v in kv)
    assert body["deployments"]["small"]["kv_usage"][-1] is None  # a remote upstream has no KV cache
    shares = [s for s in zip(*body["splits"]["chat"].values(), strict=True) if None not in s]
    assert shares
    assert all(sum(s) == pytest.approx(1) for s in shares)


def test_data_needs_an_admin_key_but_the_page_does_not(front: ServerProcess) -> None:
    assert data(front.url, key=None).status_code == 401
    assert data(front.url, key=TENANT_KEYS["alpha"]).status_code == 403
    assert data(front.url).status_code == 200

    page = httpx.get(f"{front.url}/dashboard", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/dashboard/assets/vendor/uPlot.iife.min.js" in page.text
    library = httpx.get(f"{front.url}/dashboard/assets/vendor/uPlot.iife.min.js", timeout=10)
    assert library.status_code == 200
    assert "uPlot" in library.text
    assert "MIT" in httpx.get(f"{front.url}/dashboard/assets/vendor/uPlot.LICENSE.txt", timeout=10).text
    assert httpx.get(f"{front.url}/dashboard/assets/..%2F..%2Fapp.py", timeout=10).status_code == 404
    assert httpx.get(f"{front.url}/dashboard/assets/nothing.js", timeout=10).status_code == 404


def test_page_is_open_without_admin_keys_and_says_no_traffic_yet(
    stubs: dict[str, StubProcess], tmp_path: Path
) -> None:
    """No admin_api_keys: page and data answer anyone who reaches the listen address (127.0.0.1 unless
    the config says another), and before any request the charts say so instead of drawing nothing."""
    config = {"deployments": [{"name": "small", "kind": "remote", "base_url": f"{stubs['small'].url}/v1"}]}
    server = start_server(config, tmp_path)
    try:
        assert data(server.url, key=None).status_code == 200
        with chromium(tmp_path / "chromium") as browser:
            browser.navigate(f"{server.url}/dashboard")
            # The deployment's queue is sampled whether or not requests come: it shows within a bucket.
            browser.wait_for("document.querySelector('[data-chart=queue]')?.dataset.state === 'drawn'", 15)
            charts = browser.evaluate(CHART_STATES)
            login_hidden = browser.evaluate("document.getElementById('login').hidden")
            assert browser.errors == []
    finally:
        server.stop()

    assert login_hidden
    for name in ("requests", "tokens", "ttft", "tpot", "tenant-requests", "tenant-cost", "splits"):
        assert charts[name]["state"] == "empty", name
        assert charts[name]["empty"] == "no traffic yet", name
    assert charts["slo"]["empty"] == "SLO status needs an admin key (admin_api_keys)"
    assert charts["kv"]["empty"] == "no KV cache: no local LLM deployment is ready"


def test_data_is_shown_to_no_one_where_tenants_have_keys_but_there_is_no_admin_key() -> None:
    config = ServerConfig(
        tenants=[TenantConfig(name="alpha", api_keys=[TENANT_KEYS["alpha"]])],
        deployments=[RemoteDeploymentConfig(name="up", base_url="http://127.0.0.1:9/v1")],
    )

    async def get(key: str | None) -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(config))
        headers = {"authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
            return await http.get("/dashboard/data", headers=headers)

    for key in (None, TENANT_KEYS["alpha"]):
        response = asyncio.run(get(key))
        assert response.status_code == 403
        assert "set admin_api_keys" in response.json()["error"]["message"]


def test_page_draws_every_chart_under_traffic(front: ServerProcess, tmp_path: Path) -> None:
    # History the page must show as soon as it opens; the drift reference window (the route's first 20
    # requests) has short prompts, the current one long prompts.
    drive(front.url, 40)
    drive(front.url, 60, prompt=LONG)
    drift = httpx.get(f"{front.url}/v1/drift", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
    traffic = concurrent.futures.ThreadPoolExecutor(1).submit(drive, front.url, 200, 0.02, LONG)
    try:
        with chromium(tmp_path / "chromium") as browser:
            browser.navigate(f"{front.url}/dashboard")
            # The data needs an admin key: the page asks for one, keeps it and goes on.
            browser.wait_for("!document.getElementById('login').hidden", timeout_s=15)
            browser.evaluate(
                f"document.getElementById('key').value = {ADMIN_KEY!r};"
                "document.getElementById('login').requestSubmit(); true"
            )
            browser.wait_for("Number(document.body.dataset.refreshes) >= 2", timeout_s=15)
            charts = browser.evaluate(CHART_STATES)
            legend = browser.evaluate(
                "document.querySelector('[data-chart=tenant-requests] .u-legend').textContent"
            )
            kpi = browser.evaluate("document.getElementById('kpi-requests').textContent")
            panel = browser.evaluate(DRIFT_PANEL)
            stored_key = browser.evaluate("localStorage.getItem('inferline.adminKey')")
            ARTIFACT.unlink(missing_ok=True)
            browser.screenshot(ARTIFACT)
            assert browser.errors == []
    finally:
        traffic.result()

    assert set(charts) == {*CHARTS, "split-chat"}
    for name, chart in charts.items():
        assert chart["state"] == "drawn", (name, chart)
        assert chart["points"] > 0, (name, chart)
        assert chart["canvas"], name
    assert all(tenant in legend for tenant in TENANT_KEYS)
    assert kpi not in ("–", "0")
    [report] = drift["routes"]
    assert panel["state"] == "drawn"
    assert panel["signals"] == len(report["signals"]) > 0
    assert all(signal["metric"] in panel["text"] for signal in report["signals"])
    assert "prompt_tokens" in panel["flagged"]
    assert panel["alerts"] == len(panel["flagged"])
    assert stored_key == ADMIN_KEY

    image = Image.open(ARTIFACT)
    assert image.format == "PNG"
    assert image.width >= 1200
    assert image.height >= 900
    assert ARTIFACT.stat().st_size > 50_000
    # Lines, labels and legends in many colours, not a blank page.
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 200
