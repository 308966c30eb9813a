"""The shape of a Llama-family model, whatever file it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    """Architecture hyper-parameters in Hugging Face's vocabulary (config.json field meanings)."""

    architecture: str
    """"llama", "mistral", "qwen2", ... (all run on the one Llama-family implementation)."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    """Qwen2 adds a bias to the q, k and v projections."""
    rope_scaling: dict[str, Any] | None = None
    """As in config.json: {"rope_type": "llama3" | "linear" | "dynamic" | "yarn", "factor": ..., ...}."""
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    name: str = ""
    """Human-readable model name from the file's metadata."""

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token per element byte (multiply by the dtype's size)."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim
