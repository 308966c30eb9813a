"""The asyncio face of the engine: submit a request, async-iterate its deltas, abort it.

The EngineCore runs on one background thread so the event loop stays free for I/O while the model
computes. Callers never touch the core directly: adds and aborts go through an inbox that the engine
thread drains before every step, so an abort frees its blocks before the next step runs.

The engine thread builds the core as well as running it. libgomp gives every thread that starts a
parallel region a pool of worker threads of its own, and once a process holds more OpenMP threads than
cores, each of them spins only ~100 times at a barrier before it sleeps on a futex: a sleep and a wake-up
per parallel region. A model loaded on another thread left that thread's pool behind, and cost a lone
stream decoding on two threads 40 % of its speed (144 tok/s in process, 81 served).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from dataclasses import dataclass

from inferline.config import EngineConfig
from inferline.engine.core import EngineCore, EngineStats
from inferline.errors import EngineStoppedError, InferlineError, InvalidRequestError
from inferline.types import Delta, Request

logger = logging.getLogger(__name__)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    deltas: asyncio.Queue[Delta | BaseException]


class AsyncEngine:
    def __init__(self, build_core: Callable[[], EngineCore]) -> None:
        """Start the engine thread; it builds the core with `build_core`, then runs it. Returns once the
        core is built, raising whatever building it raised."""
        self._inbox: queue.SimpleQueue[tuple[str, Request | str]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._accepting = True
        self._stopped = False
        self._mean_request_s = 0.0
        self.core: EngineCore
        built: Future[None] = Future()
        self._thread = threading.Thread(target=self._own, args=(build_core, built), name="inferline-engine")
        self._thread.daemon = True
        self._thread.start()
        built.result()

    @classmethod
    async def load(cls, config: EngineConfig) -> AsyncEngine:
        """Load the model on the engine thread, without blocking the event loop."""
        return await asyncio.to_thread(cls, lambda: EngineCore(config))

    # ---- the caller's side --------------------------------------------------------------------

    async def generate(self, request: Request) -> AsyncGenerator[Delta, None]:
        """Deltas of `request` as the engine produces them; leaving the loop early aborts the request."""
        if not self._accepting:
            raise EngineStoppedError("the engine is shutting down and takes no new requests")
        if request.request_id in self._streams:
            raise InvalidRequestError(f"request id {request.request_id!r} is already in flight", "request_id")
        self.core.validate(request)
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request.request_id] = stream
        self._send("add", request)
        started = time.monotonic()
        finished = False
        try:
            while True:
                item = await stream.deltas.get()
                if isinstance(item, BaseException):
                    raise item
                if item.usage is not None:
                    finished = True
                    elapsed = time.monotonic() - started
                    self._mean_request_s = (
                        elapsed if not self._mean_request_s else (0.9 * self._mean_request_s + 0.1 * elapsed)
                    )
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request.request_id, None)
            if not finished:
                self.abort(request.request_id)

    def abort(self, request_id: str) -> None:
        self._send("abort", request_id)

    def stats(self) -> EngineStats:
        return self.core.stats()

    @property
    def num_unfinished(self) -> int:
        """Requests accepted and not yet finished, including those not yet seen by the engine thread."""
        return len(self._streams)

    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self._stopped

    @property
    def mean_request_s(self) -> float:
        """Moving average of request durations (submit to last delta); 0 before the first finishes."""
        return self._mean_request_s

    async def shutdown(self, drain_timeout_s: float = 30.0) -> None:
        """Stop taking requests, let those in flight finish for up to `drain_timeout_s`, then stop."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout_s
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for request_id in list(self._streams):
            self.abort(request_id)
        self._stopped = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join, 10.0)

    def _send(self, kind: str, payload: Request | str) -> None:
        self._inbox.put((kind, payload))
        self._wake.set()

    # ---- the engine thread --------------------------------------------------------------------

    def _own(self, build_core: Callable[[], EngineCore], built: Future[None]) -> None:
        try:
            self.core = build_core()
        except BaseException as error:
            built.set_exception(error)
            return
        built.set_result(None)
        self._run()

    def _run(self) -> None:
        while not self._stopped:
            self._drain_inbox()
            if not self.core.has_unfinished():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                deltas = self.core.step()
            except Exception as error:  # a failed step must not take the engine down with it
                logger.exception("engine step failed; aborting the requests in flight")
                self._fail_all(error)
                continue
            for delta in deltas:
                self._deliver(delta.request_id, delta)

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "abort":
                assert isinstance(payload, str)
                for delta in self.core.abort(payload):
                    self._deliver(payload, delta)
                continue
            assert isinstance(payload, Request)
            try:
                self.core.add_request(payload)
            except InferlineError as error:
                self._deliver(payload.request_id, error)

    def _deliver(self, request_id: str, item: Delta | BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is None:
            return
        try:
            stream.loop.call_soon_threadsafe(stream.deltas.put_nowait, item)
        except RuntimeError:  # the caller's event loop is closed: nobody is listening any more
            self._streams.pop(request_id, None)
            self.core.abort(request_id)

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self.core.requests):
            self.core.abort(request_id)
            self._deliver(request_id, error)
