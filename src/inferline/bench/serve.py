"""`inferline bench serve`: check the server answers, warm it up, run each load point, report.

Every point gets the same number of requests with the same lengths and fresh synthetic words (see
workload.py). Warm-up requests run once, before the first point, and count nowhere. The exit status
is 0 when any request succeeded, 1 when every one failed (the errors are in the report), and 2 when
the server cannot be reached at all.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID

from inferline.bench.client import StreamingClient, server_label
from inferline.bench.config import LoadPoint, ServeBenchConfig
from inferline.bench.load import PointRun, arrival_offsets_s, run_closed_loop, run_open_loop
from inferline.bench.metrics import compute_metrics
from inferline.bench.record import RequestRecord
from inferline.bench.report import (
    PointResult,
    console,
    environment,
    error_lines,
    point_document,
    progress_bar,
    serve_table,
    workload_text,
    write_json,
)
from inferline.bench.workload import (
    BenchRequest,
    SyntheticSpec,
    check_endpoint,
    load_dataset,
    synthetic_requests,
    take,
)

RequestsFor = Callable[[int], list[BenchRequest]]
"""salt → the requests of one point (salt 0 is the warm-up)."""

DEFAULT_NUM_PROMPTS = 100


def run_serve_bench(config: ServeBenchConfig) -> int:
    requests_for, num_prompts = _workload(config)
    results, listed = asyncio.run(_measure(config, requests_for))
    document = serve_document(config, num_prompts, listed, results)
    out = console()
    out.print(
        serve_table(
            f"inferline bench serve  {document['label']}  {_path(config)}  "
            f"{workload_text(document['workload'])}  {num_prompts} requests per point  "
            f"seed {config.seed}  warm-up {config.warmup}  {document['created']}",
            results,
            config.slo,
        )
    )
    for line in error_lines(results):
        out.print(f"[red]{line}[/red]", highlight=False, markup=True, soft_wrap=True)
    _save(config, document)
    records = [r for result in results for r in result.run.records]
    if records and not any(r.ok for r in records):
        Console(stderr=True).print(
            f"error: every request failed ({len(records)} of {len(records)}); first error: "
            f"{records[0].error}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        return 1
    return 0


def _path(config: ServeBenchConfig) -> str:
    return "/v1/chat/completions" if config.endpoint == "chat" else "/v1/completions"


def _save(config: ServeBenchConfig, document: dict[str, Any]) -> None:
    notes = Console(stderr=True)
    if config.json_path is not None:
        write_json(config.json_path, document)
        notes.print(f"wrote {config.json_path}", highlight=False)
    if config.plot_path is not None:
        from inferline.bench.plot import plot_results

        plot_results([document], config.plot_path)
        notes.print(f"wrote {config.plot_path}", highlight=False)


def _workload(config: ServeBenchConfig) -> tuple[RequestsFor, int]:
    if config.dataset is not None:
        lines = load_dataset(config.dataset, config.output_len)
        check_endpoint(lines, config.endpoint)
        num = config.num_prompts or len(lines)
        if num > len(lines):
            Console(stderr=True).print(
                f"note: {config.dataset} has {len(lines)} requests; cycling through them to send {num}",
                highlight=False,
            )
        return (lambda salt: take(lines, num)), num
    spec = SyntheticSpec(config.input_len, config.output_len, config.len_jitter, config.seed)
    num = config.num_prompts or DEFAULT_NUM_PROMPTS
    return (lambda salt: synthetic_requests(spec, num, salt)), num


def _max_connections(config: ServeBenchConfig) -> int | None:
    """Enough pooled connections for the most requests any point keeps in flight (None: no limit)."""
    if config.request_rate and config.max_concurrency is None:
        return None
    return max([*config.concurrency, config.max_concurrency or 1])


async def _measure(
    config: ServeBenchConfig, requests_for: RequestsFor
) -> tuple[list[PointResult], list[str]]:
    async with StreamingClient(
        config.base_url,
        config.model,
        config.endpoint,
        api_key=config.api_key,
        ignore_eos=config.ignore_eos,
        temperature=config.temperature,
        timeout_s=config.timeout_s,
        max_connections=_max_connections(config),
    ) as client:
        notes = Console(stderr=True)
        listed = await client.list_models()  # fails fast, with a clear message, on a wrong URL
        if listed and config.model not in listed:
            notes.print(
                f"note: the server lists models {', '.join(listed)}; not {config.model!r}", highlight=False
            )
        if config.warmup:
            warm = take(requests_for(0), config.warmup)
            run = await run_closed_loop(client.send, warm, max(config.concurrency or [1]))
            _note_failures("warm-up", run.records, notes)
        results = []
        with progress_bar(config.progress) as progress:
            for salt, point in enumerate(config.points, start=1):
                requests = requests_for(salt)
                task = progress.add_task(point.label, total=len(requests))
                on_done = functools.partial(_advance, progress, task)
                run = await _run_point(client, point, requests, config, on_done)
                metrics = compute_metrics(run.records, run.duration_s, config.slo)
                results.append(PointResult(point, run, metrics))
    return results, listed


async def _run_point(
    client: StreamingClient,
    point: LoadPoint,
    requests: list[BenchRequest],
    config: ServeBenchConfig,
    on_done: Callable[[RequestRecord], None],
) -> PointRun:
    if point.mode == "closed":
        return await run_closed_loop(client.send, requests, point.concurrency or 1, on_done)
    rate = point.request_rate if point.request_rate is not None else math.inf
    offsets = arrival_offsets_s(len(requests), rate, config.burstiness, config.seed)
    return await run_open_loop(client.send, requests, offsets, point.concurrency, on_done)


def _advance(progress: Progress, task: TaskID, _record: RequestRecord) -> None:
    progress.advance(task)


def _note_failures(what: str, records: list[RequestRecord], notes: Console) -> None:
    failed = [r for r in records if not r.ok]
    if failed:
        notes.print(
            f"note: {what}: {len(failed)} of {len(records)} requests failed: {failed[0].error}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def serve_document(
    config: ServeBenchConfig, num_prompts: int, listed: list[str], results: list[PointResult]
) -> dict[str, Any]:
    """The run as an inferline-bench/1 document (schema.py)."""
    label = config.label or f"{config.model} @ {server_label(config.base_url)}"
    return {
        **environment(label),
        "kind": "serve",
        "server": {
            "base_url": config.base_url,
            "model": config.model,
            "endpoint": config.endpoint,
            "models_listed": listed,
        },
        "workload": {
            "source": "synthetic" if config.dataset is None else "dataset",
            "dataset": None if config.dataset is None else str(config.dataset),
            "input_len": config.input_len,
            "output_len": config.output_len,
            "len_jitter": config.len_jitter,
            "num_prompts": num_prompts,
            "ignore_eos": config.ignore_eos,
            "temperature": config.temperature,
            "seed": config.seed,
        },
        "load": {
            "warmup": config.warmup,
            "burstiness": config.burstiness,
            "max_concurrency": config.max_concurrency,
        },
        "slo": None if config.slo is None else asdict(config.slo),
        "points": [point_document(result) for result in results],
    }
