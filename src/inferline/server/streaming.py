"""Work that stops when the client leaves, and the SSE response built on it.

`until_disconnect` runs a piece of work in the request's own task while one watcher task listens for
the client going away and, if it does, cancels the work (aborting its engine or upstream requests).
`EventStream` streams a body that way: Starlette's StreamingResponse runs two tasks in an anyio task
group per response for the same job, a fixed cost every stream paid on top of its tokens.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar, cast

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

Watch = Callable[[], Awaitable[None]]
"""Resolves when the client has gone away."""


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


DONE = sse("[DONE]")
"""Every stream's last event."""


class ClientDisconnectedError(Exception):
    """The client went away before the work was done; the work was cancelled."""


def disconnect_watch(receive: Receive) -> Watch:
    """A watch over the request's messages (its body already read, the next one says it left)."""

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return watch


async def until_disconnect(work: Awaitable[T], watch: Watch) -> T:
    """Run `work` unless the client disconnects first; then cancel it and raise ClientDisconnectedError.

    The watcher can only run while this task is suspended inside `work` (nothing is awaited between
    `work` returning and the watcher's cancellation), so its cancellation always lands inside `work`,
    whose own cleanup then runs as for any cancellation."""
    current = cast("asyncio.Task[Any]", asyncio.current_task())
    disconnected = False

    async def watcher() -> None:
        nonlocal disconnected
        await watch()
        disconnected = True
        current.cancel()

    watching = asyncio.create_task(watcher())
    try:
        return await work
    except asyncio.CancelledError:
        if not disconnected:
            raise
        current.uncancel()
        raise ClientDisconnectedError from None
    finally:
        watching.cancel()


class EventStream(StreamingResponse):
    """A text/event-stream response streamed in the request's task; its `background` runs after the
    stream however it ended (the client leaving included). A chunk that ends with `last_event` ends
    the response in the same write (a stream without a fixed last event, None, ends with an empty one)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        headers: dict[str, str],
        last_event: bytes | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(body, headers={**headers, "cache-control": "no-cache"}, **kwargs)
        self.stream = body
        self.last_event = last_event

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def respond() -> None:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            ended = False
            async for chunk in self.stream:  # to its end, so the stream's own ending runs here
                ended = self.last_event is not None and chunk.endswith(self.last_event)
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await until_disconnect(respond(), disconnect_watch(receive))
        except (ClientDisconnectedError, OSError):  # OSError: a write after the client left (ASGI 2.4)
            pass
        finally:
            if self.background is not None:
                await self.background()
