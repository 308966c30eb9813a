"""Open-loop arrival schedules and the two load loops, with a fake server that only sleeps."""

import asyncio
import math
import statistics
import time

import pytest

from inferline.bench.load import arrival_offsets_s, run_closed_loop, run_open_loop
from inferline.bench.record import RequestRecord
from inferline.bench.workload import BenchRequest


def test_arrivals_are_seeded() -> None:
    assert arrival_offsets_s(50, 2.0, 1.0, seed=3) == arrival_offsets_s(50, 2.0, 1.0, seed=3)
    assert arrival_offsets_s(50, 2.0, 1.0, seed=3) != arrival_offsets_s(50, 2.0, 1.0, seed=4)


@pytest.mark.parametrize(("rate", "burstiness"), [(0.5, 1.0), (4.0, 1.0), (10.0, 0.3), (2.0, 5.0)])
def test_arrivals_mean_gap_is_one_over_rate_and_run_lasts_n_over_rate(rate: float, burstiness: float) -> None:
    num = 1000
    sends = arrival_offsets_s(num, rate, burstiness, seed=0)
    gaps = [b - a for a, b in zip([0.0, *sends], sends, strict=False)]
    assert sends == sorted(sends)
    assert sends[0] > 0
    assert sends[-1] == pytest.approx(num / rate)  # rescaled: every draw lasts N / R
    assert statistics.fmean(gaps) == pytest.approx(1 / rate)


def test_poisson_gaps_look_exponential_and_burstiness_shapes_them() -> None:
    def coefficient_of_variation(burstiness: float) -> float:
        sends = arrival_offsets_s(5000, 1.0, burstiness, seed=1)
        gaps = [b - a for a, b in zip([0.0, *sends], sends, strict=False)]
        return statistics.pstdev(gaps) / statistics.fmean(gaps)

    # A gamma of shape k has CV 1/sqrt(k): 1 for Poisson, larger when burstier, smaller when regular.
    assert coefficient_of_variation(1.0) == pytest.approx(1.0, abs=0.05)
    assert coefficient_of_variation(0.25) == pytest.approx(2.0, abs=0.2)
    assert coefficient_of_variation(4.0) == pytest.approx(0.5, abs=0.05)


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_offsets_s(3, math.inf, 1.0, seed=0) == [0.0, 0.0, 0.0]
    assert arrival_offsets_s(0, 1.0, 1.0, seed=0) == []


class FakeServer:
    """Answers every request after `latency_s`, tracking how many are in flight at once."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.sent_at: list[float] = []

    async def send(self, request: BenchRequest) -> RequestRecord:
        started = time.perf_counter()
        self.sent_at.append(started)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(self.latency_s)
        self.in_flight -= 1
        now = time.perf_counter()
        return RequestRecord(started, now, [now], 1, len(request.prompt or ""))


REQUESTS = [BenchRequest("x" * i, None, 1) for i in range(1, 11)]


def test_closed_loop_keeps_exactly_c_in_flight_and_records_in_order() -> None:
    server, done = FakeServer(0.01), []
    run = asyncio.run(run_closed_loop(server.send, REQUESTS, concurrency=3, on_done=done.append))
    assert server.max_in_flight == 3
    assert [r.prompt_tokens for r in run.records] == list(range(1, 11))  # workload order
    assert len(done) == 10
    # 10 requests, 3 at a time, 10 ms each: 4 rounds.
    assert 0.035 <= run.duration_s < 0.5


def test_closed_loop_with_more_workers_than_requests() -> None:
    server = FakeServer(0.0)
    run = asyncio.run(run_closed_loop(server.send, REQUESTS[:2], concurrency=64))
    assert len(run.records) == 2


def test_open_loop_sends_on_schedule_whatever_the_server_does() -> None:
    server = FakeServer(0.2)  # slower than the gaps: requests pile up, the schedule does not wait
    offsets = [0.0, 0.02, 0.04, 0.06]
    run = asyncio.run(run_open_loop(server.send, REQUESTS[:4], offsets))
    sent = [t - run.started_s for t in server.sent_at]
    assert sent == pytest.approx(offsets, abs=0.015)
    assert server.max_in_flight == 4
    assert 0.26 <= run.duration_s < 0.6


def test_open_loop_cap_limits_requests_in_flight() -> None:
    server = FakeServer(0.01)
    run = asyncio.run(run_open_loop(server.send, REQUESTS, [0.0] * 10, max_concurrency=2))
    assert server.max_in_flight == 2
    assert len(run.records) == 10
