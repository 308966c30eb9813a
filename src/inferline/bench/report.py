"""What the user sees and keeps: a progress bar while it runs, a table at the end, the JSON document."""

from __future__ import annotations

import datetime
import json
import math
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import inferline
from inferline.bench.config import LoadPoint
from inferline.bench.load import PointRun
from inferline.bench.metrics import SLO, Distribution, PointMetrics, request_tpot_s
from inferline.bench.schema import SCHEMA_VERSION
from inferline.errors import InferlineError


@dataclass
class PointResult:
    point: LoadPoint
    run: PointRun
    metrics: PointMetrics


def console() -> Console:
    """stdout; unwrapped when it is a file or a pipe (rich would otherwise assume 80 columns)."""
    out = Console()
    return out if out.is_terminal else Console(width=200)


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("requests"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def workload_text(workload: dict[str, Any]) -> str:
    """`synthetic 128 in / 64 out (±25%), ignore-eos` or `dataset chat.jsonl`, for titles."""
    if workload["source"] == "dataset":
        text = f"dataset {Path(workload['dataset']).name}"
    else:
        jitter = f" (±{workload['len_jitter']:.0%})" if workload["len_jitter"] else ""
        text = f"synthetic {workload['input_len']} in / {workload['output_len']} out{jitter}"
    return text + (", ignore-eos" if workload["ignore_eos"] else "")


# ---- tables ------------------------------------------------------------------------------------


def _ms(d: Distribution | None) -> str:
    return "-" if d is None else f"{d.mean * 1e3:.1f} / {d.median * 1e3:.1f} / {d.p99 * 1e3:.1f}"


def serve_table(title: str, results: list[PointResult], slo: SLO | None) -> Table:
    table = Table(title=title, title_justify="left")
    columns = ["point", "ok / failed", "duration s", "in / out tokens", "req/s", "out tok/s", "total tok/s"]
    columns += ["goodput req/s"] if slo is not None else []
    columns += ["TTFT ms mean/p50/p99", "TPOT ms mean/p50/p99", "ITL ms mean/p50/p99", "E2E s p50/p99"]
    for column in columns:
        table.add_column(column, justify="left" if column == "point" else "right")
    for result in results:
        m = result.metrics
        row = [
            result.point.label,
            f"{m.num_succeeded} / {m.num_failed}",
            f"{m.duration_s:.2f}",
            f"{m.input_tokens} / {m.output_tokens}",
            f"{m.request_throughput_rps:.2f}",
            f"{m.output_throughput_tps:.1f}",
            f"{m.total_token_throughput_tps:.1f}",
        ]
        row += [f"{m.goodput_rps:.2f}"] if m.goodput_rps is not None else []
        e2e = "-" if m.e2e_s is None else f"{m.e2e_s.median:.2f} / {m.e2e_s.p99:.2f}"
        row += [_ms(m.ttft_s), _ms(m.tpot_s), _ms(m.itl_s), e2e]
        table.add_row(*row)
    return table


def error_lines(results: list[PointResult]) -> list[str]:
    """One line per distinct error of each point, with how many requests it failed."""
    return [
        f"{result.point.label}: {count} failed: {message}"
        for result in results
        for message, count in result.metrics.errors.items()
    ]


def offline_table(title: str, points: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("batch", "elapsed s", "output tok/s", "total tok/s"):
        table.add_column(column, justify="right")
    for p in points:
        table.add_row(
            str(p["batch_size"]),
            f"{p['elapsed_s']:.2f}",
            f"{p['output_throughput_tps']:.1f}",
            f"{p['total_token_throughput_tps']:.1f}",
        )
    return table


# ---- the JSON document ---------------------------------------------------------------------------


def git_commit() -> str | None:
    """`git describe --always --dirty` of the tree inferline runs from; None outside a checkout."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=Path(inferline.__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def environment(label: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "inferline_version": inferline.__version__,
        "git_commit": git_commit(),
        "host": platform.node(),
        "label": label,
    }


def _distribution(d: Distribution | None) -> dict[str, Any] | None:
    return None if d is None else asdict(d)


def _rate(point: LoadPoint) -> float | str | None:
    if point.request_rate is None:
        return None
    return "inf" if math.isinf(point.request_rate) else point.request_rate


def point_document(result: PointResult) -> dict[str, Any]:
    m, started = result.metrics, result.run.started_s
    return {
        "mode": result.point.mode,
        "concurrency": result.point.concurrency,
        "request_rate": _rate(result.point),
        "num_requests": m.num_requests,
        "num_succeeded": m.num_succeeded,
        "num_failed": m.num_failed,
        "duration_s": m.duration_s,
        "input_tokens": m.input_tokens,
        "output_tokens": m.output_tokens,
        "request_throughput_rps": m.request_throughput_rps,
        "output_throughput_tps": m.output_throughput_tps,
        "total_token_throughput_tps": m.total_token_throughput_tps,
        "goodput_rps": m.goodput_rps,
        "ttft_s": _distribution(m.ttft_s),
        "tpot_s": _distribution(m.tpot_s),
        "itl_s": _distribution(m.itl_s),
        "e2e_s": _distribution(m.e2e_s),
        "errors": [{"message": message, "count": count} for message, count in m.errors.items()],
        "requests": [
            {
                "send_offset_s": r.send_s - started,
                "ttft_s": r.ttft_s,
                "tpot_s": request_tpot_s(r),
                "e2e_s": r.e2e_s,
                "prompt_tokens": r.prompt_tokens,
                "output_tokens": r.output_tokens,
                "error": r.error,
            }
            for r in result.run.records
        ],
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    except OSError as error:
        raise InferlineError(f"--json: cannot write {path}: {error}") from None
