"""Metering, tracing and logs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TracingConfig(BaseModel):
    """OpenTelemetry tracing: spans for each request, exported over OTLP when an endpoint is set."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Record spans (W3C traceparent from clients is always honoured).")
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces; none exports nothing.",
    )
    sample_ratio: float = Field(1.0, ge=0, le=1, description="Share of new traces recorded.")
    service_name: str = Field("inferline", min_length=1, description="The service.name resource attribute.")


class TelemetryConfig(BaseModel):
    """Metering, tracing and logs."""

    model_config = ConfigDict(extra="forbid")

    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the usage database (sqlite:///..., postgresql+psycopg://...); "
        "default: a SQLite file inferline.db in $INFERLINE_HOME (~/.cache/inferline).",
    )
    metering: bool = Field(True, description="Write one usage record per request to the database.")
    metrics: bool = Field(
        True, description="Count requests, tokens and cost per tenant and route for /metrics."
    )
    flush_interval_s: float = Field(
        1.0, gt=0, le=60, description="Longest a usage record waits to be written."
    )
    buffer_max_records: int = Field(
        100_000, ge=100, description="Records kept in memory while the database cannot be written."
    )
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    log_format: Literal["json", "text"] = Field("json", description="Server log lines: JSON objects or text.")
    access_log: bool = Field(
        True,
        description="One log line per finished HTTP request: method, path, status, latency, request id, "
        "tenant, route, deployment, tokens.",
    )
    capture_text: bool = Field(
        False, description="Log prompt and completion text with each request (off: never logged)."
    )
    record_mean_logprob: bool = Field(
        False,
        description="Compute every answer's token log-probabilities, asked for or not, and record their mean "
        "in its usage record (mean_logprob), as edge devices do to flag low-confidence answers; responses "
        "are unchanged. Costs a log-softmax per sampled token.",
    )
