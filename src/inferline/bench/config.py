"""The settings of `inferline bench serve` and `inferline bench offline`: typed, bounded, documented."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inferline.bench.metrics import SLO

PositiveInt = Annotated[int, Field(ge=1, le=1_000_000)]
PositiveRate = Annotated[float, Field(gt=0)]


class LoadPoint(BaseModel):
    """One point of a sweep: a closed loop at `concurrency` or an open loop at `request_rate`."""

    model_config = ConfigDict(frozen=True)

    mode: Literal["closed", "open"]
    concurrency: int | None = None
    """Closed loop: requests in flight. Open loop: the --max-concurrency cap, if any."""
    request_rate: float | None = None
    """Open loop: requests per second (inf sends all at once)."""

    @property
    def label(self) -> str:
        if self.mode == "closed":
            return f"concurrency {self.concurrency}"
        cap = f", max {self.concurrency} in flight" if self.concurrency else ""
        return f"rate {self.request_rate:g}/s{cap}" if self.request_rate != math.inf else f"rate inf{cap}"


class ServeBenchConfig(BaseModel):
    """`inferline bench serve`: which server, what workload, which load points."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field("http://127.0.0.1:8000", description="Server root (with or without /v1).")
    model: str = Field(..., min_length=1, description="The `model` field sent with every request.")
    endpoint: Literal["completions", "chat"] = Field("completions", description="Which OpenAI API.")
    api_key: str | None = Field(None, description="Bearer key, when the server wants one.")
    label: str | None = Field(None, description="Name of this run in plots; default 'model @ host:port'.")
    dataset: Path | None = Field(None, description="JSONL file of prompts instead of synthetic ones.")
    input_len: int = Field(128, ge=1, le=1 << 20, description="Synthetic prompt length in tokens.")
    output_len: int = Field(128, ge=1, le=1 << 20, description="Output tokens asked for per request.")
    len_jitter: float = Field(0.0, ge=0.0, lt=1.0, description="Lengths uniform in len*(1±jitter).")
    num_prompts: int | None = Field(
        None, ge=1, le=1_000_000, description="Requests per point; default 100, or the dataset's lines."
    )
    ignore_eos: bool = Field(False, description="Send ignore_eos so output lengths are exact.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Sampling temperature sent.")
    seed: int = Field(0, ge=0, description="Seed of prompts, lengths and arrival times.")
    concurrency: list[PositiveInt] = Field(default_factory=list, description="Closed-loop points.")
    request_rate: list[PositiveRate] = Field(default_factory=list, description="Open-loop points (req/s).")
    burstiness: float = Field(1.0, gt=0.0, le=1000.0, description="Gamma shape of gaps; 1 is Poisson.")
    max_concurrency: int | None = Field(None, ge=1, description="Open loop: cap on requests in flight.")
    warmup: int = Field(2, ge=0, le=10_000, description="Requests sent first and not counted.")
    slo: SLO | None = Field(None, description="Targets that define goodput.")
    timeout_s: float = Field(300.0, gt=0.0, description="Longest wait for the server's next byte.")
    json_path: Path | None = Field(None, description="Write every figure to this JSON file.")
    plot_path: Path | None = Field(None, description="Write the latency/throughput chart to this PNG.")
    progress: bool = Field(True, description="Show a progress bar while it runs.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://; got {value!r}")
        return value

    @model_validator(mode="after")
    def _some_point(self) -> ServeBenchConfig:
        if not self.concurrency and not self.request_rate:
            self.concurrency = [1]
        return self

    @property
    def points(self) -> list[LoadPoint]:
        closed = [LoadPoint(mode="closed", concurrency=c) for c in self.concurrency]
        opened = [
            LoadPoint(mode="open", concurrency=self.max_concurrency, request_rate=r)
            for r in self.request_rate
        ]
        return closed + opened


class OfflineBenchConfig(BaseModel):
    """`inferline bench offline`: the engine through `inferline.LLM`, no HTTP."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", min_length=1, description="Model name, GGUF file or folder.")
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 8, 32], description="Prompts per run.")
    input_len: int = Field(128, ge=1, le=1 << 20, description="Prompt length in tokens (random ids).")
    output_len: int = Field(128, ge=1, le=1 << 20, description="Tokens generated per prompt (EOS ignored).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Compute dtype.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    repeats: int = Field(3, ge=1, le=100, description="Timed runs per batch size; the median is reported.")
    seed: int = Field(0, ge=0, description="Seed of the random prompt ids.")
    json_path: Path | None = Field(None, description="Write every figure to this JSON file.")
