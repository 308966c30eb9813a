"""`inferline serve --config FILE`: the YAML file is exactly ServerConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from inferline.config.batch import BatchConfig
from inferline.config.deployments import DeploymentConfig, default_deployments
from inferline.config.quality import QualityConfig
from inferline.config.references import ConfigReferenceError, check_references
from inferline.config.retrieval import VectorStoresConfig
from inferline.config.routing import RouteConfig
from inferline.config.streams import StreamConfig
from inferline.config.telemetry import TelemetryConfig
from inferline.config.tenants import AdmissionConfig, OrganisationConfig, TeamConfig, TenantConfig

OnLoadFailure = Literal["exit", "serve_rest"]


class RegistryServingConfig(BaseModel):
    """Which signed registry bundles the server trusts, for deployments with `source: registry:NAME:REF`."""

    model_config = ConfigDict(extra="forbid")

    trusted_public_keys: list[Path] = Field(
        default_factory=list,
        description="EC P-256 public keys (.pub.pem); a bundle loads only if one of them verifies it.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the registry's catalog; default: telemetry.database_url, else the "
        "SQLite file inferline.db in $INFERLINE_HOME.",
    )


class ResponsesConfig(BaseModel):
    """The Responses API's stored responses (`store: true`), kept in the usage database
    (telemetry.database_url) so `previous_response_id` can continue a conversation. The limits are applied
    on every write and when the server starts; a response past them is gone (a 404)."""

    model_config = ConfigDict(extra="forbid")

    max_age_s: float | None = Field(
        30 * 86400,
        gt=0,
        description="Seconds a stored response is kept (default 30 days, as OpenAI keeps them); none: "
        "no age limit.",
    )
    max_per_tenant: int | None = Field(
        10_000,
        ge=1,
        description="Most stored responses per tenant; beyond it the oldest are deleted. Each keeps its "
        "whole conversation, so a chain of N turns holds its history N times; none: no count limit.",
    )


class ServerConfig(BaseModel):
    """`inferline serve --config FILE`: the YAML file is exactly this schema. Validation also checks the
    names one section uses from another (routes -> deployments, tenants -> teams -> organisations)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0 picks a free one).")
    api_keys: list[str] = Field(default_factory=list, description="Keys of the single 'default' tenant.")
    admin_api_keys: list[str] = Field(
        default_factory=list, description="Keys (or 'sha256:<hex>') allowed to use /admin; none disables it."
    )
    tenants: list[TenantConfig] = Field(default_factory=list)
    teams: list[TeamConfig] = Field(default_factory=list)
    organisations: list[OrganisationConfig] = Field(default_factory=list)
    deployments: list[DeploymentConfig] = Field(default_factory=default_deployments)
    routes: list[RouteConfig] = Field(
        default_factory=list,
        description="Public names with policies; every deployment name and alias is also a fixed route.",
    )
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    redis_url: str | None = Field(
        None, description="redis://host:port/db: quotas and budgets shared by every replica using it."
    )
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    registry: RegistryServingConfig = Field(default_factory=RegistryServingConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    streams: list[StreamConfig] = Field(
        default_factory=list,
        description="Stream workers `inferline serve` runs beside the HTTP APIs (`inferline stream run` "
        "runs only them): messages from Redis Streams or NATS JetStream, scored, results to a sink.",
    )
    quality: QualityConfig = Field(default_factory=QualityConfig)
    vector_stores: VectorStoresConfig = Field(default_factory=VectorStoresConfig)
    max_body_bytes: int = Field(
        4 << 20, ge=1024, description="Larger request bodies get 413 (file uploads: batch.max_file_bytes)."
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, le=3600, description="On SIGTERM, how long in-flight work may finish."
    )
    on_load_failure: OnLoadFailure = Field(
        "exit",
        description="When a deployment fails to load at start: 'exit' stops the server with an error that "
        "names the deployment, its cause and the fix (a half-working server is not mistaken for a "
        "working one); 'serve_rest' serves the deployments that loaded, and /ready lists the failed "
        "ones with their causes.",
    )

    @model_validator(mode="after")
    def _shared_caches_have_redis(self) -> ServerConfig:
        for route in self.routes:
            if route.cache is not None and route.cache.store == "redis" and self.redis_url is None:
                raise ValueError(
                    f"route {route.name!r} has cache.store 'redis' but redis_url is not set: set it"
                )
        return self

    @model_validator(mode="after")
    def _references(self) -> ServerConfig:
        try:
            check_references(
                self.deployments, self.routes, self.tenants, self.teams, self.organisations, self.streams
            )
        except ConfigReferenceError as error:
            # A ValidationError, not a ValueError: it keeps the field's path for file:line messages.
            detail = InitErrorDetails(
                type=PydanticCustomError("reference", "{message}", {"message": error.message}),
                loc=error.loc,
                input=None,
            )
            raise ValidationError.from_exception_data(type(self).__name__, [detail]) from None
        return self
