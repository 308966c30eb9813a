"""Metric arithmetic on hand-made timings: every figure checked against a number worked out by hand."""

import pytest

from inferline.bench.metrics import (
    SLO,
    Distribution,
    compute_metrics,
    pooled_itl_s,
    request_tpot_s,
)
from inferline.bench.record import RequestRecord
from inferline.errors import InvalidRequestError


def record(
    send: float, tokens: list[float], end: float, out: int | None = None, prompt: int = 10
) -> RequestRecord:
    return RequestRecord(send, end, tokens, len(tokens) if out is None else out, prompt)


def failed(message: str) -> RequestRecord:
    return RequestRecord(0.0, 0.1, [], 0, None, message)


# ---- distributions (their percentiles are inferline.stats.percentile: tests/test_stats.py) ------------


def test_distribution_of_values_and_of_nothing() -> None:
    d = Distribution.of([1.0, 2.0, 3.0, 4.0, 10.0])
    assert d is not None
    assert (d.count, d.mean, d.median, d.max) == (5, 4.0, 3.0, 10.0)
    assert d.p99 == pytest.approx(4.0 + 0.96 * 6.0)  # rank 3.96
    assert Distribution.of([]) is None


# ---- per-request latencies ---------------------------------------------------------------------


def test_ttft_tpot_e2e_of_one_request() -> None:
    r = record(send=10.0, tokens=[10.5, 10.6, 10.8, 11.1], end=11.2, out=5)
    assert r.ttft_s == pytest.approx(0.5)
    assert r.e2e_s == pytest.approx(1.2)
    assert request_tpot_s(r) == pytest.approx((1.2 - 0.5) / 4)  # (E2E − TTFT) / (out − 1)


def test_tpot_excludes_one_token_requests() -> None:
    one = record(send=0.0, tokens=[0.3], end=0.4, out=1)
    assert request_tpot_s(one) is None
    two = record(send=0.0, tokens=[0.3, 0.5], end=0.5)
    metrics = compute_metrics([one, two], duration_s=1.0)
    assert metrics.tpot_s is not None
    assert metrics.tpot_s.count == 1
    assert metrics.tpot_s.mean == pytest.approx(0.2)
    assert metrics.ttft_s is not None
    assert metrics.ttft_s.count == 2


def test_request_with_no_text_has_no_ttft() -> None:
    empty = record(send=0.0, tokens=[], end=0.2, out=0)
    assert empty.ttft_s is None
    assert request_tpot_s(empty) is None
    assert compute_metrics([empty], 1.0).ttft_s is None


def test_itl_pools_every_gap_of_every_request() -> None:
    a = record(0.0, [1.0, 1.1, 1.3], 1.3)  # gaps 0.1, 0.2
    b = record(0.0, [2.0, 2.4], 2.4)  # gap 0.4
    c = record(0.0, [3.0], 3.0)  # none
    assert pooled_itl_s([a, b, c]) == pytest.approx([0.1, 0.2, 0.4])
    itl = compute_metrics([a, b, c], 4.0).itl_s
    assert itl is not None
    assert (itl.count, itl.mean, itl.median) == (3, pytest.approx(0.7 / 3), pytest.approx(0.2))


# ---- a load point ------------------------------------------------------------------------------


def test_throughputs_count_successful_requests_over_the_duration() -> None:
    records = [
        record(0.0, [0.1, 0.2, 0.3], 0.3, out=3, prompt=100),
        record(0.0, [0.2, 0.4], 0.4, out=2, prompt=50),
        failed("HTTP 500: boom"),
    ]
    m = compute_metrics(records, duration_s=2.0)
    assert (m.num_requests, m.num_succeeded, m.num_failed) == (3, 2, 1)
    assert (m.input_tokens, m.output_tokens) == (150, 5)
    assert m.request_throughput_rps == pytest.approx(1.0)
    assert m.output_throughput_tps == pytest.approx(2.5)
    assert m.total_token_throughput_tps == pytest.approx(77.5)
    assert m.goodput_rps is None  # no SLO set
    assert m.e2e_s is not None
    assert m.e2e_s.count == 2


def test_errors_are_counted_by_message_most_frequent_first() -> None:
    records = [failed("timeout"), failed("HTTP 404: no model"), failed("HTTP 404: no model")]
    m = compute_metrics(records, 1.0)
    assert list(m.errors.items()) == [("HTTP 404: no model", 2), ("timeout", 1)]
    assert (m.num_succeeded, m.num_failed, m.request_throughput_rps) == (0, 3, 0.0)
    assert m.ttft_s is None
    assert m.tpot_s is None
    assert m.itl_s is None
    assert m.e2e_s is None


def test_goodput_counts_requests_meeting_every_target() -> None:
    fast = record(0.0, [0.2, 0.25, 0.3], 0.3)  # TTFT 0.2, TPOT 0.05, E2E 0.3
    slow_start = record(0.0, [1.5, 1.55, 1.6], 1.6)  # TTFT 1.5
    slow_decode = record(0.0, [0.2, 0.6, 1.0], 1.0)  # TPOT 0.4
    single = record(0.0, [0.5], 0.5, out=1)  # no TPOT: the TPOT target does not apply
    records = [fast, slow_start, slow_decode, single, failed("x")]
    slo = SLO(ttft_s=1.0, tpot_s=0.1)
    assert [slo.met_by(r) for r in records[:4]] == [True, False, False, True]
    assert compute_metrics(records, 2.0, slo).goodput_rps == pytest.approx(1.0)
    assert compute_metrics(records, 2.0, SLO(e2e_s=0.5)).goodput_rps == pytest.approx(1.0)
    assert compute_metrics(records, 2.0, SLO(ttft_s=10.0)).goodput_rps == pytest.approx(2.0)


def test_duration_must_be_positive() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        compute_metrics([], 0.0)


# ---- SLO parsing -------------------------------------------------------------------------------


def test_slo_parses_seconds_and_milliseconds() -> None:
    assert SLO.parse("ttft=1.0,tpot=0.1") == SLO(ttft_s=1.0, tpot_s=0.1)
    assert SLO.parse(" e2e=20s , tpot=50ms") == SLO(tpot_s=0.05, e2e_s=20.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("latency=1", "not a target"),
        ("ttft", "not a target"),
        ("ttft=-1", "positive"),
        ("ttft=abc", "positive"),
        ("ttft=inf", "positive"),
        ("", "empty"),
    ],
)
def test_slo_rejects_bad_targets_naming_them(text: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        SLO.parse(text)
