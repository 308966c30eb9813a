"""NATS JetStream: a durable pull consumer as the source, a subject of a stream as the sink.

The source fetches with the durable consumer every worker of the stream shares; a message is acked only
after its result is in the sink, and one not acked within `ack_wait_s` (its worker was killed) is
delivered again, to any worker, with its delivery count. A failed message is nak'ed with a delay. The
sink publishes each result with the message id as `Nats-Msg-Id`: the stream drops a second publish of
the same id within its duplicate window, and a publish returns only once the stream has stored it.

A source stream the worker has to create is a work queue: a message is deleted once acknowledged, so the
stream holds only work not yet done. With JetStream's default (keep everything) it grew by every message
for good, and on nats-server 2.9 a growing file store stalled delivery ~100 ms every few seconds: p99
27-57 ms at half the sustained rate against 14-20 ms as a work queue (benchmarks/RESULTS.md). A stream
that exists is used as it is.
"""

from __future__ import annotations

import asyncio
import json

import nats
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, RetentionPolicy
from nats.js.errors import NotFoundError

from inferline.config import NatsSinkConfig, NatsSourceConfig
from inferline.streams.message import Message, Output, Sink

MAX_LINGER_S = 0.05
"""A fetch this short waits (lingers) for its whole batch: the worker's max_wait_ms window. A longer one
waits for the first message alone, then takes what is already there."""
PROBE_S = 0.001
"""How long that second look lingers: a pull request with an expiry waits for its whole batch, and one
without would need a second request to end it."""
RETRY_DELAY_S = 1.0
"""A failed message is delivered again after this long."""


async def _ensure_stream(
    js: nats.js.JetStreamContext,
    name: str,
    subject: str,
    duplicate_window_s: float,
    retention: RetentionPolicy = RetentionPolicy.LIMITS,
) -> None:
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(
            name=name, subjects=[subject], duplicate_window=duplicate_window_s, retention=retention
        )


class NatsSource:
    def __init__(self, config: NatsSourceConfig) -> None:
        self.config = config
        self.description = f"nats stream {config.stream} subject {config.subject} (durable {config.durable})"
        self.client: nats.NATS | None = None
        self.subscription: nats.js.JetStreamContext.PullSubscription | None = None

    async def open(self) -> None:
        if self.client is not None:
            return
        config = self.config
        client = await nats.connect(config.url)
        js = client.jetstream()
        await _ensure_stream(js, config.stream, config.subject, 120.0, RetentionPolicy.WORK_QUEUE)
        consumer = ConsumerConfig(ack_wait=config.ack_wait_s, max_deliver=-1)
        self.subscription = await js.pull_subscribe(
            config.subject, durable=config.durable, stream=config.stream, config=consumer
        )
        self.client = client

    @property
    def _subscription(self) -> nats.js.JetStreamContext.PullSubscription:
        if self.subscription is None:
            raise RuntimeError(f"{self.description} is not open")
        return self.subscription

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Message]:
        # A JetStream pull of N is answered when N are there or it expires. An idle worker waiting for N
        # would hold its first message back for the whole wait; so it waits for one, then looks briefly.
        if max_messages == 1 or timeout_s <= MAX_LINGER_S:
            received = await self._fetch(max_messages, timeout_s)
        else:
            received = await self._fetch(1, timeout_s)
            if received:
                received += await self._fetch(max_messages - 1, PROBE_S)
        return [self._message(m) for m in received]

    async def _fetch(self, batch: int, timeout_s: float) -> list[Msg]:
        try:
            return await self._subscription.fetch(batch=batch, timeout=max(0.001, timeout_s))
        except (TimeoutError, NatsTimeoutError):
            return []

    @staticmethod
    def _message(msg: Msg) -> Message:
        meta = msg.metadata
        return Message(
            str(meta.sequence.stream), msg.data, meta.timestamp.timestamp(), meta.num_delivered, msg
        )

    async def ack(self, messages: list[Message]) -> None:
        for message in messages:
            await message.handle.ack()
        if messages and self.client is not None:
            await self.client.flush()  # the server has them before the next fetch is asked for

    async def retry_later(self, messages: list[Message]) -> None:
        for message in messages:
            await message.handle.nak(delay=RETRY_DELAY_S)

    async def lag(self) -> int | None:
        info = await self._subscription.consumer_info()
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    def dead_letter_sink(self) -> Sink:
        config = self.config
        return NatsSink(
            NatsSinkConfig(url=config.url, stream=f"{config.stream}_DEAD", subject=config.dead_letter_subject)
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None


class NatsSink:
    def __init__(self, config: NatsSinkConfig) -> None:
        self.config = config
        self.client: nats.NATS | None = None
        self.js: nats.js.JetStreamContext | None = None

    async def open(self) -> None:
        if self.client is not None:
            return
        client = await nats.connect(self.config.url)
        self.js = client.jetstream()
        await _ensure_stream(self.js, self.config.stream, self.config.subject, self.config.duplicate_window_s)
        self.client = client

    async def write(self, outputs: list[Output]) -> None:
        if self.js is None:
            raise RuntimeError(f"the NATS sink on {self.config.subject} is not open")
        js, subject = self.js, self.config.subject
        await asyncio.gather(
            *(
                js.publish(
                    subject, _json(o.fields), stream=self.config.stream, headers={"Nats-Msg-Id": o.key}
                )
                for o in outputs
            )
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None


def _json(fields: dict[str, str]) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()
