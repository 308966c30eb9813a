"""The configuration schema: every field typed, bounded and documented."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EngineConfig(BaseModel):
    """How one LLM engine loads its model and shares its memory and compute between requests."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "default", description="Model name in the store, a GGUF file, or a Hugging Face folder."
    )
    device: str = Field(
        "auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype; 'auto' is float32 on CPU and bfloat16 on CUDA."
    )
    block_size: int = Field(16, ge=1, le=256, description="Tokens per KV-cache block.")
    max_num_seqs: int = Field(32, ge=1, le=4096, description="Most sequences decoding in one step.")
    max_num_batched_tokens: int = Field(
        512,
        ge=16,
        le=1 << 20,
        description="Token budget of one step; longer prompts are prefilled in chunks.",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Longest prompt plus completion; defaults to the model's context length."
    )
    kv_cache_bytes: int | None = Field(
        None, ge=1 << 16, description="KV-cache pool size in bytes; overrides kv_cache_fraction when set."
    )
    kv_cache_fraction: float = Field(
        0.1,
        gt=0.0,
        le=0.95,
        description="KV-cache pool as a fraction of the device memory free after the weights are loaded.",
    )
    enable_prefix_caching: bool = Field(True, description="Share KV blocks of identical prompt prefixes.")
    tenant_input_token_weight: float = Field(
        1.0, ge=0.0, description="Fair-queue cost of one prompt token served to a tenant."
    )
    tenant_output_token_weight: float = Field(
        2.0, ge=0.0, description="Fair-queue cost of one generated token served to a tenant."
    )
    seed: int = Field(0, description="Seed of the sampler for requests that do not bring their own.")


DeploymentKind = Literal["llm", "embedding", "onnx"]


class DeploymentConfig(BaseModel):
    """One model served under a name: an LLM on the engine, an embedding model, or an ONNX model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=128, description="The name clients use in `model`.")
    kind: DeploymentKind = Field(..., description="'llm', 'embedding' or 'onnx'.")
    source: str = Field(
        ...,
        min_length=1,
        description="Where the weights are: a store name, a GGUF file, a model folder or an .onnx file.",
    )
    aliases: list[str] = Field(default_factory=list, description="Other names that reach this deployment.")
    version: str = Field("1", min_length=1, description="Model version reported in headers and metadata.")
    engine: EngineConfig | None = Field(None, description="LLM engine settings (kind 'llm' only).")
    max_batch_size: int = Field(
        32, ge=1, le=4096, description="Embedding/ONNX: most rows (texts, tensor rows) in one run."
    )
    max_queue_delay_us: int = Field(
        2000,
        ge=0,
        le=10_000_000,
        description="Embedding/ONNX: longest wait for a batch to fill, in microseconds.",
    )
    max_queued_requests: int = Field(
        256, ge=1, le=1_000_000, description="Requests waiting beyond this are refused at once with 429."
    )


class TenantConfig(BaseModel):
    """A tenant and the API keys that authenticate as it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=128)
    api_keys: list[str] = Field(
        ..., min_length=1, description="Bearer keys, in plain text or as 'sha256:<hex digest>' of the key."
    )
    priority: Literal["interactive", "conversational", "batch"] = Field(
        "conversational",
        description="Scheduling class of this tenant's requests unless a request asks lower.",
    )


def default_deployments() -> list[DeploymentConfig]:
    return [
        DeploymentConfig(name="smollm2-135m-instruct", kind="llm", source="default", aliases=["default"]),
        DeploymentConfig(name="all-minilm-l6-v2", kind="embedding", source="all-minilm-l6-v2"),
    ]


class ServerConfig(BaseModel):
    """`inferline serve --config FILE`: the YAML file is exactly this schema."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0 picks a free one).")
    api_keys: list[str] = Field(default_factory=list, description="Keys of the single 'default' tenant.")
    tenants: list[TenantConfig] = Field(default_factory=list)
    models: list[DeploymentConfig] = Field(default_factory=default_deployments)
    max_body_bytes: int = Field(4 << 20, ge=1024, description="Larger request bodies get 413.")
    drain_timeout_s: float = Field(
        30.0, ge=0, le=3600, description="On SIGTERM, how long in-flight work may finish."
    )
