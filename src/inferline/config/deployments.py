"""Deployments: the model variants the router sends requests to, one schema per `kind`.

`DeploymentConfig` is a union discriminated by `kind`, so each kind takes only its own fields and a
field of another kind (an `engine` on a remote deployment) is an error that names the field and the kind
it belongs to, rather than a setting silently ignored."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from inferline.config.cluster import ReplicaResourcesConfig, ReplicasConfig
from inferline.config.engine import EngineConfig

DeploymentKind = Literal["llm", "embedding", "onnx", "remote"]


class CircuitBreakerConfig(BaseModel):
    """When to stop sending requests to a failing deployment, and when to try it again."""

    model_config = ConfigDict(extra="forbid")

    failure_threshold: int = Field(5, ge=1, le=10_000, description="Failures within window_s that open it.")
    window_s: float = Field(30.0, gt=0, le=86_400, description="How far back failures are counted.")
    cooldown_s: float = Field(
        10.0, gt=0, le=86_400, description="How long it stays open before one probe request is let through."
    )


class DeploymentBase(BaseModel):
    """What every kind of deployment has: its names and version, its timeout, and the price, quality and
    latency the router chooses by."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=128, description="The deployment's unique name.")
    kind: DeploymentKind = Field(..., description="'llm', 'embedding', 'onnx' or 'remote'.")
    aliases: list[str] = Field(default_factory=list, description="Other names that reach this deployment.")
    version: str = Field("1", min_length=1, description="Model version reported in headers and metadata.")
    timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Longest wait for the first token (or whole answer of a non-LLM) before falling back.",
    )
    price_input_per_1m: float = Field(0.0, ge=0, description="USD per million prompt tokens.")
    price_output_per_1m: float = Field(0.0, ge=0, description="USD per million generated tokens.")
    quality: float = Field(0.0, ge=0, description="Relative answer quality; higher is better (best_quality).")
    max_concurrency: int | None = Field(
        None, ge=1, le=1_000_000, description="Most requests in flight; more wait in the router's queue."
    )
    latency_objective_ms: float | None = Field(
        None,
        gt=0,
        description="Target time to first token (whole answer for non-LLMs); `cheapest` skips a deployment "
        "whose live estimate is above it.",
    )
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_input_per_1m + completion_tokens * self.price_output_per_1m) / 1e6


class LocalDeploymentBase(DeploymentBase):
    """A model this server loads and runs itself, with a queue of its own."""

    source: str = Field(
        ...,
        min_length=1,
        description="Where the weights are: a store name, a GGUF file or a model folder (llm, embedding), "
        "an .onnx file (onnx), or a signed registry version 'registry:NAME:VERSION_OR_ALIAS' (verified "
        "against registry.trusted_public_keys).",
    )
    max_queued_requests: int = Field(
        256, ge=1, le=1_000_000, description="Requests waiting beyond this are refused at once with 429."
    )
    replicas: ReplicasConfig = Field(
        default_factory=ReplicasConfig,
        description="With `inferline serve --ray`: how many Ray Serve replicas, and the load they scale on.",
    )
    resources: ReplicaResourcesConfig = Field(
        default_factory=ReplicaResourcesConfig,
        description="With `inferline serve --ray`: what Ray reserves for each replica.",
    )


class LLMDeploymentConfig(LocalDeploymentBase):
    """A language model run by inferline's own engine (continuous batching over a paged KV cache)."""

    kind: Literal["llm"] = Field("llm", description="A local LLM.")
    engine: EngineConfig = Field(
        default_factory=EngineConfig,
        description="Engine settings; the engine loads the model `source` names.",
    )

    @field_validator("engine")
    @classmethod
    def _model_is_the_source(cls, engine: EngineConfig) -> EngineConfig:
        if "model" in engine.model_fields_set:
            raise ValueError(
                "engine.model is not read in a deployment: the deployment's `source` names the model; "
                "move the value to `source` and remove engine.model"
            )
        return engine


class BatchedDeploymentBase(LocalDeploymentBase):
    """A non-generative model whose requests are gathered into batches (dynamic batching)."""

    max_batch_size: int = Field(32, ge=1, le=4096, description="Most rows (texts, tensor rows) in one run.")
    max_queue_delay_us: int = Field(
        2000,
        ge=0,
        le=10_000_000,
        description="Longest wait for a batch to fill, in microseconds.",
    )


class EmbeddingDeploymentConfig(BatchedDeploymentBase):
    """A sentence-embedding model (all-MiniLM-L6-v2 by default)."""

    kind: Literal["embedding"] = Field("embedding", description="A local embedding model.")


class OnnxDeploymentConfig(BatchedDeploymentBase):
    """A classic model exported to ONNX, run by ONNX Runtime."""

    kind: Literal["onnx"] = Field("onnx", description="A local ONNX model.")


class RemoteDeploymentConfig(DeploymentBase):
    """An OpenAI-compatible upstream that this server forwards requests to."""

    kind: Literal["remote"] = Field("remote", description="A remote OpenAI-compatible upstream.")
    base_url: str = Field(
        ..., min_length=1, description="The upstream's OpenAI API root, e.g. 'http://10.0.0.5:8000/v1'."
    )
    api_key_env: str | None = Field(
        None,
        description="Environment variable holding the upstream's API key (keeps it out of files).",
    )
    upstream_model: str | None = Field(
        None, description="The model name to ask the upstream for; defaults to `name`."
    )
    max_output_tokens: int = Field(
        4096,
        ge=1,
        description="The most tokens a request without max_tokens may produce (for budget holds).",
    )


_KINDS: dict[str, type[DeploymentBase]] = {
    "llm": LLMDeploymentConfig,
    "embedding": EmbeddingDeploymentConfig,
    "onnx": OnnxDeploymentConfig,
    "remote": RemoteDeploymentConfig,
}


def _explain_errors(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """pydantic files a kind's errors under its tag (`deployments.1.remote.engine`): take the tag out of
    the location, which then is a path in the user's file, and say what the kind takes."""
    try:
        return handler(value)
    except ValidationError as error:
        explained = [_explained(e) for e in error.errors(include_url=False)]
        raise ValidationError.from_exception_data(error.title, explained) from None


def _explained(error: ErrorDetails) -> InitErrorDetails:
    loc, message = error["loc"], error["msg"]
    names = ", ".join(_KINDS)
    if error["type"] == "union_tag_invalid":
        loc, message = ("kind",), f"kind {error['ctx']['tag']!r} is not a deployment kind: use one of {names}"
    elif error["type"] == "union_tag_not_found":
        loc, message = ("kind",), f"a deployment needs kind: one of {names}"
    elif loc and loc[0] in _KINDS:
        kind, loc = str(loc[0]), loc[1:]
        if error["type"] == "extra_forbidden" and len(loc) == 1:
            message = _misplaced(kind, str(loc[0]))
        elif error["type"] == "missing" and len(loc) == 1:
            field = _KINDS[kind].model_fields[str(loc[0])]
            message = f"a deployment of kind {kind} needs {loc[0]}: {field.description}"
    # The message goes in as a context value: a template would read its braces as placeholders.
    return InitErrorDetails(
        type=PydanticCustomError(error["type"], "{message}", {"message": message}),
        loc=loc,
        input=error["input"],
    )


def _misplaced(kind: str, field: str) -> str:
    takes = ", ".join(_KINDS[kind].model_fields)
    owners = [k for k, model in _KINDS.items() if field in model.model_fields]
    if owners:
        return (
            f"field {field!r} is not allowed in a deployment of kind {kind}; it is a setting of "
            f"{'kind' if len(owners) == 1 else 'kinds'} {' and '.join(owners)}: remove it, or change the "
            f"kind (kind {kind} takes: {takes})"
        )
    return f"field {field!r} is not allowed in a deployment of kind {kind}, which takes: {takes}"


DeploymentConfig = Annotated[
    LLMDeploymentConfig | EmbeddingDeploymentConfig | OnnxDeploymentConfig | RemoteDeploymentConfig,
    Field(discriminator="kind"),
    WrapValidator(_explain_errors),
]
"""One deployment, of the schema its `kind` selects."""

LocalDeploymentConfig = LLMDeploymentConfig | EmbeddingDeploymentConfig | OnnxDeploymentConfig
"""A deployment whose model this server loads (narrow to it with isinstance(d, LocalDeploymentBase))."""


def default_deployments() -> list[DeploymentConfig]:
    return [
        LLMDeploymentConfig(name="smollm2-135m-instruct", source="default", aliases=["default"]),
        EmbeddingDeploymentConfig(name="all-minilm-l6-v2", source="all-minilm-l6-v2"),
    ]
