"""The latency the router adds, and the request rate it sustains, beside the LiteLLM proxy, in one run.

Three targets answer the same `POST /v1/chat/completions` (one user message, max_tokens 16; the
reply is 9 tokens): the stub upstream directly (`inferline.testing.stub_upstream`, raw ASGI that
answers at once: the floor), `inferline serve` in front of it (a remote deployment, a weighted route
so a real policy picks it, and a tenant whose API key is checked), and the LiteLLM proxy in front of
the same stub (`openai/stub` at the stub's /v1, master key set so its auth runs too).

1. Latency: one client, one keep-alive connection, sequential requests, a warm-up then N timed;
   p50/p99 of the client's time to the last byte, non-streaming and streaming (SSE). Added = the
   proxy's figure minus the direct stub's in the same repeat. Each proxy's own estimate
   (`x-inferline-overhead-ms`, `x-litellm-overhead-duration-ms`) is recorded beside it.
2. Request rate: closed loop at each concurrency (one keep-alive connection per client) for a fixed
   window after a warm-up; requests/s answered 200 in the window, and every error counted.

CPU sharing: nothing is pinned. The measured server, the stub and this client (inferline.bench.
loopback: raw asyncio protocol, ~0.1 ms CPU per request) share the machine's cores under
the OS scheduler; the other proxy is started but idle (its CPU over each window is recorded, and is
~0). Each point records the CPU seconds every process used in its window, so the table shows what a
request costs each of them and how busy the cores were. Each proxy runs as one process (LiteLLM's
default of one uvicorn worker; `--litellm-workers` changes it). The order is rotated per repeat, and
the table gives the median of the repeats.

LiteLLM, set up to be as fast as its documented settings allow: its own virtualenv outside the repo
(created on first run: `python -m venv ~/.cache/inferline/litellm/venv && pip install
'litellm[proxy]' httptools`; httptools because uvicorn falls back to the slower pure-Python h11
parser without it, as inferline's own install has it); `LITELLM_LOG=ERROR` (uvicorn's log level
too, so no access log); `LITELLM_LOCAL_MODEL_COST_MAP=True` (no cost-map download); no database, so
no spend logs; `disable_spend_logs`, `disable_error_logs`, `set_verbose: false`,
`turn_off_message_logging: true`; no callbacks; uvloop (its default).

    .venv/bin/python benchmarks/router_overhead.py            # ~10 min on 2 cores
    .venv/bin/python benchmarks/router_overhead.py --smoke    # seconds; without LiteLLM

Where inferline's CPU goes: `--py-spy PATH` samples the inferline process with py-spy (a benchmark-only
tool; `python -m venv ~/.cache/inferline/tools && ~/.cache/inferline/tools/bin/pip install py-spy`)
after the measurement, sequentially and at the highest concurrency, and prints the share per component.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from inferline.bench.harness import ServerProcess, free_port, inferline_server, spawned
from inferline.bench.loopback import CpuMeter, chat_request, closed_loop, connect, sequential
from inferline.bench.report import git_commit
from inferline.config import ServerConfig
from inferline.stats import percentile
from inferline.testing.stub_upstream import StubProcess, start_stub

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LITELLM_HOME = Path("~/.cache/inferline/litellm").expanduser()
API_KEY = "sk-bench"
ROUTE = "bench"
OVERHEAD_HEADERS = {"inferline": b"x-inferline-overhead-ms", "litellm": b"x-litellm-overhead-duration-ms"}
LITELLM_ENV = {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
PROXIES = ("inferline", "litellm")
SMOKE = {
    "requests": 50,
    "warmup": 10,
    "concurrency": [4],
    "duration_s": 1.0,
    "rate_warmup_s": 0.5,
    "repeats": 1,
}
"""--smoke: every code path in seconds (the figures mean nothing)."""


@dataclass
class Target:
    name: str
    """'stub', 'inferline' or 'litellm'."""
    port: int
    pid: int


def payload(stream: bool) -> bytes:
    return chat_request(ROUTE, API_KEY, stream)


# ---- the servers ---------------------------------------------------------------------------------


def litellm_binary(smoke: bool) -> Path | None:
    """The peer's proxy, set up on the first full run. A smoke run leaves it out: its proxy takes longer to
    start than the rest of the smoke run takes."""
    if smoke:
        print("peer skipped: a smoke run leaves LiteLLM out; a full run measures it", flush=True)
        return None
    binary = LITELLM_HOME / "venv" / "bin" / "litellm"
    if binary.exists():
        return binary
    venv = LITELLM_HOME / "venv"
    print(f"creating {venv} for the peer (benchmark-only, outside the repo): pip install 'litellm[proxy]'")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "litellm[proxy]", "httptools"], check=True)
    return binary


def inferline_config(stub: StubProcess, tmp: Path) -> ServerConfig:
    """In front of the stub: a remote deployment, a weighted route and a tenant key; usage metered into
    a SQLite file in `tmp`, metrics and tracing as configured by default."""
    return ServerConfig.model_validate(
        {
            "deployments": [{"name": "stub", "kind": "remote", "base_url": f"{stub.url}/v1"}],
            "routes": [{"name": ROUTE, "policy": "weighted", "weights": {"stub": 1}}],
            "tenants": [{"name": "bench", "api_keys": [API_KEY]}],
            "telemetry": {"database_url": f"sqlite:///{tmp / 'inferline.db'}"},
        }
    )


def litellm_server(
    binary: Path, stub: StubProcess, tmp: Path, workers: int
) -> AbstractContextManager[ServerProcess]:
    port = free_port()
    config = {
        "model_list": [
            {
                "model_name": ROUTE,
                "litellm_params": {"model": "openai/stub", "api_base": f"{stub.url}/v1", "api_key": "x"},
            }
        ],
        "litellm_settings": {"set_verbose": False, "turn_off_message_logging": True},
        "general_settings": {"master_key": API_KEY, "disable_spend_logs": True, "disable_error_logs": True},
    }
    (tmp / "litellm.yaml").write_text(yaml.safe_dump(config))
    command = [str(binary), "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--num_workers", str(workers)]
    headers = {"authorization": f"Bearer {API_KEY}"}
    return spawned(command, port, "/health/liveliness", tmp / "litellm.log", env=LITELLM_ENV, headers=headers)


def start_targets(
    servers: ExitStack, litellm: Path | None, args: argparse.Namespace, tmp: Path
) -> list[Target]:
    """The stub, inferline in front of it, and LiteLLM in front of it when `litellm` is given; each
    stopped when `servers` closes."""
    stub = start_stub(log_path=tmp / "stub.log")
    servers.callback(stub.stop)
    ours = servers.enter_context(inferline_server(inferline_config(stub, tmp), tmp))
    targets = [
        Target("stub", int(stub.url.rsplit(":", 1)[1]), stub.process.pid),
        Target("inferline", ours.port, ours.pid),
    ]
    if litellm is not None:
        peer = servers.enter_context(litellm_server(litellm, stub, tmp, args.litellm_workers))
        targets.append(Target("litellm", peer.port, peer.pid))
    return targets


async def check_answers(target: Target) -> None:
    """Each target must give the stub's reply, streamed and not, before anything is timed."""
    for stream in (False, True):
        run = await sequential(target.port, payload(stream), 1, 2)
        if run.num_errors or not run.latencies_s:
            sys.exit(f"{target.name} does not answer: {run.error_examples}")
        connection = await connect(target.port)
        reply = (await connection.request(payload(stream))).body.decode()
        connection.close()
        if "quick" not in reply or "fox" not in reply or (stream and "data: [DONE]" not in reply):
            sys.exit(f"{target.name} answered something else (stream={stream}): {reply[:300]}")


# ---- measuring -------------------------------------------------------------------------------------


def cpu_shares(used: dict[str, float], target: Target, num_requests: int) -> dict[str, float | None]:
    """Over one window: CPU ms per request of the measured server, the stub and this client; how many
    cores were busy; and the CPU the idle proxies used meanwhile (it should be ~0)."""
    wall_s = used["machine_total"] / (os.cpu_count() or 1)
    n = max(1, num_requests)
    return {
        "server_cpu_ms_per_request": used[target.name] * 1e3 / n if target.name != "stub" else None,
        "stub_cpu_ms_per_request": used["stub"] * 1e3 / n,
        "client_cpu_ms_per_request": used["client"] * 1e3 / n,
        "cores_busy": used["machine"] / wall_s if wall_s else None,
        "idle_proxies_cpu_ms": 1e3 * sum(used[p] for p in PROXIES if p in used and p != target.name),
    }


async def measure_latency(
    target: Target, pids: dict[str, int], stream: bool, args: argparse.Namespace
) -> dict[str, Any]:
    header = OVERHEAD_HEADERS.get(target.name)
    with CpuMeter(pids) as meter:
        run = await sequential(
            target.port, payload(stream), args.requests, args.warmup, (header,) if header else ()
        )
    ms = [s * 1e3 for s in run.latencies_s]
    point: dict[str, Any] = {
        "target": target.name,
        "stream": stream,
        "num_ok": len(ms),
        "num_errors": run.num_errors,
        "error_examples": run.error_examples,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.mean(ms),
        **cpu_shares(meter.used_s, target, len(ms) + run.num_errors),
    }
    if header:
        reported = [float(h[header]) for h in run.headers if header in h]
        if reported:
            point |= {
                "self_reported_p50_ms": percentile(reported, 50),
                "self_reported_p99_ms": percentile(reported, 99),
            }
    return point


async def measure_rate(
    target: Target, pids: dict[str, int], concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    meter = CpuMeter(pids)
    run = await closed_loop(
        target.port, payload(False), concurrency, args.duration_s, args.rate_warmup_s, meter
    )
    ms = [s * 1e3 for s in run.latencies_s] or [float("nan")]
    return {
        "target": target.name,
        "concurrency": concurrency,
        "duration_s": args.duration_s,
        "num_ok": run.num_ok,
        "num_errors": run.num_errors,
        "error_examples": run.error_examples,
        "requests_per_s": run.requests_per_s,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        **cpu_shares(meter.used_s, target, run.num_ok + run.num_errors),
    }


async def one_repeat(
    targets: list[Target], pids: dict[str, int], repeat: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    order = targets[repeat % len(targets) :] + targets[: repeat % len(targets)]
    points = []
    for stream in (False, True):
        for target in order:
            point = await measure_latency(target, pids, stream, args)
            points.append(point | {"repeat": repeat})
            print(
                f"  repeat {repeat} latency {'stream' if stream else 'json'} {target.name}: "
                f"p50 {point['p50_ms']:.3f} ms, p99 {point['p99_ms']:.3f} ms",
                flush=True,
            )
    for concurrency in args.concurrency:
        for target in order:
            point = await measure_rate(target, pids, concurrency, args)
            points.append(point | {"repeat": repeat})
            print(
                f"  repeat {repeat} rate c={concurrency} {target.name}: {point['requests_per_s']:.0f} req/s, "
                f"{point['num_errors']} errors",
                flush=True,
            )
    return points


# ---- where inferline's time goes ------------------------------------------------------------------

COMPONENTS = [
    ("uvicorn", ("uvicorn/",)),
    ("HTTP client, inferline -> upstream", ("inferline/backends/http_client", "httptools/")),
    ("fastapi + starlette", ("fastapi/", "starlette/")),
    ("inferline.backends.remote", ("inferline/backends/remote",)),
    ("inferline.router", ("inferline/router/",)),
    ("inferline.server", ("inferline/server/",)),
    ("pydantic", ("pydantic",)),
    ("json", ("json/",)),
    ("uuid", ("uuid",)),
    ("prometheus_client", ("prometheus_client/",)),
]
"""A sample counts for the first of these found walking its stack from the leaf; asyncio, contextlib and
the like are folded into their caller. The loop's own frame (uvloop's C code, socket calls) is 'event
loop'."""


def components(raw_stacks: Path, num_top: int = 12) -> dict[str, Any]:
    """Share of on-CPU samples per component, and the functions with the most samples of their own,
    from py-spy's raw (collapsed) output."""
    counts: dict[str, int] = {}
    leaves: dict[str, int] = {}
    for line in raw_stacks.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        frames = stack.split(";")
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + int(number)
        name = "other"
        for frame in reversed(frames):
            file = frame.rpartition("(")[2]
            if file.startswith("asyncio/runners"):
                name = "event loop (uvloop, sockets)"
                break
            found = next((c for c, keys in COMPONENTS if any(k in file for k in keys)), None)
            if found is not None:
                name = found
                break
        counts[name] = counts.get(name, 0) + int(number)
    total = sum(counts.values()) or 1
    return {
        "num_samples": total,
        "components": {name: n / total for name, n in sorted(counts.items(), key=lambda kv: -kv[1])},
        "top_self": [[f, n / total] for f, n in sorted(leaves.items(), key=lambda kv: -kv[1])[:num_top]],
    }


async def profile_inferline(
    py_spy: Path, target: Target, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """py-spy samples the inferline process (500 Hz, without pausing it) under sequential load and under
    the highest concurrency, after the measurement so it cannot disturb it."""
    profiles = {}
    loads = {
        "sequential": lambda: sequential(target.port, payload(False), args.requests * 5, 0),
        f"closed loop {max(args.concurrency)}": lambda: closed_loop(
            target.port, payload(False), max(args.concurrency), args.duration_s, 0
        ),
    }
    for label, load in loads.items():
        out = tmp / f"pyspy-{label.replace(' ', '-')}.txt"
        command = [str(py_spy), "record", "--pid", str(target.pid), "--rate", "500", "--format", "raw"]
        spy = subprocess.Popen([*command, "--nonblocking", "--output", str(out)], stdout=subprocess.DEVNULL)
        await asyncio.sleep(1)  # py-spy attaches
        await load()
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        spy.wait(60)
        profiles[label] = components(out)
    return profiles


# ---- reporting -------------------------------------------------------------------------------------

LABELS = {"stub": "stub directly (the floor)", "inferline": "inferline -> stub", "litellm": "LiteLLM -> stub"}


def median_of(points: list[dict[str, Any]], key: str) -> float | None:
    values = [p[key] for p in points if p.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(points: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Medians over the repeats; 'added' is each repeat's proxy figure minus that repeat's stub figure."""
    names = [name for name in LABELS if any(p["target"] == name for p in points)]
    latency: list[dict[str, Any]] = []
    for stream in (False, True):
        floor = {p["repeat"]: p for p in points if p.get("stream") is stream and p["target"] == "stub"}
        for name in names:
            mine = [p for p in points if p.get("stream") is stream and p["target"] == name]
            row: dict[str, Any] = {"target": name, "stream": stream}
            for key in (
                "p50_ms",
                "p99_ms",
                "mean_ms",
                "self_reported_p50_ms",
                "self_reported_p99_ms",
                "server_cpu_ms_per_request",
                "stub_cpu_ms_per_request",
                "client_cpu_ms_per_request",
            ):
                row[key] = median_of(mine, key)
            for q in ("p50", "p99"):
                row[f"added_{q}_ms"] = statistics.median(
                    p[f"{q}_ms"] - floor[p["repeat"]][f"{q}_ms"] for p in mine
                )
            row["num_errors"] = sum(p["num_errors"] for p in mine)
            latency.append(row)
    rate: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    for concurrency in args.concurrency:
        by_target = {
            n: [p for p in points if p.get("concurrency") == concurrency and p["target"] == n] for n in names
        }
        for name, mine in by_target.items():
            row = {
                "target": name,
                "concurrency": concurrency,
                "num_errors": sum(p["num_errors"] for p in mine),
                "num_ok": sum(p["num_ok"] for p in mine),
            }
            for key in (
                "requests_per_s",
                "p50_ms",
                "p99_ms",
                "server_cpu_ms_per_request",
                "stub_cpu_ms_per_request",
                "client_cpu_ms_per_request",
                "cores_busy",
            ):
                row[key] = median_of(mine, key)
            rate.append(row)
        if "litellm" in by_target:
            paired = zip(by_target["inferline"], by_target["litellm"], strict=True)
            ratios[str(concurrency)] = statistics.median(
                a["requests_per_s"] / b["requests_per_s"] for a, b in paired
            )
    idle_ms = max(p["idle_proxies_cpu_ms"] for p in points)
    return {
        "latency": latency,
        "rate": rate,
        "inferline_over_litellm_requests_per_s": ratios,
        "max_idle_proxies_cpu_ms": idle_ms,
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(summary: dict[str, Any], meta: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\nrouter_overhead  commit={meta['commit']}  cpus={meta['cpus']}  python={meta['python']}  "
        f"litellm={meta['litellm_version']} (workers: {args.litellm_workers})  repeats={args.repeats}"
    )
    print(
        f"CPU: nothing pinned; the measured server, the stub and this client share {meta['cpus']} cores "
        "under the OS scheduler (CPU ms/req and cores busy: /proc over each timed window); the proxy "
        "not being "
        f"measured idles (at most {summary['max_idle_proxies_cpu_ms']:.0f} ms CPU in any window)."
    )
    print(
        f"\nLatency: one client, keep-alive, sequential, {args.warmup} warm-up + {args.requests} timed; "
        f"median of {args.repeats} repeats"
    )
    head = (
        f"{'':34} {'p50 ms':>7} {'p99 ms':>7} {'added p50':>9} {'added p99':>9} {'self p50':>8} "
        f"{'self p99':>8} {'server CPU ms/req':>17}"
    )
    for stream in (False, True):
        print(f"\n{'streaming, time to last byte' if stream else 'non-streaming'}\n{head}")
        for row in (r for r in summary["latency"] if r["stream"] is stream):
            added = row["target"] != "stub"
            print(
                f"{LABELS[row['target']]:34} {fmt(row['p50_ms'], 3):>7} {fmt(row['p99_ms'], 3):>7} "
                f"{fmt(row['added_p50_ms'] if added else None, 3):>9} "
                f"{fmt(row['added_p99_ms'] if added else None, 3):>9} "
                f"{fmt(row['self_reported_p50_ms'], 3):>8} {fmt(row['self_reported_p99_ms'], 3):>8} "
                f"{fmt(row['server_cpu_ms_per_request'] if added else None, 3):>17}"
                + (f"  ERRORS {row['num_errors']}" if row["num_errors"] else "")
            )
    print(
        f"\nRequest rate: closed loop, {args.rate_warmup_s:g} s warm-up then {args.duration_s:g} s timed; "
        f"median of {args.repeats} (errors: summed)"
    )
    print(
        f"{'':34} {'conc':>4} {'req/s':>8} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU ms/req: server':>18} {'stub':>6} {'client':>6} {'cores busy':>10}"
    )
    for row in summary["rate"]:
        print(
            f"{LABELS[row['target']]:34} {row['concurrency']:>4} {fmt(row['requests_per_s'], 0):>8} "
            f"{row['num_errors']:>6} {fmt(row['p50_ms']):>7} {fmt(row['p99_ms']):>7} "
            f"{fmt(row['server_cpu_ms_per_request'] if row['target'] != 'stub' else None, 3):>18} "
            f"{fmt(row['stub_cpu_ms_per_request'], 3):>6} {fmt(row['client_cpu_ms_per_request'], 3):>6} "
            f"{fmt(row['cores_busy']):>10}"
        )
    by_concurrency = summary["inferline_over_litellm_requests_per_s"]
    ratios = ", ".join(f"{c} clients {r:.2f}x" for c, r in by_concurrency.items()) or "no peer"
    print(f"\ninferline / LiteLLM request rate (median of per-repeat ratios): {ratios}")
    added = next(r for r in summary["latency"] if r["target"] == "inferline" and not r["stream"])
    versus_peer = ("met" if min(by_concurrency.values()) >= 3 else "NOT met") if by_concurrency else "no peer"
    print(
        f"targets: added p50 < 1 ms: {'met' if added['added_p50_ms'] < 1 else 'NOT met'} "
        f"({added['added_p50_ms']:.3f} ms); rate >= 3x LiteLLM: {versus_peer}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000, help="timed sequential requests per target")
    parser.add_argument("--warmup", type=int, default=100, help="sequential warm-up requests per target")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[16, 64])
    parser.add_argument("--duration-s", type=float, default=8.0, help="timed window per rate point")
    parser.add_argument("--rate-warmup-s", type=float, default=2.0, help="untimed start of each rate point")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--litellm-workers", type=int, default=1)
    parser.add_argument(
        "--json", type=Path, help="default benchmarks/results/router_overhead.json (--smoke: a temp dir)"
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        help="py-spy binary: after the measurement, sample inferline under load and print where its CPU goes "
        "(e.g. python -m venv ~/.cache/inferline/tools && ~/.cache/inferline/tools/bin/pip install py-spy)",
    )
    parser.add_argument("--smoke", action="store_true", help=f"tiny run, no LiteLLM install: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()

    binary = litellm_binary(args.smoke)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with ExitStack() as servers:
            targets = start_targets(servers, binary, args, tmp)
            points, profiles = asyncio.run(run_all(targets, args, tmp))
        meta = {
            "date": time.strftime("%Y-%m-%d"),
            "commit": git_commit(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "litellm_version": None if binary is None else litellm_version(binary),
            "litellm_env": LITELLM_ENV,
            "pinning": "none; server, stub and client share all cores under the OS scheduler",
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        }
        summary = summarise(points, args)
        out = args.json or (tmp if args.smoke else RESULTS) / "router_overhead.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        document = {"meta": meta, "summary": summary, "points": points, "inferline_profile": profiles}
        out.write_text(json.dumps(document, indent=1))
        print_report(summary, meta, args)
        for label, profile in profiles.items():
            shares = ", ".join(f"{name} {share:.0%}" for name, share in profile["components"].items())
            print(f"\ninferline's CPU, {label} (py-spy, {profile['num_samples']} samples): {shares}")
            for function, share in profile["top_self"]:
                print(f"  {share:6.1%}  {function}")
        print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def litellm_version(binary: Path) -> str:
    command = [
        str(binary.with_name("python")),
        "-c",
        "import importlib.metadata as m; print(m.version('litellm'))",
    ]
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()


async def run_all(
    targets: list[Target], args: argparse.Namespace, tmp: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    pids = {t.name: t.pid for t in targets}
    for target in targets:
        await check_answers(target)
    points = []
    for repeat in range(args.repeats):
        points += await one_repeat(targets, pids, repeat, args)
    profiles = {} if args.py_spy is None else await profile_inferline(args.py_spy, targets[1], args, tmp)
    return points, profiles


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()  # the client's own event loop costs less, so more of the CPU goes to the servers
    except ImportError:
        pass
    main()
