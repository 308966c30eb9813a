"""Low-rank adapters on the project's own Llama modules, and the causal forward pass training needs.

Design note: LlamaForCausalLM's forward reads and writes a paged KV cache (it is built for serving), so
training runs the same modules in a plain causal pass: embeddings, each layer's norms, fused q|k|v, rotary
tables, attention with a causal mask, o_proj and the MLP. A LoRA adapter wraps a projection as
W x + (alpha / r) B A x with B starting at zero, so the model starts exactly as the base; `merge` folds
B A into W, and the merged model is an ordinary model again (no adapter code at serving time).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from inferline.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP

TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a) * self.scale
        return self.base


def add_lora(model: LlamaForCausalLM, rank: int, alpha: float) -> list[nn.Parameter]:
    """Wrap every target projection; only the adapters' parameters train. Returns them."""
    model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for layer in model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in TARGETS:
                base = getattr(parent, name, None)
                if isinstance(base, nn.Linear):
                    adapter = LoraLinear(base, rank, alpha)
                    setattr(parent, name, adapter)
                    params += [adapter.lora_a, adapter.lora_b]
    return params


def merge_lora(model: LlamaForCausalLM) -> None:
    for layer in model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in TARGETS:
                adapter = getattr(parent, name, None)
                if isinstance(adapter, LoraLinear):
                    setattr(parent, name, adapter.merged())


def causal_logits(model: LlamaForCausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids [B, S] -> logits [B, S, vocab], each position attending to itself and earlier ones."""
    seq = input_ids.shape[1]
    x = model.embed_tokens(input_ids)  # [B, S, hidden]
    positions = torch.arange(seq, device=input_ids.device)
    rope = model.rotary.table(positions, x.dtype)  # cos, sin: [S, 1, D]
    for layer in model.layers:
        assert isinstance(layer, LlamaDecoderLayer)
        x = x + _attention(layer.self_attn, layer.input_layernorm(x), rope)
        mlp = layer.mlp
        assert isinstance(mlp, LlamaMLP)
        x = x + mlp(layer.post_attention_layernorm(x))
    return model.compute_logits(model.norm(x))


def _attention(
    attn: LlamaAttention, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    batch, seq, _ = x.shape
    qkv = attn.qkv_proj(x)  # [B, S, (H + 2 KV) * D]
    qk = qkv[..., : attn.q_size + attn.kv_size].reshape(batch, seq, attn.num_heads + attn.num_kv_heads, -1)
    q, k = attn.rotary.apply(qk, rope).split([attn.num_heads, attn.num_kv_heads], dim=2)
    v = qkv[..., attn.q_size + attn.kv_size :].reshape(batch, seq, attn.num_kv_heads, attn.head_dim)
    # [B, H, S, D]; key and value heads are shared by groups of query heads (GQA).
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    )
    return attn.o_proj(out.transpose(1, 2).reshape(batch, seq, attn.q_size))
