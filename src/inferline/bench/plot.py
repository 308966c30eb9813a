"""`inferline bench plot`: latency against output throughput, one line per result file.

Two panels share the x axis (output tokens/s): TTFT p50 and TPOT p50, in milliseconds. Each file is
one line labelled by its run's label (server and model), each point marked with its load (c4 = closed
loop at concurrency 4, r2 = open loop at 2 req/s), so runs of different servers land on one chart.
matplotlib draws through its Agg canvas directly: no pyplot, no global backend, no display needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inferline.bench.report import workload_text
from inferline.bench.schema import validate
from inferline.errors import InferlineError, InvalidRequestError, needs_extra


def load_result(path: Path) -> dict[str, Any]:
    """A serve result file, checked against the schema."""
    try:
        document = json.loads(path.read_text())
    except OSError as error:
        raise InvalidRequestError(f"cannot read {path}: {error}", "result") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidRequestError(f"{path} is not JSON: {error}", "result") from None
    validate(document, str(path))
    if document["kind"] != "serve":
        raise InvalidRequestError(
            f"{path} is an offline result; plot draws serve results (latency needs a server)", "result"
        )
    return document


def _point_tag(point: dict[str, Any]) -> str:
    if point["mode"] == "closed":
        return f"c{point['concurrency']}"
    return f"r{point['request_rate']}"


def _series(document: dict[str, Any], key: str) -> tuple[list[float], list[float], list[str]]:
    """(throughput, latency ms, tags) of the points that have this latency."""
    rows = [
        (p["output_throughput_tps"], p[key]["median"] * 1e3, _point_tag(p))
        for p in document["points"]
        if p[key] is not None
    ]
    rows.sort()
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def plot_results(documents: list[dict[str, Any]], out_path: Path) -> None:
    with needs_extra("bench", "matplotlib", "plotting"):
        from matplotlib.figure import Figure
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    panels = figure.subplots(1, 2, sharex=True)
    for axes, key, title in zip(panels, ("ttft_s", "tpot_s"), ("TTFT p50", "TPOT p50"), strict=True):
        for document in documents:
            x, y, tags = _series(document, key)
            axes.plot(x, y, marker="o", label=document["label"])
            for xi, yi, tag in zip(x, y, tags, strict=True):
                axes.annotate(tag, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axes.set_title(title)
        axes.set_xlabel("output throughput (tokens/s)")
        axes.set_ylabel(f"{title} (ms)")
        axes.grid(alpha=0.3)
    panels[0].legend(fontsize=8)
    figure.suptitle(f"inferline bench serve: {workload_text(documents[0]['workload'])}")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out_path, dpi=120)
    except (OSError, ValueError) as error:
        raise InferlineError(f"cannot write the plot {out_path}: {error}") from None


def plot_files(paths: list[Path], out_path: Path) -> int:
    plot_results([load_result(path) for path in paths], out_path)
    print(f"wrote {out_path}")
    return 0
