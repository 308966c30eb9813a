"""DynamicBatcher: batches form from concurrent submits, respect max_batch_size rows, fail per batch,
refuse work past max_queued, and drain on close."""

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from inferline.errors import InvalidRequestError, QueueFullError
from inferline.runners.batcher import BatcherClosedError, DynamicBatcher


class Recorder:
    """A run_batch that doubles numbers and records every batch it was given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        return [2 * item for item in items]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def batcher(recorder: Recorder) -> Iterator[DynamicBatcher[int, int]]:
    batcher = DynamicBatcher(recorder, max_batch_size=8, max_queue_delay_us=20_000, max_queued=64)
    yield batcher
    batcher.close()


def test_concurrent_submits_share_batches(batcher: DynamicBatcher[int, int], recorder: Recorder) -> None:
    async def main() -> list[int]:
        return await asyncio.gather(*(batcher.submit(i) for i in range(32)))

    assert asyncio.run(main()) == [2 * i for i in range(32)]
    sizes = [len(batch) for batch in recorder.batches]
    assert len(sizes) <= 8  # 32 items at up to 8 per batch: 4 batches, a few more if the box is slow
    assert max(sizes) <= 8
    assert sorted(i for batch in recorder.batches for i in batch) == list(range(32))
    assert recorder.threads == {"inferline-batcher"}  # the worker thread, never the caller's
    stats = batcher.stats()
    assert (stats.num_batches, stats.queue_depth, stats.running) == (len(sizes), 0, 0)
    assert stats.mean_batch_size == pytest.approx(32 / len(sizes))


def test_a_lone_item_waits_at_most_the_queue_delay(recorder: Recorder) -> None:
    batcher = DynamicBatcher(recorder, max_batch_size=8, max_queue_delay_us=50_000, max_queued=8)
    started = time.perf_counter()
    assert asyncio.run(batcher.submit(21)) == 42
    assert 0.04 < time.perf_counter() - started < 1.0
    batcher.close()


def test_rows_never_exceed_max_batch_size(batcher: DynamicBatcher[int, int], recorder: Recorder) -> None:
    rows = [3, 5, 1, 8, 2, 7, 4, 4, 6, 1]

    async def main() -> list[int]:
        return await asyncio.gather(*(batcher.submit(i, num_rows=n) for i, n in enumerate(rows)))

    assert asyncio.run(main()) == [2 * i for i in range(len(rows))]
    assert all(sum(rows[i] for i in batch) <= 8 for batch in recorder.batches)
    assert [i for batch in recorder.batches for i in batch] == list(range(len(rows)))  # arrival order


def test_an_item_larger_than_max_batch_size_is_refused(batcher: DynamicBatcher[int, int]) -> None:
    with pytest.raises(InvalidRequestError, match=r"9 rows is larger than max_batch_size \(8\)"):
        asyncio.run(batcher.submit(1, num_rows=9))
    with pytest.raises(InvalidRequestError, match="at least one row"):
        asyncio.run(batcher.submit(1, num_rows=0))


def test_a_failing_batch_fails_its_callers_and_the_next_batch_works() -> None:
    def run_batch(items: list[int]) -> list[int]:
        if any(item < 0 for item in items):
            raise ValueError("negative input")
        return [item + 1 for item in items]

    batcher = DynamicBatcher(run_batch, max_batch_size=4, max_queue_delay_us=20_000, max_queued=16)

    async def main() -> list[int | BaseException]:
        return await asyncio.gather(*(batcher.submit(i) for i in (1, -1, 2)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, ValueError) and "negative input" in str(o) for o in outcomes)
    assert asyncio.run(batcher.submit(5)) == 6
    assert batcher.is_alive()
    batcher.close()


def test_a_wrong_number_of_results_fails_the_batch() -> None:
    batcher = DynamicBatcher(lambda items: [], max_batch_size=4, max_queue_delay_us=0, max_queued=4)
    with pytest.raises(RuntimeError, match="returned 0 results for 1"):
        asyncio.run(batcher.submit(1))
    batcher.close()


def test_queue_full_is_refused_at_once() -> None:
    release = threading.Event()
    started = threading.Event()

    def run_batch(items: list[int]) -> list[int]:
        started.set()
        release.wait(10)
        return items

    batcher = DynamicBatcher(run_batch, max_batch_size=1, max_queue_delay_us=0, max_queued=2)

    async def main() -> None:
        running = asyncio.ensure_future(batcher.submit(0))
        await asyncio.to_thread(started.wait, 10)  # item 0 occupies the worker
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert batcher.stats().queue_depth == 2
        assert batcher.stats().running == 1
        refused_at = time.perf_counter()
        with pytest.raises(QueueFullError, match="max_queued_requests=2") as excinfo:
            await batcher.submit(3)
        assert time.perf_counter() - refused_at < 0.05
        assert excinfo.value.retry_after_s >= 1.0
        release.set()
        assert await asyncio.gather(running, *waiting) == [0, 1, 2]

    asyncio.run(main())
    batcher.close()


def test_a_cancelled_caller_leaves_the_queue() -> None:
    release = threading.Event()
    seen: list[list[int]] = []

    def run_batch(items: list[int]) -> list[int]:
        seen.append(items)
        release.wait(10)
        return items

    batcher = DynamicBatcher(run_batch, max_batch_size=1, max_queue_delay_us=0, max_queued=4)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.02)
        doomed = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.01)
        doomed.cancel()
        await asyncio.sleep(0.01)
        assert batcher.stats().queue_depth == 0
        release.set()
        assert await first == 0

    asyncio.run(main())
    batcher.close()
    assert seen == [[0]]


def test_close_drains_waiting_items_then_refuses(recorder: Recorder) -> None:
    batcher = DynamicBatcher(recorder, max_batch_size=4, max_queue_delay_us=5_000_000, max_queued=16)

    async def main() -> list[int]:
        futures = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.01)  # queued, waiting out the 5 s delay for a fourth item
        await asyncio.to_thread(batcher.close)
        return await asyncio.gather(*futures)

    started = time.perf_counter()
    assert asyncio.run(main()) == [0, 2, 4]
    assert time.perf_counter() - started < 2.0  # close did not wait out the delay
    assert not batcher.is_alive()
    with pytest.raises(BatcherClosedError):
        asyncio.run(batcher.submit(1))


def test_bad_settings_are_refused(recorder: Recorder) -> None:
    with pytest.raises(ValueError, match="max_batch_size >= 1"):
        DynamicBatcher(recorder, max_batch_size=0, max_queue_delay_us=0, max_queued=1)
