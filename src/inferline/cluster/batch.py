"""`inferline batch run --ray`: a batch file's lines through Ray Data, `map_batches` on engine actors.

Each actor loads the config's deployments once and answers its blocks of lines through the same serving
path as `inferline batch run` (parsing, chat template, sampling, the OpenAI response body, batch
priority). Results come back in the plan's order and are committed, block by block, to the same output and
error files (batch/runner.py's OutputLog), so a rerun with the same output resumes after the last block
committed. The lines to run are read here and travel with the data set: actors on other nodes do not
see this machine's files."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import ray
from ray.data import DataContext

from inferline.batch.lines import IndexedLine, read_line_at
from inferline.batch.runner import LineResult, OutputLog
from inferline.config import LocalDeploymentBase, ServerConfig
from inferline.router.deployments import DeploymentPool
from inferline.router.limits import Limiter, Principal
from inferline.router.request import Caller
from inferline.router.router import Router
from inferline.server.batch_serving import ServingExecutor
from inferline.server.openai_serving import OpenAIServing
from inferline.types import Priority

T = TypeVar("T")


class LineAnswerer:
    """One Ray Data actor: the config's deployments loaded once, each block's lines answered at once
    (the engine batches them). Ray calls it from a thread of its own; the deployments live on an event
    loop this actor runs beside it."""

    def __init__(self, config: ServerConfig, endpoint: str, batch_id: str) -> None:
        self.endpoint, self.batch_id = endpoint, batch_id
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._executor = self._on_loop(self._load(config))

    async def _load(self, config: ServerConfig) -> ServingExecutor:
        pool = DeploymentPool(config.deployments)
        await pool.load_all()
        return ServingExecutor(OpenAIServing(Router(config, pool, Limiter.from_config(config))))

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        answers = self._on_loop(self._answer(block))
        return {
            "custom_id": block["custom_id"],
            "status_code": np.array([status for status, _, _ in answers]),
            "body": np.array([body for _, body, _ in answers], dtype=object),
            "request_id": np.array([request_id for _, _, request_id in answers], dtype=object),
        }

    async def _answer(self, block: dict[str, np.ndarray]) -> list[tuple[int, str, str]]:
        async def one(number: int, body: str) -> tuple[int, str, str]:
            caller = Caller(
                f"{self.batch_id}-{number}",
                Principal("default"),
                Priority.BATCH,
                endpoint=self.endpoint,
                batch_id=self.batch_id,
            )
            status, answer = await self._executor.run(self.endpoint, json.loads(body), caller)
            return status, json.dumps(answer), caller.request_id

        lines = zip(block["number"], block["body"], strict=True)
        return await asyncio.gather(*(one(int(number), str(body)) for number, body in lines))

    def _on_loop(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()


def actor_resources(config: ServerConfig) -> tuple[float, float]:
    """CPUs and GPUs one actor reserves: the per-replica resources of every local deployment it loads."""
    local = [d for d in config.deployments if isinstance(d, LocalDeploymentBase)]
    return sum(d.resources.num_cpus for d in local), sum(d.resources.num_gpus for d in local)


def run_lines_on_ray(
    lines: list[IndexedLine],
    input_path: Path,
    log: OutputLog,
    config: ServerConfig,
    endpoint: str,
    batch_id: str,
    num_actors: int,
    lines_per_block: int,
    on_commit: Callable[[list[LineResult]], None],
) -> None:
    """Every line of `lines` not already in `log` (recovered first), through `num_actors` engine actors
    (blocking: call it off the event loop). Ray must be started (cluster/serve.py's start_ray)."""
    done = log.recover()
    with input_path.open("rb") as file:
        rows = [
            {
                "number": line.number,
                "custom_id": line.custom_id,
                "body": json.dumps(read_line_at(file, line.offset)["body"]),
            }
            for line in lines
            if line.custom_id not in done
        ]
    if not rows:
        return
    context = DataContext.get_current()
    context.execution_options.preserve_order = True  # committed in the plan's order, as without Ray
    context.enable_progress_bars = False  # the CLI shows its own
    num_cpus, num_gpus = actor_resources(config)
    answered = ray.data.from_items(rows).map_batches(
        LineAnswerer,
        fn_constructor_args=(config, endpoint, batch_id),
        batch_size=lines_per_block,
        concurrency=num_actors,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    for block in answered.iter_batches(batch_size=None, batch_format="numpy"):
        results = [
            LineResult(str(custom_id), int(status), json.loads(body), str(request_id))
            for custom_id, status, body, request_id in zip(
                block["custom_id"], block["status_code"], block["body"], block["request_id"], strict=True
            )
        ]
        log.commit(results)
        on_commit(results)
