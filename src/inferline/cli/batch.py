"""`inferline batch run INPUT -o OUTPUT`: a batch file through the engine in this process, no server.

The same validation, ordering, batch-priority execution and resumable output as the Batch API: run it
again with the same OUTPUT and it carries on after the last line written.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from inferline.batch.lines import ENDPOINTS
from inferline.cli.options import LOCAL_RAY, add_field, add_ray_options
from inferline.config import BatchConfig, EmbeddingDeploymentConfig, LLMDeploymentConfig, ServerConfig
from inferline.errors import needs_extra


def _config(args: argparse.Namespace) -> ServerConfig:
    from inferline.server.serve import load_server_config

    if args.config is not None:
        return load_server_config(args.config)
    embeddings = args.endpoint == "/v1/embeddings"
    name = args.model or ("all-minilm-l6-v2" if embeddings else "smollm2-135m-instruct")
    source = "default" if name == "smollm2-135m-instruct" else name
    deployment: Any = (
        EmbeddingDeploymentConfig(name=name, source=source)
        if embeddings
        else LLMDeploymentConfig(name=name, source=source)
    )
    return ServerConfig(deployments=[deployment])


async def _run(args: argparse.Namespace, config: ServerConfig, work: Path, results: Path) -> int:
    from inferline.batch.lines import IndexedLine, plan_file
    from inferline.batch.runner import LineResult, OutputLog, run_lines
    from inferline.router.deployments import DeploymentPool
    from inferline.router.limits import Limiter, Principal
    from inferline.router.request import Caller
    from inferline.router.router import Router
    from inferline.server.batch_serving import ServingExecutor
    from inferline.server.openai_serving import OpenAIServing
    from inferline.types import Priority

    if args.ray is None:
        pool = DeploymentPool(config.deployments)
        await pool.load_all()
    else:  # the models load on the Ray actors; here lines are only planned, with a byte bound on tokens
        from inferline.cluster.serve import build_cluster_backend

        pool = DeploymentPool(config.deployments, build=build_cluster_backend)
    router = Router(config, pool, Limiter.from_config(config))
    executor = ServingExecutor(OpenAIServing(router))
    try:
        plan = await asyncio.to_thread(plan_file, work, args.endpoint, executor)
        if plan.errors:
            for error in plan.errors:
                print(f"error: {error['message']}", file=sys.stderr)
            return 2
        principal = Principal("default")
        batch_id = f"cli-{results.name}"

        async def run_line(line: IndexedLine, raw: dict[str, Any]) -> LineResult:
            caller = Caller(
                f"{batch_id}-{line.number}",
                principal,
                Priority.BATCH,
                endpoint=args.endpoint,
                batch_id=batch_id,
            )
            status, body = await executor.run(args.endpoint, raw["body"], caller)
            return LineResult(line.custom_id, status, body, caller.request_id)

        log = OutputLog(results, results.with_name(results.name + ".errors.jsonl"))
        window = args.max_in_flight_lines or config.batch.max_in_flight_lines or executor.window(plan.models)
        with _Progress(len(plan.lines)) as progress:
            if args.ray is None:
                await run_lines(plan.lines, work, log, run_line, window, asyncio.Event(), progress.add)
            else:
                from inferline.cluster.batch import run_lines_on_ray

                await asyncio.to_thread(
                    run_lines_on_ray,
                    plan.lines,
                    work,
                    log,
                    config,
                    args.endpoint,
                    batch_id,
                    args.ray_actors,
                    window,
                    progress.add,
                )
        print(
            f"{log.num_completed} lines answered, {log.num_failed} failed (in {log.error_path})",
            file=sys.stderr,
        )
        return 0 if log.num_failed == 0 else 1
    finally:
        await pool.unload_all()


class _Progress:
    """A rich progress bar: lines done of the total, lines/s, output tokens/s and the time left."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[lines_per_s]:.1f} lines/s"),
            TextColumn("{task.fields[tokens_per_s]:.0f} tok/s"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.progress.add_task("batch", total=total, lines_per_s=0.0, tokens_per_s=0.0)
        self.started = time.monotonic()
        self.num_lines = 0
        self.num_tokens = 0

    def add(self, results: list[Any]) -> None:
        self.num_lines += len(results)
        self.num_tokens += sum(r.completion_tokens for r in results)
        elapsed_s = max(1e-9, time.monotonic() - self.started)
        self.progress.update(
            self.task,
            advance=len(results),
            lines_per_s=self.num_lines / elapsed_s,
            tokens_per_s=self.num_tokens / elapsed_s,
        )

    def __enter__(self) -> _Progress:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()


def _batch_run(args: argparse.Namespace) -> int:
    from inferline.batch.formats import is_parquet, normalise, write_parquet

    source, output = Path(args.input), Path(args.output)
    if not source.exists():
        print(f"error: {source} does not exist", file=sys.stderr)
        return 2
    config = _config(args)
    # Parquet output is written at the end from JSONL results, which a rerun resumes from.
    results = output.with_name(output.name + ".partial.jsonl") if is_parquet(output) else output
    work = output.with_name(output.name + ".input.jsonl")
    normalise(source, work, args.endpoint, args.model)
    if args.ray is None:
        code = asyncio.run(_run(args, config, work, results))
    else:
        with needs_extra("ray", "ray", "inferline batch run --ray"):
            from inferline.cluster.serve import start_ray, stop_ray

        start_ray(None if args.ray == LOCAL_RAY else args.ray, args.ray_num_cpus)
        try:
            code = asyncio.run(_run(args, config, work, results))
        finally:
            stop_ray([], started_here=args.ray == LOCAL_RAY)
    if code != 2 and is_parquet(output):
        num_rows = write_parquet(results, output)
        print(f"{num_rows} rows written to {output}", file=sys.stderr)
    return code


def add_batch_parser(commands: Any) -> None:
    batch = commands.add_parser("batch", help="run batch files through the engine")
    actions = batch.add_subparsers(dest="batch_command", required=True)
    run = actions.add_parser(
        "run", help="run a JSONL or Parquet batch file offline; rerun with the same output to resume"
    )
    run.add_argument("input", help="JSONL lines {custom_id, method, url, body}, or Parquet (custom_id, body)")
    run.add_argument("-o", "--output", required=True, help="results: .jsonl, or .parquet")
    run.add_argument("--model", default=None, help="model for every line (default: each line's body.model)")
    run.add_argument(
        "--endpoint", default="/v1/chat/completions", choices=ENDPOINTS, help="(default %(default)s)"
    )
    run.add_argument("--config", default=None, help="YAML server config whose deployments serve the lines")
    add_field(run, BatchConfig, "max_in_flight_lines", "--max-in-flight", type=int)
    add_ray_options(run, "run the lines on Ray Data engine actors")
    run.add_argument(
        "--ray-actors", type=int, default=1, help="engine actors with --ray (each loads the models once)"
    )
    run.set_defaults(handler=_batch_run)
