"""How requests are offered to the server: a closed loop at fixed concurrency, or an open loop at a rate.

Closed loop: C workers, each sending its next request as soon as its last one finished, so at most C
are in flight. Open loop: requests leave on a seeded schedule whatever the server's state; gaps are
drawn from a gamma distribution of shape `burstiness` (1 is a Poisson process; below 1 burstier,
above 1 more regular) and rescaled so the last request leaves at exactly N / rate, as `vllm bench
serve` does: every draw of a point lasts as long, so repeated runs compare.
A point's duration runs from its start to the last request's end.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from inferline.bench.record import RequestRecord
from inferline.bench.workload import BenchRequest

Send = Callable[[BenchRequest], Awaitable[RequestRecord]]
OnDone = Callable[[RequestRecord], None]


@dataclass
class PointRun:
    records: list[RequestRecord]
    """One per request, in workload order."""
    started_s: float
    """perf_counter() at the point's start."""
    duration_s: float
    """From the start to the last request's end."""


def arrival_offsets_s(num_requests: int, request_rate: float, burstiness: float, seed: int) -> list[float]:
    """When each request leaves, in seconds after the point's start; an infinite rate sends all at 0."""
    if num_requests < 1:
        return []
    if math.isinf(request_rate):
        return [0.0] * num_requests
    if not request_rate > 0 or not burstiness > 0:
        raise ValueError(f"request_rate and burstiness must be positive; got {request_rate}, {burstiness}")
    rng = np.random.default_rng(seed)
    # Shape k and scale 1/(rate*k) give a mean gap of 1/rate whatever the burstiness.
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=num_requests)
    sends = np.cumsum(gaps)
    sends *= (num_requests / request_rate) / sends[-1]
    return sends.tolist()


async def run_closed_loop(
    send: Send, requests: Sequence[BenchRequest], concurrency: int, on_done: OnDone | None = None
) -> PointRun:
    records: list[RequestRecord | None] = [None] * len(requests)
    pending = iter(enumerate(requests))  # shared by the workers: no await between next() calls

    async def worker() -> None:
        for index, request in pending:
            records[index] = record = await send(request)
            if on_done is not None:
                on_done(record)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
    return PointRun(_all(records), started, time.perf_counter() - started)


async def run_open_loop(
    send: Send,
    requests: Sequence[BenchRequest],
    offsets_s: Sequence[float],
    max_concurrency: int | None = None,
    on_done: OnDone | None = None,
) -> PointRun:
    records: list[RequestRecord | None] = [None] * len(requests)
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def one(index: int, request: BenchRequest) -> None:
        if limit is None:
            records[index] = await send(request)
        else:
            async with limit:
                records[index] = await send(request)
        if on_done is not None:
            on_done(records[index])  # type: ignore[arg-type]

    started = time.perf_counter()
    tasks = []
    for index, (request, offset) in enumerate(zip(requests, offsets_s, strict=True)):
        delay = started + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, request)))
    await asyncio.gather(*tasks)
    return PointRun(_all(records), started, time.perf_counter() - started)


def _all(records: list[RequestRecord | None]) -> list[RequestRecord]:
    done = [r for r in records if r is not None]
    if len(done) != len(records):
        raise RuntimeError("a benchmark request finished without a record")
    return done
