"""What every weight loader returns: the model's shape, its tensors and its tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inferline.models.block_weights import BlockWeight
from inferline.models.config import ModelConfig
from inferline.models.tokenizer import Tokenizer


@dataclass
class LoadedWeights:
    """A checkpoint in one vocabulary, whatever file format it came from."""

    config: ModelConfig
    """Architecture hyper-parameters (Hugging Face config.json meanings)."""
    state_dict: dict[str, torch.Tensor | BlockWeight]
    """Hugging Face tensor names (`model.layers.0.self_attn.q_proj.weight`, ...), float32 on the CPU
    or, for linear layers a GGUF stores in the engine's quantized formats, BlockWeights; no
    `lm_head.weight` when the embeddings are tied."""
    tokenizer: Tokenizer
    """The model's tokenizer and chat template."""
