"""A replica's stream leaves in lists of the deltas ready together: the first at once, what queued while the
caller was busy in one list, an engine error after the deltas before it, and closing it closes the engine's
stream (which aborts the request)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from inferline.cluster.replica import ready_together
from inferline.types import Delta


def delta(i: int) -> Delta:
    return Delta(request_id="r", index=0, text=str(i), token_ids=[i])


class Engine:
    """A stand-in engine stream: deltas put on `produced` come out in order; `closed` once it is closed."""

    def __init__(self) -> None:
        self.produced: asyncio.Queue[Delta | Exception | None] = asyncio.Queue()
        self.closed = False

    async def stream(self) -> AsyncGenerator[Delta, None]:
        try:
            while (item := await self.produced.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.closed = True


def test_the_first_delta_leaves_alone_and_those_that_queued_meanwhile_leave_together() -> None:
    async def run() -> list[list[str]]:
        engine = Engine()
        batches = ready_together(engine.stream())
        engine.produced.put_nowait(delta(0))
        first = await asyncio.wait_for(batches.__anext__(), 1)  # not held back for a second one
        for i in (1, 2, 3):  # the caller was busy: three deltas arrived meanwhile
            engine.produced.put_nowait(delta(i))
        await asyncio.sleep(0.01)
        engine.produced.put_nowait(None)
        rest = [batch async for batch in batches]
        return [[d.text for d in batch] for batch in (first, *rest)]

    assert asyncio.run(run()) == [["0"], ["1", "2", "3"]]


def test_an_engine_error_follows_the_deltas_before_it() -> None:
    async def run() -> list[str]:
        engine = Engine()
        for item in (delta(0), delta(1), ValueError("engine step failed")):
            engine.produced.put_nowait(item)
        texts: list[str] = []

        async def read() -> None:
            async for batch in ready_together(engine.stream()):
                texts.extend(d.text for d in batch)

        with pytest.raises(ValueError, match="engine step failed"):
            await read()
        return texts

    assert asyncio.run(run()) == ["0", "1"]


def test_closing_it_early_closes_the_engine_stream() -> None:
    async def run() -> bool:
        engine = Engine()
        batches = ready_together(engine.stream())
        engine.produced.put_nowait(delta(0))
        await batches.__anext__()
        await batches.aclose()  # the client left
        return engine.closed

    assert asyncio.run(run())
