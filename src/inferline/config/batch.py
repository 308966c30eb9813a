"""Batch jobs: where their files live, how hard they push the engine, and carbon-aware start times."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class CarbonConfig(BaseModel):
    """Carbon-aware windows for batches that ask for them (`metadata.carbon_aware: true`)."""

    model_config = ConfigDict(extra="forbid")

    forecast: str | None = Field(
        None,
        description="A carbon-intensity forecast: a file path or an http(s) URL serving either the Green "
        "Software Foundation Carbon Aware SDK's /emissions/forecasts/current JSON or a WattTime v3 "
        "forecast JSON. None: carbon-aware batches run at once and their carbon report says so.",
    )
    power_watts: float = Field(
        65.0,
        gt=0,
        le=100_000,
        description="Power drawn while a batch runs, per busy CPU core or GPU, in watts: energy is the "
        "batch's measured CPU/GPU time times this (a laptop core ~15 W, a server socket ~150-250 W, an "
        "H100 ~700 W).",
    )
    default_lines_per_s: float = Field(
        5.0,
        gt=0,
        description="Throughput assumed to estimate a batch's run time before any batch on its model has "
        "finished; afterwards the last measured figure is used.",
    )


class BatchConfig(BaseModel):
    """The OpenAI Files and Batches API and `inferline batch run`."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path | None = Field(
        None, description="Where uploaded files and batch outputs are kept; default $INFERLINE_HOME/files."
    )
    max_file_bytes: int = Field(
        512 << 20, ge=1024, description="Largest file POST /v1/files accepts (413 above it)."
    )
    max_in_flight_lines: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Lines of one batch handed to the models at once. None: twice the most rows the "
        "batch's deployments compute in one step (an LLM's engine.max_num_seqs, an embedding or ONNX "
        "deployment's max_batch_size), so the next full step is always queued while one runs, and few "
        "enough that interactive requests find the queue short; capped at max_queued_requests.",
    )
    carbon: CarbonConfig = Field(default_factory=CarbonConfig)
