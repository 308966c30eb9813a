"""Embedding tables for models that are built on the meta device and then loaded: float, or kept in GGUF's
Q8_0 blocks and widened a looked-up row at a time."""

from __future__ import annotations

import torch
from torch import nn

from inferline.layers.quant_linear import GROUP_SIZE


def unloaded_embedding(num_embeddings: int, embedding_dim: int) -> nn.Embedding:
    """An nn.Embedding without the random init its weights would get only to be replaced: on the meta
    device that init (normal_) runs through a kernel that imports torch._dynamo, 1.4 s of every start."""
    return nn.Embedding(num_embeddings, embedding_dim, _weight=torch.empty(num_embeddings, embedding_dim))


class Int8Embedding(nn.Module):
    """An embedding table as int8 [vocab, hidden] with a float16 scale per group of 32 (GGUF's Q8_0).

    A row is widened only when looked up, to the same values as the widened table (the product in
    float32, then `dtype`); a tied int8 vocabulary projection shares the storage."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> None:
        """codes: int8 [vocab, hidden]; scales: float16 [vocab, hidden / 32]; `dtype`: of the rows."""
        super().__init__()
        self.weight = nn.Parameter(codes, requires_grad=False)
        self.scales = nn.Parameter(scales, requires_grad=False)
        self.dtype = dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: [...] -> [..., hidden]
        codes = self.weight[input_ids]
        groups = (
            codes.view(*codes.shape[:-1], -1, GROUP_SIZE).float() * self.scales[input_ids].float()[..., None]
        )
        return groups.flatten(-2).to(self.dtype)
