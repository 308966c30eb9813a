"""Stream workers on a fraud-style classifier: sustained messages/s, and end-to-end latency under load,
for each source (Redis Streams, NATS JetStream), beside a plain consumer loop, in one run.

The model is an MLP on 30 numeric features (30 -> 64 -> 2, softmax), exported to ONNX here
(`inferline.testing.fraud_model`). Each message is `{"inputs": {"features": [30 floats]}}`.

Two consumers read the same kind of source, each in its own process, one at a time:
- inferline: one `inferline stream run` with a stream per source (micro-batches of up to 64 messages
  gathered for up to 2 ms, scored through the router in the interactive class, results written once
  per message id to a stream on the same broker, then acknowledged); the ONNX deployment's own queue
  delay is 0 (the stream already gathers its batch). The worker of the source not being measured
  idles (one blocking read a second).
- plain: the loop a developer writes first, in this file (`--plain-consumer`): read one message, run
  ONNX Runtime on it (the same session options as inferline's runner), write the result, acknowledge;
  synchronous redis-py for Redis, nats-py (asyncio, its only client) for NATS. No dedupe, no batching.

This process is the producer and a downstream reader of the results. End-to-end latency is from just
before a message is published to the moment the reader sees its result (the reader's hop included,
well under a millisecond on loopback). Per consumer and source:
1. sustained rate: N messages published at once (pipelined), messages/s from the first publish to the
   last result seen (the backlog drains at the consumer's capacity);
2. load points at 50 % and 90 % of that rate: messages published on a fixed schedule for T seconds
   (open loop: a late result does not delay the next publish; the messages whose time has come go out
   together in one pipelined round trip); p50/p99 latency over all of them, and the rate achieved.

The NATS source stream is a work queue (acknowledged messages deleted), as the worker creates one; with
JetStream's default retention (keep everything) the file store grows by every message and stalled
delivery for ~100 ms every few seconds (p99 27-57 ms at 50 % load against 14-20 ms, benchmarks/RESULTS.md).

Everything shares one machine's cores (brokers, producer, reader, consumer), nothing pinned: on a shared
or small machine the figures are indicative.

    .venv/bin/python benchmarks/streams.py            # ~2 min
    .venv/bin/python benchmarks/streams.py --smoke    # seconds (one inferline process start)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from inferline.bench.report import environment
from inferline.stats import percentile
from inferline.testing.brokers import nats_server, redis_server
from inferline.testing.fraud_model import NUM_FEATURES, write_fraud_mlp

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LOADS = (0.5, 0.9)
RESULT_TIMEOUT_S = 60.0
START_TIMEOUT_S = 180.0
"""A consumer process imports, loads and connects; on a busy 2-core machine that takes a while."""


@dataclass(frozen=True)
class Settings:
    num_messages: int
    """Messages of the sustained-rate run."""
    seconds: float
    """Length of each load point."""
    max_run_s: float
    """The whole run's limit: past it the run stops with an error (nothing waits for ever)."""


FULL = Settings(num_messages=6000, seconds=10.0, max_run_s=900.0)
SMOKE = Settings(num_messages=60, seconds=0.3, max_run_s=240.0)
"""--smoke: every code path in seconds (the figures mean nothing)."""


@dataclass
class Row:
    source: str
    consumer: str
    sustained_per_s: float
    load: float
    target_per_s: float
    achieved_per_s: float
    p50_ms: float
    p99_ms: float
    num_messages: int


def body(rng: np.random.Generator) -> bytes:
    features = rng.standard_normal(NUM_FEATURES).astype(np.float32)
    return json.dumps({"inputs": {"features": features.tolist()}}).encode()


# ---- the producer and the reader, per broker ---------------------------------------------------------


class RedisRig:
    def __init__(self, url: str, name: str) -> None:
        import redis.asyncio as aioredis

        self.url, self.name = url, name
        self.client = aioredis.Redis.from_url(url, socket_timeout=30)
        # Its own connection: a blocking XREAD would hold up the publishes queued behind it.
        self.reader = aioredis.Redis.from_url(url, socket_timeout=30)
        self.arrived: dict[str, float] = {}
        self._reader: asyncio.Task[None] | None = None

    def source(self) -> dict[str, Any]:
        return {"kind": "redis", "url": self.url, "stream": f"{self.name}.in"}

    def sink(self) -> dict[str, Any]:
        return {"kind": "redis", "url": self.url, "stream": f"{self.name}.out"}

    async def start(self) -> None:
        await self.client.xgroup_create(f"{self.name}.in", "inferline", id="0", mkstream=True)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        last = "0-0"
        while True:
            reply = await self.reader.xread({f"{self.name}.out": last}, count=1000, block=100)
            now = time.monotonic()
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    self.arrived[fields[b"id"].decode()] = now
                    last = entry_id

    async def publish_many(self, bodies: list[bytes]) -> list[str]:
        ids: list[str] = []
        for start in range(0, len(bodies), 500):
            async with self.client.pipeline(transaction=False) as pipe:
                for data in bodies[start : start + 500]:
                    pipe.xadd(f"{self.name}.in", {"data": data})
                ids += [i.decode() for i in await pipe.execute()]
        return ids

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.client.aclose()
        await self.reader.aclose()


class NatsRig:
    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name.replace("-", "_")
        self.arrived: dict[str, float] = {}
        self.client: Any = None
        self.js: Any = None

    def source(self) -> dict[str, Any]:
        return {"kind": "nats", "url": self.url, "stream": f"{self.name}_IN", "subject": f"{self.name}.in"}

    def sink(self) -> dict[str, Any]:
        return {"kind": "nats", "url": self.url, "stream": f"{self.name}_OUT", "subject": f"{self.name}.out"}

    async def start(self) -> None:
        import nats
        import nats.js.api

        self.client = await nats.connect(self.url)
        self.js = self.client.jetstream()
        # A work queue, as the worker creates a source stream (streams/nats_streams.py): one that keeps
        # every message grows for good, and nats-server 2.9's file store then stalls ~100 ms every few s.
        retention = nats.js.api.RetentionPolicy.WORK_QUEUE
        await self.js.add_stream(name=f"{self.name}_IN", subjects=[f"{self.name}.in"], retention=retention)
        await self.js.add_stream(name=f"{self.name}_OUT", subjects=[f"{self.name}.out"], duplicate_window=600)

        async def arrived(msg: Any) -> None:
            self.arrived[json.loads(msg.data)["id"]] = time.monotonic()

        await self.client.subscribe(f"{self.name}.out", cb=arrived)

    async def publish_many(self, bodies: list[bytes]) -> list[str]:
        acks = await asyncio.gather(*(self.js.publish(f"{self.name}.in", data) for data in bodies))
        return [str(ack.seq) for ack in acks]

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


Rig = RedisRig | NatsRig


async def wait_for(
    rig: Rig, ids: list[str], consumer: subprocess.Popen[bytes], timeout_s: float = RESULT_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while any(i not in rig.arrived for i in ids):
        if consumer.poll() is not None:
            raise RuntimeError(f"the consumer exited with {consumer.returncode}")
        if time.monotonic() > deadline:
            missing = sum(i not in rig.arrived for i in ids)
            raise RuntimeError(f"{missing} of {len(ids)} results did not arrive within {timeout_s:g} s")
        await asyncio.sleep(0.01)


async def sustained(rig: Rig, num_messages: int, consumer: subprocess.Popen[bytes]) -> float:
    rng = np.random.default_rng(1)
    bodies = [body(rng) for _ in range(num_messages)]
    started = time.monotonic()
    ids = await rig.publish_many(bodies)
    await wait_for(rig, ids, consumer)
    return num_messages / (max(rig.arrived[i] for i in ids) - started)


async def open_loop(
    rig: Rig, rate_per_s: float, seconds: float, consumer: subprocess.Popen[bytes]
) -> tuple[float, list[float]]:
    """(achieved messages/s, latencies in s) of messages published on a fixed schedule: every message
    whose time has come goes out at once, in one pipelined round trip, so the producer keeps up."""
    rng = np.random.default_rng(2)
    num_messages = max(2, round(rate_per_s * seconds))
    bodies = [body(rng) for _ in range(num_messages)]
    sent: dict[str, float] = {}
    started = time.monotonic()
    next_index = 0
    while next_index < num_messages:
        due = min(num_messages, int((time.monotonic() - started) * rate_per_s) + 1)
        if due <= next_index:
            await asyncio.sleep(started + next_index / rate_per_s - time.monotonic())
            continue
        sent_at = time.monotonic()
        for message_id in await rig.publish_many(bodies[next_index:due]):
            sent[message_id] = sent_at
        next_index = due
    achieved = (num_messages - 1) / max(1e-9, max(sent.values()) - started)
    await wait_for(rig, list(sent), consumer)
    return achieved, [rig.arrived[i] - at for i, at in sent.items()]


# ---- the consumers ------------------------------------------------------------------------------------


def start_inferline(rigs: list[Rig], model: Path, work: Path) -> subprocess.Popen[bytes]:
    """One process with a stream worker per rig."""
    streams = [
        {
            "name": rig.name,
            "source": rig.source(),
            "sink": rig.sink(),
            "model": "fraud",
            "priority": "interactive",
            "max_batch_size": 64,
            "max_wait_ms": 2,
        }
        for rig in rigs
    ]
    config = {
        "deployments": [
            {
                "kind": "onnx",
                "name": "fraud",
                "source": str(model),
                "max_batch_size": 64,
                "max_queue_delay_us": 0,
            }
        ],
        "streams": streams,
    }
    path = work / "inferline.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "inferline.cli", "stream", "run", str(path)]
    with (work / "inferline.log").open("wb") as log:
        return subprocess.Popen(command, stderr=log)


def start_plain(rig: Rig, model: Path) -> subprocess.Popen[bytes]:
    kind = "redis" if isinstance(rig, RedisRig) else "nats"
    command = [sys.executable, __file__, "--plain-consumer", kind, rig.url, rig.name, str(model)]
    return subprocess.Popen(command)


def onnx_session(model: str) -> Any:
    """ONNX Runtime with the session options inferline's runner uses."""
    import onnxruntime as ort

    from inferline.runners.onnx import default_num_threads

    options = ort.SessionOptions()
    options.intra_op_num_threads = default_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def score(session: Any, data: bytes) -> bytes:
    features = np.asarray([json.loads(data)["inputs"]["features"]], dtype=np.float32)
    (probabilities,) = session.run(None, {"features": features})
    return json.dumps({"outputs": {"probabilities": probabilities[0].tolist()}}).encode()


def plain_redis(url: str, name: str, model: str) -> None:
    import redis

    session = onnx_session(model)
    client = redis.Redis.from_url(url)
    while True:
        reply = client.xreadgroup("inferline", "plain", {f"{name}.in": ">"}, count=1, block=1000)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                result = score(session, fields[b"data"])
                client.xadd(f"{name}.out", {"id": entry_id, "result": result})
                client.xack(f"{name}.in", "inferline", entry_id)


async def plain_nats(url: str, name: str, model: str) -> None:
    import nats
    from nats.errors import TimeoutError as NatsTimeoutError

    session = onnx_session(model)
    client = await nats.connect(url)
    js = client.jetstream()
    subscription = await js.pull_subscribe(f"{name}.in", durable="plain", stream=f"{name}_IN")
    while True:
        try:
            (msg,) = await subscription.fetch(1, timeout=1.0)
        except (TimeoutError, NatsTimeoutError):
            continue
        result = score(session, msg.data)
        out = json.dumps({"id": str(msg.metadata.sequence.stream), "result": result.decode()}).encode()
        await js.publish(f"{name}.out", out)
        await msg.ack()


# ---- the run ------------------------------------------------------------------------------------------


async def measure(rig: Rig, consumer: str, process: subprocess.Popen[bytes], settings: Settings) -> list[Row]:
    warm = await rig.publish_many([body(np.random.default_rng(0)) for _ in range(20)])
    await wait_for(rig, warm, process, START_TIMEOUT_S)  # started, loaded, connected and warm
    rate = await sustained(rig, settings.num_messages, process)
    rows = []
    for load in LOADS:
        achieved, latencies = await open_loop(rig, rate * load, settings.seconds, process)
        rows.append(
            Row(
                source="redis" if isinstance(rig, RedisRig) else "nats",
                consumer=consumer,
                sustained_per_s=rate,
                load=load,
                target_per_s=rate * load,
                achieved_per_s=achieved,
                p50_ms=percentile(latencies, 50) * 1000,
                p99_ms=percentile(latencies, 99) * 1000,
                num_messages=len(latencies),
            )
        )
        print(
            f"{rows[-1].source:<6} {consumer:<10} sustained {rate:8.0f} msg/s  load {load:.0%}: "
            f"{achieved:7.0f} msg/s  p50 {rows[-1].p50_ms:7.2f} ms  p99 {rows[-1].p99_ms:7.2f} ms",
            flush=True,
        )
    return rows


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, and its exit code (killed, and -9, if it does not stop within 60 s: the interpreter's own
    teardown took 5 s of that on a loaded 2-core machine)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=10)


def rigs(prefix: str, redis_url: str, nats_url: str) -> list[Rig]:
    return [RedisRig(redis_url, f"{prefix}-redis"), NatsRig(nats_url, f"{prefix}-nats")]


async def run(settings: Settings, work: Path) -> list[Row]:
    model = write_fraud_mlp(work / "fraud.onnx")
    rows: list[Row] = []
    with redis_server() as redis_url, nats_server() as nats_url:
        ours = rigs("inferline", redis_url, nats_url)
        for rig in ours:
            await rig.start()
        process = start_inferline(ours, model, work)
        try:
            for rig in ours:
                rows += await measure(rig, "inferline", process, settings)
        except RuntimeError:
            print((work / "inferline.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            exit_code = stop(process)
            for rig in ours:
                await rig.close()
        if exit_code != 0:  # a worker stops cleanly on SIGTERM (its messages in flight come again)
            log = (work / "inferline.log").read_text()[-3000:]
            raise RuntimeError(f"inferline stream run exited with {exit_code} on SIGTERM:\n{log}")
        for rig in rigs("plain", redis_url, nats_url):
            await rig.start()
            process = start_plain(rig, model)
            try:
                rows += await measure(rig, "plain", process, settings)
            finally:
                stop(process)
                await rig.close()
    return rows


async def limited(running: Coroutine[Any, Any, list[Row]], max_run_s: float) -> list[Row]:
    """The run, or an error showing where each task waits once it has taken max_run_s."""
    task = asyncio.ensure_future(running)
    await asyncio.wait([task], timeout=max_run_s)
    if not task.done():
        for other in asyncio.all_tasks():
            if other is not asyncio.current_task():
                other.print_stack(file=sys.stderr)
        task.cancel()
        await asyncio.wait([task], timeout=30)
        raise RuntimeError(f"the run took more than {max_run_s:g} s (where it waited: above)")
    return task.result()


def table(rows: list[Row]) -> str:
    lines = [
        "| source | consumer | sustained msg/s | load | achieved msg/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.source} | {row.consumer} | {row.sustained_per_s:.0f} | {row.load:.0%} | "
            f"{row.achieved_per_s:.0f} | {row.p50_ms:.2f} | {row.p99_ms:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=f"tiny run: {SMOKE}")
    parser.add_argument(
        "--json", type=Path, help="default benchmarks/results/streams.json (--smoke: a temp dir)"
    )
    parser.add_argument(
        "--plain-consumer", nargs=4, metavar=("KIND", "URL", "NAME", "MODEL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.plain_consumer:
        kind, url, name, model = args.plain_consumer
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        if kind == "redis":
            plain_redis(url, name, model)
        else:
            asyncio.run(plain_nats(url, name.replace("-", "_"), model))
        return
    settings = SMOKE if args.smoke else FULL
    print(f"settings: {settings}", flush=True)
    with tempfile.TemporaryDirectory(prefix="inferline-streams-") as tmp:
        rows = asyncio.run(limited(run(settings, Path(tmp)), settings.max_run_s))
        print(table(rows))
        out = args.json or (Path(tmp) if args.smoke else RESULTS) / "streams.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {**environment("streams"), "settings": asdict(settings), "rows": [asdict(r) for r in rows]},
                indent=2,
            )
        )
        print(f"wrote {out}" if not args.smoke else "smoke run: nothing kept")


if __name__ == "__main__":
    main()
