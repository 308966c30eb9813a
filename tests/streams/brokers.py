"""What a test does to a broker, the same way for Redis Streams and NATS JetStream: produce messages, play
a consumer that dies holding some, and read back the results, dead letters and what is still pending."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nats
import redis.asyncio as aioredis
from nats.js.api import ConsumerConfig
from pydantic import TypeAdapter

from inferline.config import ServerConfig, SinkConfig
from inferline.streams.message import Output
from inferline.streams.service import open_sink


class RedisBroker:
    kind = "redis"

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.client = aioredis.Redis.from_url(url)

    def source(self, **settings: Any) -> dict[str, Any]:
        return {
            "kind": "redis",
            "url": self.url,
            "stream": f"{self.name}.in",
            "claim_idle_ms": 300,
        } | settings

    def sink(self) -> dict[str, Any]:
        return {"kind": "redis", "url": self.url, "stream": f"{self.name}.out"}

    async def produce(self, bodies: list[bytes]) -> list[str]:
        async with self.client.pipeline(transaction=False) as pipe:
            for body in bodies:
                pipe.xadd(f"{self.name}.in", {"data": body})
            return [i.decode() for i in await pipe.execute()]

    async def die_holding(self, num_messages: int) -> None:
        """A consumer of the group reads messages and dies without acknowledging them."""
        await self.client.xgroup_create(f"{self.name}.in", "inferline", id="0", mkstream=True)
        await self.client.xreadgroup("inferline", "dead", {f"{self.name}.in": ">"}, count=num_messages)

    async def results(self) -> list[tuple[str, Any]]:
        entries = await self.client.xrange(f"{self.name}.out")
        return [(f[b"id"].decode(), json.loads(f[b"result"])) for _, f in entries]

    async def dead_letters(self) -> dict[str, str]:
        entries = await self.client.xrange(f"{self.name}.in.dead")
        return {f[b"id"].decode(): f[b"reason"].decode() for _, f in entries}

    async def consumers(self) -> list[str]:
        return [c["name"].decode() for c in await self.client.xinfo_consumers(f"{self.name}.in", "inferline")]

    async def in_flight(self) -> int:
        """Messages delivered to the group's consumers and not acknowledged."""
        try:
            return int((await self.client.xpending(f"{self.name}.in", "inferline"))["pending"])
        except aioredis.ResponseError:  # no group yet
            return 0

    async def close(self) -> None:
        await self.client.aclose()


class NatsBroker:
    kind = "nats"

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name.replace(".", "_")
        self.client: nats.NATS | None = None

    async def _js(self) -> Any:
        if self.client is None:
            self.client = await nats.connect(self.url)
        return self.client.jetstream()

    def source(self, **settings: Any) -> dict[str, Any]:
        stream = {"kind": "nats", "url": self.url, "stream": f"{self.name}_IN", "subject": f"{self.name}.in"}
        return stream | {"ack_wait_s": 1.0} | settings

    def sink(self) -> dict[str, Any]:
        return {"kind": "nats", "url": self.url, "stream": f"{self.name}_OUT", "subject": f"{self.name}.out"}

    async def produce(self, bodies: list[bytes]) -> list[str]:
        js = await self._js()
        try:
            await js.stream_info(f"{self.name}_IN")
        except nats.js.errors.NotFoundError:
            await js.add_stream(name=f"{self.name}_IN", subjects=[f"{self.name}.in"])
        return [str((await js.publish(f"{self.name}.in", body)).seq) for body in bodies]

    async def die_holding(self, num_messages: int) -> None:
        client = await nats.connect(self.url)
        subscription = await client.jetstream().pull_subscribe(
            f"{self.name}.in",
            durable="inferline",
            stream=f"{self.name}_IN",
            config=ConsumerConfig(ack_wait=1.0, max_deliver=-1),
        )
        await subscription.fetch(batch=num_messages, timeout=2)
        await client.close()

    async def _messages(self, stream: str) -> list[dict[str, str]]:
        js = await self._js()
        try:
            last = (await js.stream_info(stream)).state.last_seq
        except nats.js.errors.NotFoundError:
            return []
        return [json.loads((await js.get_msg(stream, seq)).data) for seq in range(1, last + 1)]

    async def results(self) -> list[tuple[str, Any]]:
        return [(m["id"], json.loads(m["result"])) for m in await self._messages(f"{self.name}_OUT")]

    async def dead_letters(self) -> dict[str, str]:
        return {m["id"]: m["reason"] for m in await self._messages(f"{self.name}_IN_DEAD")}

    async def in_flight(self) -> int:
        """Messages delivered to the durable consumer and not acknowledged."""
        try:
            info = await (await self._js()).consumer_info(f"{self.name}_IN", "inferline")
        except nats.js.errors.NotFoundError:  # no consumer yet
            return 0
        return int(info.num_ack_pending)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


async def write_result(sink: dict[str, Any], stream: str, message_id: str, result: Any) -> None:
    """What a worker writes for a message, written by hand (as by a worker killed before its ack)."""
    sink = open_sink(TypeAdapter(SinkConfig).validate_python(sink), ServerConfig(), Path.home())
    await sink.open()
    await sink.write([Output(stream, message_id, {"id": message_id, "result": json.dumps(result)})])
    await sink.close()
