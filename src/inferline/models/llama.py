"""The Llama family (Llama 2/3, SmolLM2, Mistral, Qwen2/2.5) in plain PyTorch.

The batch is flat: T tokens from any number of sequences, each with its own position; attention sorts
out which tokens see which (layers/attention.py). Projections are fused (q|k|v and gate|up) so a layer
runs four matmuls; `models/weights.py` builds the fused weights from a checkpoint's separate ones.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from inferline.layers.attention import AttentionMetadata, paged_attention
from inferline.layers.cpu_decode import CpuDecodeStep, DecoderLayerWeights
from inferline.layers.cpu_kernels import load_cpu_kernels
from inferline.layers.embedding import unloaded_embedding
from inferline.layers.norm import RMSNorm
from inferline.layers.rotary import RopeTable, RotaryEmbedding
from inferline.models.config import ModelConfig


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias
        )
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)
        self.rotary = rotary

    def forward(
        self, rope: RopeTable, x: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        # x: [T, hidden]. Attention runs in the cache's dtype (float32 on the CPU, see ModelRunner).
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x).to(kv_cache.dtype)
        qk = qkv[:, : self.q_size + self.kv_size].view(num_tokens, self.num_heads + self.num_kv_heads, -1)
        q, k = self.rotary.apply(qk, rope).split([self.num_heads, self.num_kv_heads], dim=1)
        v = qkv[:, self.q_size + self.kv_size :].view(num_tokens, self.num_kv_heads, self.head_dim)
        attended = paged_attention(q, k, v, kv_cache, meta)  # [T, H, D]
        return self.o_proj(attended.view(num_tokens, self.q_size).to(x.dtype))


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)  # [T, I] each
        return self.down_proj(F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, rotary)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(
        self, rope: RopeTable, x: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        x = x + self.self_attn(rope, self.input_layernorm(x), kv_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))

    def cpu_decode_weights(self) -> DecoderLayerWeights:
        return DecoderLayerWeights(
            input_norm=self.input_layernorm.weight,
            qkv_proj=self.self_attn.qkv_proj,
            o_proj=self.self_attn.o_proj,
            post_norm=self.post_attention_layernorm.weight,
            gate_up_proj=self.mlp.gate_up_proj,
            down_proj=self.mlp.down_proj,
        )


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.rotary = RotaryEmbedding(
            config.head_dim, config.rope_theta, config.rope_scaling, config.max_position_embeddings
        )
        self.embed_tokens = unloaded_embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [LlamaDecoderLayer(config, self.rotary) for _ in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.cpu_decode: CpuDecodeStep | None = None

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        # input_ids, positions: [T] -> hidden states [T, hidden]
        x = self.embed_tokens(input_ids)
        rope = self.rotary.table(positions, kv_caches[0].dtype)
        if self.cpu_decode is not None and self.cpu_decode.handles(meta):
            return self.norm(self.cpu_decode(x, rope, kv_caches, meta))
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            x = layer(rope, x, kv_cache, meta)
        return self.norm(x)

    def use_cpu_decode_step(self) -> bool:
        """Decode small batches with the C++ step (layers/cpu_decode.py) from now on, if it builds here.

        Call after the weights are final (quantized, on the CPU): the step keeps references to them."""
        if not load_cpu_kernels():
            return False
        layers = [cast(LlamaDecoderLayer, layer).cpu_decode_weights() for layer in self.layers]
        config = self.config
        self.cpu_decode = CpuDecodeStep(
            layers, config.num_attention_heads, config.num_key_value_heads, config.rms_norm_eps
        )
        return True

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [N, hidden] -> logits [N, vocab]; only rows that sample pay for the vocabulary matmul.
        return self.lm_head(hidden)
