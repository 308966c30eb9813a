"""What metering, metrics and tracing together cost per request: the same server with them on and off.

Two `inferline serve` processes, identical but for `telemetry`, in front of one stub upstream that
answers at once (`inferline.testing.stub_upstream`), a remote deployment behind a weighted route and a
tenant key, as in router_overhead.py:

- on: usage metered into a SQLite file (batched writer), per-request Prometheus metrics and SLO
  tracking (the route has an SLO), tracing with every trace sampled and exported over OTLP/HTTP to
  a sink in this process (it answers 200 to each export and counts the bytes), JSON logs;
- off: `metering: false, metrics: false, tracing.enabled: false`, no SLO.

1. Latency: one client, one keep-alive connection, sequential non-streamed and streamed chat
   requests; p50/p99 of the time to the last byte. Added = on minus off, per repeat.
2. Request rate at 16 clients (closed loop), and each server's CPU ms per request.
The order of the two servers alternates per repeat; the table gives medians over repeats.
Target (issue 6): under 0.3 ms p50 added.

    .venv/bin/python benchmarks/telemetry_overhead.py                 # ~3 min on 2 cores
    .venv/bin/python benchmarks/telemetry_overhead.py --smoke         # seconds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from inferline.bench.harness import inferline_server
from inferline.bench.loopback import CpuMeter, chat_request, closed_loop, sequential
from inferline.bench.report import git_commit
from inferline.config import ServerConfig
from inferline.stats import percentile
from inferline.testing.stub_upstream import StubProcess, start_stub

RESULTS = Path(__file__).resolve().parent / "results"
API_KEY = "sk-bench"
ROUTE = "bench"
SERVERS = ("on", "off")
PARTS = ("metering", "metrics", "tracing")
"""With --breakdown, one more server per part, with only that part on."""
SINK_REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
SLO = {"availability": 0.999, "ttft_p95_ms": 500, "latency_p95_ms": 2000}
SMOKE = {
    "requests": 50,
    "warmup": 10,
    "concurrency": 4,
    "duration_s": 1.0,
    "rate_warmup_s": 0.5,
    "repeats": 1,
}
"""--smoke: every code path in seconds (the figures mean nothing)."""


class OtlpSink:
    """Answers every OTLP/HTTP export with 200 and counts what arrived (the spans are not decoded)."""

    def __init__(self) -> None:
        self.num_exports = 0
        self.num_bytes = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.lower().split(b"\r\n")
                            if line.startswith(b"content-length:")
                        ),
                        0,
                    )
                    self.num_bytes += len(await reader.readexactly(length))
                    self.num_exports += 1
                    writer.write(SINK_REPLY)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/traces"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0.1)  # the handlers see their connections end


def server_config(which: str, stub: StubProcess, sink_url: str, tmp: Path) -> ServerConfig:
    """In front of the stub: a remote deployment, a weighted route (with the SLO when `which` is "on")
    and a tenant key; telemetry "on", "off", or one of PARTS alone."""
    on = set(PARTS) if which == "on" else {which} & set(PARTS)
    tracing = {"enabled": True, "otlp_endpoint": sink_url, "sample_ratio": 1.0}
    route: dict[str, Any] = {"name": ROUTE, "policy": "weighted", "weights": {"stub": 1}}
    if which == "on":
        route["slo"] = SLO
    return ServerConfig.model_validate(
        {
            "deployments": [{"name": "stub", "kind": "remote", "base_url": f"{stub.url}/v1"}],
            "routes": [route],
            "tenants": [{"name": "bench", "api_keys": [API_KEY]}],
            "telemetry": {
                "database_url": f"sqlite:///{tmp / which}.db",
                "metering": "metering" in on,
                "metrics": "metrics" in on,
                "tracing": tracing if "tracing" in on else {"enabled": False},
            },
        }
    )


def payload(stream: bool) -> bytes:
    return chat_request(ROUTE, API_KEY, stream)


async def measure(port: int, pids: dict[str, int], which: str, args: argparse.Namespace) -> dict[str, Any]:
    point: dict[str, Any] = {"server": which}
    for stream in (False, True):
        with CpuMeter(pids) as meter:
            run = await sequential(port, payload(stream), args.requests, args.warmup)
        ms = [s * 1e3 for s in run.latencies_s]
        kind = "stream" if stream else "plain"
        point |= {
            f"{kind}_p50_ms": percentile(ms, 50),
            f"{kind}_p99_ms": percentile(ms, 99),
            f"{kind}_errors": run.num_errors,
            f"{kind}_server_cpu_ms": meter.used_s[which] * 1e3 / max(1, len(ms)),
        }
    meter = CpuMeter(pids)
    rate = await closed_loop(
        port, payload(False), args.concurrency, args.duration_s, args.rate_warmup_s, meter
    )
    point |= {
        "rate_req_s": rate.requests_per_s,
        "rate_errors": rate.num_errors,
        "rate_server_cpu_ms": meter.used_s[which] * 1e3 / max(1, rate.num_ok),
    }
    return point


def summarise(points: list[dict[str, Any]]) -> dict[str, Any]:
    servers = list(dict.fromkeys(p["server"] for p in points))
    by = {which: [p for p in points if p["server"] == which] for which in servers}
    keys = [k for k in points[0] if k != "server" and k != "repeat"]
    summary: dict[str, Any] = {
        which: {k: statistics.median(p[k] for p in rows) for k in keys} for which, rows in by.items()
    }
    for kind in ("plain", "stream"):
        added = [
            on[f"{kind}_p50_ms"] - off[f"{kind}_p50_ms"] for on, off in zip(by["on"], by["off"], strict=True)
        ]
        summary[f"added_{kind}_p50_ms"] = statistics.median(added)
        for part in PARTS:
            if part in by:
                alone = [
                    p[f"{kind}_p50_ms"] - off[f"{kind}_p50_ms"]
                    for p, off in zip(by[part], by["off"], strict=True)
                ]
                summary[f"added_{kind}_p50_ms_{part}_alone"] = statistics.median(alone)
    summary["target_met"] = summary["added_plain_p50_ms"] < 0.3 and summary["added_stream_p50_ms"] < 0.3
    return summary


def print_report(summary: dict[str, Any], meta: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\ntelemetry_overhead  commit={meta['commit']}  cpus={meta['cpus']}  python={meta['python']}  "
        f"repeats={args.repeats}  sequential={args.requests}  "
        f"rate: {args.concurrency} clients, {args.duration_s:g} s"
    )
    header = (
        f"{'':24}{'p50 ms':>8}{'p99 ms':>8}{'CPU ms/req':>11}{'stream p50':>11}{'stream p99':>11}"
        f"{'req/s @' + str(args.concurrency):>11}{'CPU ms/req':>11}"
    )
    print(header)
    for which in [w for w in (*SERVERS, *PARTS) if w in summary]:
        s = summary[which]
        label = f"telemetry {which}" if which in SERVERS else f"{which} only"
        print(
            f"{label:24}{s['plain_p50_ms']:8.3f}{s['plain_p99_ms']:8.3f}"
            f"{s['plain_server_cpu_ms']:11.3f}{s['stream_p50_ms']:11.3f}{s['stream_p99_ms']:11.3f}"
            f"{s['rate_req_s']:11.0f}{s['rate_server_cpu_ms']:11.3f}"
        )
    print(
        f"added by metering + metrics + tracing, p50 (median of per-repeat differences): "
        f"{summary['added_plain_p50_ms']:.3f} ms non-streamed, "
        f"{summary['added_stream_p50_ms']:.3f} ms streamed; "
        f"target < 0.3 ms: {'met' if summary['target_met'] else 'NOT met'}"
    )
    print(f"OTLP sink received {meta['otlp_exports']} exports, {meta['otlp_bytes'] / 1e6:.1f} MB")


async def run(args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], OtlpSink, dict[str, int]]:
    sink = OtlpSink()
    sink_url = await sink.start()
    servers = (*SERVERS, *PARTS) if args.breakdown else SERVERS
    processes = ExitStack()
    try:
        stub = start_stub(log_path=tmp / "stub.log")
        processes.callback(stub.stop)
        ports, pids = {}, {"stub": stub.process.pid}
        for which in servers:
            # Off the event loop: the OTLP sink in it must answer while a server starts.
            started = inferline_server(server_config(which, stub, sink_url, tmp), tmp, which)
            server = await asyncio.to_thread(processes.enter_context, started)
            ports[which], pids[which] = server.port, server.pid
        points = []
        for repeat in range(args.repeats):
            order = servers if repeat % 2 == 0 else servers[::-1]
            for which in order:
                point = await measure(ports[which], pids, which, args) | {"repeat": repeat}
                points.append(point)
                print(
                    f"  repeat {repeat} {which}: p50 {point['plain_p50_ms']:.3f} ms, "
                    f"stream p50 {point['stream_p50_ms']:.3f} ms, {point['rate_req_s']:.0f} req/s",
                    flush=True,
                )
    finally:
        # Off the event loop too: a stopping server flushes its last spans to the sink.
        await asyncio.to_thread(processes.close)
        await sink.stop()
    rows = {
        which: _count_rows(tmp / f"{which}.db") if (tmp / f"{which}.db").exists() else 0 for which in servers
    }
    return points, sink, rows


def _count_rows(db: Path) -> int:
    """Usage rows in a server's database; 0 when its writer never got to create the table (the file
    may exist for the server's other tables: stored responses, batches)."""
    with sqlite3.connect(db) as connection:
        tables = {row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")}
        if "usage_records" not in tables:
            return 0
        return int(connection.execute("select count(*) from usage_records").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000, help="timed sequential requests per server")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--rate-warmup-s", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--breakdown", action="store_true", help="also each part alone (3 more servers)")
    parser.add_argument(
        "--json", type=Path, help="default benchmarks/results/telemetry_overhead.json (--smoke: a temp dir)"
    )
    parser.add_argument("--smoke", action="store_true", help=f"tiny run: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        points, sink, rows = asyncio.run(run(args, Path(tmp)))
        meta = {
            "commit": git_commit(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"),
            "otlp_exports": sink.num_exports,
            "otlp_bytes": sink.num_bytes,
            "usage_rows": rows,
        }
        summary = summarise(points)
        print_report(summary, meta, args)
        print(f"usage rows written: on {rows['on']}, off {rows['off']}")
        out = args.json or (Path(tmp) if args.smoke else RESULTS) / "telemetry_overhead.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "meta": meta,
            "args": vars(args) | {"json": str(out)},
            "summary": summary,
            "points": points,
        }
        out.write_text(json.dumps(document, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
