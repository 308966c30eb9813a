"""How one LLM engine loads its model and shares memory and compute, and its speculative decoding."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SpeculativeConfig(BaseModel):
    """Speculative decoding: cheap guesses of the next tokens, verified by the model in one forward pass."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["ngram", "draft"] = Field(
        ...,
        description="'ngram': copy what followed the last tokens' earlier occurrence in the prompt or "
        "output (free, wins when the output repeats its input); 'draft': a small draft model guesses.",
    )
    num_speculative_tokens: int = Field(4, ge=1, le=16, description="Draft tokens verified per step.")
    prompt_lookup_min: int = Field(
        2, ge=1, le=16, description="ngram: shortest run of last tokens looked up in the sequence."
    )
    prompt_lookup_max: int = Field(
        4, ge=1, le=16, description="ngram: longest run of last tokens looked up (tried first)."
    )
    draft_model: str | None = Field(
        None,
        description="draft: the draft model (same kinds of source as the engine's model), sharing the "
        "target's tokenizer and vocabulary.",
    )
    draft_quantization: Literal["auto", "none", "int8", "int4"] = Field(
        "auto", description="draft: weight quantization of the draft model, as EngineConfig.quantization."
    )

    @model_validator(mode="after")
    def _method_fields(self) -> SpeculativeConfig:
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(
                f"prompt_lookup_min ({self.prompt_lookup_min}) is above prompt_lookup_max "
                f"({self.prompt_lookup_max}): lower the first or raise the second"
            )
        if self.method == "draft" and self.draft_model is None:
            raise ValueError("method 'draft' needs draft_model (e.g. 'default'), or use method 'ngram'")
        if self.method == "ngram" and self.draft_model is not None:
            raise ValueError("draft_model is only used by method 'draft': drop it or set method: draft")
        return self


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
    quantization: Literal["auto", "none", "int8", "int4"] = Field(
        "auto",
        description=(
            "Weight quantization of the linear layers: 'int8' (groups of 32, about half of bf16's memory "
            "traffic) or 'int4' (groups of 32, about a quarter); activations stay bfloat16. CPU only. "
            "'auto': a GGUF on the CPU keeps its own format where a kernel runs it (Q4_0/Q4_1 as int4, "
            "Q8_0 as int8) and takes the nearest one otherwise; Hugging Face folders and CUDA stay float; "
            "the start-up log and GET /v1/models/{id} say what was chosen and why."
        ),
    )
    single_stream_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description=(
            "CPU: intra-op threads for steps that decode a single stream; None: all of torch's threads, "
            "as for every other step. Fewer leave cores to other work on a shared machine. Served on 2 "
            "cores, the default int4 model decodes a lone stream in 5.5 ms a token on 2 threads against "
            "9.1 ms on 1."
        ),
    )
    cpu_decode_step: bool = Field(
        True,
        description=(
            "CPU: run decode steps of up to 16 sequences through inferline's C++ decode step (built once "
            "per machine with its C++ compiler; PyTorch ops are used where it cannot be built). It was "
            "1.3-2.2x faster per token than PyTorch ops on 2 cores; false forces the PyTorch ops."
        ),
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
    max_batch_seqs_while_busy: int | None = Field(
        4,
        ge=1,
        description=(
            "Most batch-class sequences computed in one step while interactive or conversational "
            "requests are in the engine (or were within foreground_grace_s); null: no cap. A step is as "
            "slow as its widest batch (~130 ms at 32 decoding rows on 2 cores, ~20 ms at 4) and a new "
            "prompt's first token waits for the step in flight, so batch jobs use what is left."
        ),
    )
    foreground_grace_s: float = Field(
        1.0,
        ge=0.0,
        le=60.0,
        description="How long max_batch_seqs_while_busy holds after the last foreground request.",
    )
    enable_prefix_caching: bool = Field(True, description="Share KV blocks of identical prompt prefixes.")
    max_cached_grammars: int = Field(
        128,
        ge=1,
        le=1 << 16,
        description=(
            "Compiled structured-output constraints (JSON schemas, regexes, choices, grammars) kept for "
            "reuse, least recently used dropped first; compiling one took 1-6 ms on 2 cores."
        ),
    )
    tenant_input_token_weight: float = Field(
        1.0, ge=0.0, description="Fair-queue cost of one prompt token served to a tenant."
    )
    tenant_output_token_weight: float = Field(
        2.0, ge=0.0, description="Fair-queue cost of one generated token served to a tenant."
    )
    seed: int = Field(0, description="Seed of the sampler for requests that do not bring their own.")
    speculative: SpeculativeConfig | None = Field(
        None, description="Speculative decoding (n-gram or draft model); None decodes one token per step."
    )
