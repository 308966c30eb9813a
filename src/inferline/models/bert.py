"""BERT encoders (all-MiniLM-L6-v2, BGE, E5 ...) in plain PyTorch.

The batch is padded: B sequences of S tokens, with an attention mask that hides the padding from
every key. Each layer is post-LayerNorm (the residual is added before the norm, as in the original
BERT), and q|k|v are fused into one projection so a layer runs four matmuls;
`models/sentence_loader.py` builds the fused weights from a checkpoint's separate ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from inferline.layers.embedding import unloaded_embedding


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    """Longest input in tokens, [CLS] and [SEP] included."""
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    gelu_approximate: str = "none"
    """"none" for BERT's exact (erf) GELU, "tanh" for the gelu_new / gelu_pytorch_tanh variants."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = unloaded_embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = unloaded_embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = unloaded_embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        # input_ids, token_type_ids: [B, S] -> [B, S, hidden]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # [S], broadcast over B
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.norm(x + self.token_type_embeddings(token_type_ids))


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # x: [B, S, hidden]; mask: [B, 1, 1, S], True where the key is a real token (None: no padding)
        batch_size, seq_len, hidden_size = x.shape
        qkv = self.qkv_proj(x).view(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, S, D] each
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, S, D]
        return self.o_proj(attended.transpose(1, 2).reshape(batch_size, seq_len, hidden_size))


class BertMLP(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.gelu_approximate = config.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, S, hidden] -> [B, S, intermediate] -> [B, S, hidden]
        return self.down_proj(F.gelu(self.up_proj(x), approximate=self.gelu_approximate))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = BertMLP(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # Post-LN: normalise after each residual add (pre-LN models like Llama normalise before).
        x = self.attention_norm(x + self.attention(x, mask))
        return self.mlp_norm(x + self.mlp(x))


class BertModel(nn.Module):
    """Token ids in, contextual token embeddings out (no pooler: sentence models pool outside)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # input_ids, attention_mask (1 = token, 0 = padding), token_type_ids: [B, S] -> [B, S, hidden]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # A batch without padding skips the mask, so SDPA may take its unmasked fast path.
        mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x
