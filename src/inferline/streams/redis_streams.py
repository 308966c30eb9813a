"""Redis Streams: a consumer group as the source, a stream as the sink.

The source reads new entries with XREADGROUP; an entry stays in the group's pending list until XACK,
which the worker sends only after the entry's result is in the sink. Entries pending longer than
`claim_idle_ms` (their consumer was killed, or scoring them failed) are taken over with XAUTOCLAIM, which
also counts their deliveries. After a pass over the pending list, consumers with nothing pending that
have not read for `delete_consumer_idle_ms` (dead workers, their entries claimed) are deleted. The
sink appends with XADD inside a Lua script that first sets a marker
key per message (SET NX): a second write of the same message finds the marker and adds nothing, and
script, marker and entry are one atomic step, so a crash cannot leave one without the other.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import redis.asyncio as redis
from redis.exceptions import ResponseError

from inferline.config import RedisSinkConfig, RedisSourceConfig
from inferline.streams.message import Message, Output, Sink

logger = logging.getLogger(__name__)

MAX_CLAIM_INTERVAL_S = 1.0
"""How often, at most, a worker looks for pending entries to claim (one XAUTOCLAIM round trip)."""
MAX_SWEEP_INTERVAL_S = 60.0
"""How often, at most, a worker looks for idle consumers to delete (one XINFO CONSUMERS)."""

_WRITE_ONCE = """
local ttl = ARGV[1]
local at = 2
local written = 0
for k = 2, #KEYS do
  local n = tonumber(ARGV[at])
  if redis.call('SET', KEYS[k], '1', 'NX', 'EX', ttl) then
    redis.call('XADD', KEYS[1], '*', unpack(ARGV, at + 1, at + 2 * n))
    written = written + 1
  end
  at = at + 1 + 2 * n
end
return written
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisSource:
    def __init__(self, config: RedisSourceConfig) -> None:
        self.config = config
        self.consumer = config.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.description = f"redis stream {config.stream} (group {config.group}, consumer {self.consumer})"
        self.client = redis.Redis.from_url(config.url)
        self._claim_cursor = "0-0"
        self._next_claim_s = 0.0
        self._claim_interval_s = min(MAX_CLAIM_INTERVAL_S, config.claim_idle_ms / 2000)
        self._next_sweep_s = 0.0

    async def open(self) -> None:
        try:
            await self.client.xgroup_create(self.config.stream, self.config.group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):  # the group exists: carry on where it is
                raise

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Message]:
        messages: list[Message] = []
        if time.monotonic() >= self._next_claim_s:
            messages = await self._claim(max_messages)
        wanted = max_messages - len(messages)
        if wanted <= 0:
            return messages
        # BLOCK 0 would wait for ever; with claimed entries in hand, do not wait at all.
        block_ms = max(1, round(timeout_s * 1000)) if not messages and timeout_s > 0 else None
        # RESP2, not decoded: [[stream, [(entry id, {field: value})]]]; redis-py types every protocol's shape.
        reply: Any = await self.client.xreadgroup(
            self.config.group, self.consumer, {self.config.stream: ">"}, count=wanted, block=block_ms
        )
        for _, entries in reply or []:
            messages += [self._message(entry_id, fields, 1) for entry_id, fields in entries]
        return messages

    async def _claim(self, max_messages: int) -> list[Message]:
        config = self.config
        cursor, entries, *_ = await self.client.xautoclaim(
            config.stream,
            config.group,
            self.consumer,
            min_idle_time=config.claim_idle_ms,
            start_id=self._claim_cursor,
            count=max_messages,
        )
        self._claim_cursor = _text(cursor)
        if self._claim_cursor == "0-0":  # the whole pending list was looked at: wait before the next pass
            self._next_claim_s = time.monotonic() + self._claim_interval_s
            await self._delete_idle_consumers()
        entries = [(entry_id, fields) for entry_id, fields in entries if fields is not None]
        if not entries:
            return []
        async with self.client.pipeline(transaction=False) as pipe:
            for entry_id, _ in entries:
                pipe.xpending_range(config.stream, config.group, min=entry_id, max=entry_id, count=1)
            pending = await pipe.execute()
        return [
            self._message(entry_id, fields, info[0]["times_delivered"] if info else 1)
            for (entry_id, fields), info in zip(entries, pending, strict=True)
        ]

    async def _delete_idle_consumers(self) -> None:
        """Consumers with nothing pending, idle past the limit: dead workers whose entries were claimed.
        (DELCONSUMER drops a consumer's pending entries, so one that still holds any is kept.)"""
        idle_ms = self.config.delete_consumer_idle_ms
        now = time.monotonic()
        if idle_ms is None or now < self._next_sweep_s:
            return
        self._next_sweep_s = now + min(MAX_SWEEP_INTERVAL_S, idle_ms / 2000)
        config = self.config
        for consumer in await self.client.xinfo_consumers(config.stream, config.group):
            name = _text(consumer["name"])
            if name != self.consumer and consumer["pending"] == 0 and consumer["idle"] > idle_ms:
                await self.client.xgroup_delconsumer(config.stream, config.group, name)
                logger.info("%s: deleted consumer %s, idle %d ms", self.description, name, consumer["idle"])

    def _message(self, entry_id: bytes, fields: dict[bytes, bytes], num_deliveries: int) -> Message:
        message_id = _text(entry_id)
        data = fields.get(self.config.field.encode(), b"")
        return Message(message_id, data, int(message_id.split("-")[0]) / 1000, num_deliveries)

    async def ack(self, messages: list[Message]) -> None:
        if messages:
            await self.client.xack(self.config.stream, self.config.group, *(m.id for m in messages))

    async def retry_later(self, messages: list[Message]) -> None:
        """Nothing to do: they stay pending, and are claimed again after claim_idle_ms."""

    async def lag(self) -> int | None:
        for group in await self.client.xinfo_groups(self.config.stream):
            if _text(group["name"]) == self.config.group:
                not_delivered = group.get("lag")
                return None if not_delivered is None else int(not_delivered) + int(group["pending"])
        return None

    def dead_letter_sink(self) -> Sink:
        return RedisSink(RedisSinkConfig(url=self.config.url, stream=self.config.dead_letter_stream))

    async def close(self) -> None:
        await self.client.aclose()


class RedisSink:
    def __init__(self, config: RedisSinkConfig) -> None:
        self.config = config
        self.client = redis.Redis.from_url(config.url)
        self._write_once = self.client.register_script(_WRITE_ONCE)

    async def open(self) -> None:
        await self.client.ping()

    async def write(self, outputs: list[Output]) -> None:
        if not outputs:
            return
        stream = self.config.stream
        keys = [stream, *(f"{stream}:written:{o.key}" for o in outputs)]
        args: list[str | int] = [self.config.dedupe_ttl_s]
        for output in outputs:
            args.append(len(output.fields))
            for name, value in output.fields.items():
                args += [name, value]
        await self._write_once(keys=keys, args=args)

    async def close(self) -> None:
        await self.client.aclose()
