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
