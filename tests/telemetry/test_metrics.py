"""The Prometheus families fed by UsageRecords: exact counts and histograms after known records."""

from __future__ import annotations

from typing import Any

import pytest

from inferline.telemetry.metrics import Metrics
from inferline.types import UsageRecord
from tests.telemetry.records import usage_record


def usage(**fields: Any) -> UsageRecord:
    defaults = {"prompt_tokens": 10, "ttft_s": 0.004, "latency_s": 0.02, "cost": 0.25, "policy": "fixed"}
    return usage_record(**{**defaults, **fields})


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist (yet)."""
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_answered_requests_fill_counters_and_histograms_exactly() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.record_usage(usage())
    arm = {"route": "chat", "deployment": "small"}
    assert value(metrics, "inferline_route_requests_total", **arm, outcome="ok") == 3
    assert value(metrics, "inferline_route_latency_seconds_count", **arm) == 3
    assert value(metrics, "inferline_route_latency_seconds_sum", **arm) == pytest.approx(0.06)
    assert value(metrics, "inferline_route_latency_seconds_bucket", **arm, le="0.01") == 0
    assert value(metrics, "inferline_route_latency_seconds_bucket", **arm, le="0.025") == 3
    assert value(metrics, "inferline_route_ttft_seconds_bucket", **arm, le="0.0025") == 0
    assert value(metrics, "inferline_route_ttft_seconds_bucket", **arm, le="0.005") == 3
    # TPOT = (0.02 - 0.004) / (5 - 1) = 0.004 s
    assert value(metrics, "inferline_route_tpot_seconds_sum", **arm) == pytest.approx(0.012)
    assert value(metrics, "inferline_route_tpot_seconds_bucket", **arm, le="0.0025") == 0
    assert value(metrics, "inferline_route_tpot_seconds_bucket", **arm, le="0.005") == 3
    assert value(metrics, "inferline_route_cost_usd_total", **arm) == pytest.approx(0.75)
    assert value(metrics, "inferline_tenant_tokens_total", tenant="alpha", kind="prompt") == 30
    assert value(metrics, "inferline_tenant_tokens_total", tenant="alpha", kind="completion") == 15
    assert value(metrics, "inferline_tenant_cost_usd_total", tenant="alpha") == pytest.approx(0.75)
    assert value(metrics, "inferline_tenant_requests_total", tenant="alpha", outcome="ok") == 3
    decision = {"route": "chat", "policy": "fixed", "deployment": "small"}
    assert value(metrics, "inferline_router_decisions_total", **decision) == 3


def test_failures_are_counted_but_stay_out_of_the_latency_histograms() -> None:
    metrics = Metrics()
    metrics.record_usage(usage(outcome="error", ttft_s=None, completion_tokens=0, cost=0.0))
    metrics.record_usage(usage(outcome="aborted", latency_s=9.0))
    metrics.record_usage(
        usage(
            deployment="",
            outcome="error",
            prompt_tokens=0,
            completion_tokens=0,
            error_type="BackendUnavailableError",
        )
    )
    arm = {"route": "chat", "deployment": "small"}
    assert value(metrics, "inferline_route_requests_total", **arm, outcome="error") == 1
    assert value(metrics, "inferline_route_requests_total", **arm, outcome="aborted") == 1
    assert value(metrics, "inferline_route_requests_total", route="chat", deployment="", outcome="error") == 1
    for family in ("latency", "ttft", "tpot"):
        assert value(metrics, f"inferline_route_{family}_seconds_count", **arm) == 0
    # The aborted stream's tokens were spent all the same.
    assert value(metrics, "inferline_tenant_tokens_total", tenant="alpha", kind="completion") == 5
    assert value(metrics, "inferline_tenant_requests_total", tenant="alpha", outcome="error") == 2


def test_cached_label_children_never_mix_labels() -> None:
    metrics = Metrics()
    kinds = [
        usage(tenant="alpha", route="chat", deployment="small", prompt_tokens=1, latency_s=0.001),
        usage(tenant="beta", route="chat", deployment="small", prompt_tokens=10, latency_s=0.2),
        usage(tenant="alpha", route="code", deployment="big", prompt_tokens=100, latency_s=3.0),
        usage(tenant="alpha", route="chat", deployment="small", prompt_tokens=1000, degraded=True),
    ]
    for _ in range(2):  # the second round goes through the cached children
        for record in kinds:
            metrics.record_usage(record)
    assert value(metrics, "inferline_tenant_tokens_total", tenant="alpha", kind="prompt") == 2 * 1101
    assert value(metrics, "inferline_tenant_tokens_total", tenant="beta", kind="prompt") == 2 * 10
    assert (
        value(metrics, "inferline_route_requests_total", route="chat", deployment="small", outcome="ok") == 6
    )
    assert value(metrics, "inferline_route_requests_total", route="code", deployment="big", outcome="ok") == 2
    small = {"route": "chat", "deployment": "small"}
    assert value(metrics, "inferline_route_latency_seconds_bucket", **small, le="0.001") == 2
    assert value(metrics, "inferline_route_latency_seconds_bucket", **small, le="0.25") == 6
    big = {"route": "code", "deployment": "big"}
    assert value(metrics, "inferline_route_latency_seconds_bucket", **big, le="2.5") == 0
    assert value(metrics, "inferline_route_latency_seconds_count", **big) == 2
    assert value(metrics, "inferline_router_degradations_total", **small) == 2
    assert value(metrics, "inferline_router_degradations_total", **big) == 0


def test_router_decisions_count_arms_cascade_stages_and_rejections() -> None:
    metrics = Metrics()
    for arm, count in (("a", 3), ("b", 1)):
        for _ in range(count):
            metrics.record_usage(usage(route="split", policy="weighted", deployment=arm))
    for stage in (1, 2, 2):
        metrics.record_usage(
            usage(route="steps", policy="cascade", deployment=f"s{stage}", cascade_stage=stage)
        )
    for reason in ("QueueFullError", "LimitExceededError", "LimitExceededError"):
        metrics.record_usage(
            usage(route="split", policy="weighted", deployment="", outcome="rejected", error_type=reason)
        )
    split = {"route": "split", "policy": "weighted"}
    assert value(metrics, "inferline_router_decisions_total", **split, deployment="a") == 3
    assert value(metrics, "inferline_router_decisions_total", **split, deployment="b") == 1
    assert value(metrics, "inferline_router_decisions_total", **split, deployment="") == 0
    assert value(metrics, "inferline_router_cascade_stage_total", route="steps", stage="1") == 1
    assert value(metrics, "inferline_router_cascade_stage_total", route="steps", stage="2") == 2
    assert value(metrics, "inferline_router_rejections_total", route="split", reason="QueueFullError") == 1
    assert (
        value(metrics, "inferline_router_rejections_total", route="split", reason="LimitExceededError") == 2
    )


def test_http_requests_are_counted_by_route_and_status() -> None:
    metrics = Metrics()
    metrics.observe_http("/v1/chat/completions", 200, 0.003)
    metrics.observe_http("/v1/chat/completions", 200, 0.5)
    metrics.observe_http("/v1/chat/completions", 429, 0.001)
    chat = {"route": "/v1/chat/completions"}
    assert value(metrics, "inferline_http_requests_total", **chat, status="200") == 2
    assert value(metrics, "inferline_http_requests_total", **chat, status="429") == 1
    assert value(metrics, "inferline_http_request_duration_seconds_count", **chat) == 3
    assert value(metrics, "inferline_http_request_duration_seconds_bucket", **chat, le="0.005") == 2
