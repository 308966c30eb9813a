"""Raw ASGI input and output for the small apps that run without a framework: the stub upstream (no
framework on its hot path, so that it stands in for a model server when the router's own overhead is
measured in microseconds) and the edge agent's front."""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive, Scope, Send


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def sse(frames: list[bytes]) -> bytes:
    return b"".join(b"data: " + frame + b"\n\n" for frame in frames)


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def wait_or_leave(receive: Receive, seconds: float) -> bool:
    """Sleep `seconds` unless the client disconnects first (the body is read, so the next message
    can only be http.disconnect); True when it did."""
    try:
        async with asyncio.timeout(seconds):
            message: Message = await receive()
    except TimeoutError:
        return False
    return message["type"] == "http.disconnect"


async def start(
    send: Send, status: int, content_type: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), *(headers or [])],
        }
    )


async def send_body(send: Send, data: bytes, more: bool) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def respond(
    send: Send,
    status: int,
    payload: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"application/json",
) -> None:
    length = [(b"content-length", b"%d" % len(payload))]
    await start(send, status, content_type, [*length, *(headers or [])])
    await send_body(send, payload, more=False)
