"""What a stream worker exchanges with its connectors: messages in, outputs out, and the two contracts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Message:
    """One message as a source delivered it."""

    id: str
    """The broker's id of the message (a Redis entry id, a JetStream stream sequence): the key that makes
    output idempotent."""
    data: bytes
    """The payload: a JSON object."""
    published_s: float
    """Wall-clock (Unix) seconds when the broker took the message: where end-to-end latency starts."""
    num_deliveries: int
    """1 on its first delivery; more when it was redelivered (its consumer died, or scoring failed)."""
    handle: Any = None
    """What the source needs to acknowledge it (a NATS message); None for Redis."""


@dataclass(frozen=True)
class Output:
    """One record for a sink: a result, or a dead letter and its reason."""

    stream: str
    """The stream worker's name: message ids are unique only within one source."""
    message_id: str
    fields: dict[str, str]
    """Written as the Redis entry's fields, the NATS message's JSON object, or the table row's result."""

    @property
    def key(self) -> str:
        """What a sink remembers as written, unique across the workers that share it."""
        return f"{self.stream}/{self.message_id}"


class Sink(Protocol):
    async def open(self) -> None: ...

    async def write(self, outputs: list[Output]) -> None:
        """Durably write every output whose message id has not been written before; skip the others.
        Returns once they are stored (the source acknowledges after it)."""

    async def close(self) -> None: ...


class Source(Protocol):
    description: str
    """Where it reads, for logs and /admin ("redis stream in (group inferline)")."""

    async def open(self) -> None: ...

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Up to `max_messages`: first those of a dead consumer (or whose scoring failed) that are due
        again, then new ones; waits up to `timeout_s` when there are none (a source may use a short
        `timeout_s`, the batch's window, to fill the batch)."""
        ...

    async def ack(self, messages: list[Message]) -> None:
        """They are done (their output is in the sink): never deliver them again."""

    async def retry_later(self, messages: list[Message]) -> None:
        """Scoring them failed: deliver them again later (to any worker)."""

    async def lag(self) -> int | None:
        """Messages of the stream the group has not finished: not yet delivered, or delivered and not yet
        acknowledged (None when the broker cannot say)."""
        ...

    def dead_letter_sink(self) -> Sink:
        """Where poison messages go, on the same broker."""
        ...

    async def close(self) -> None: ...
