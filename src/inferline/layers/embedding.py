"""Embedding tables for models that are built on the meta device and then loaded."""

from __future__ import annotations

import torch
from torch import nn


def unloaded_embedding(num_embeddings: int, embedding_dim: int) -> nn.Embedding:
    """An nn.Embedding without the random init its weights would get only to be replaced: on the meta
    device that init (normal_) runs through a kernel that imports torch._dynamo, 1.4 s of every start."""
    return nn.Embedding(num_embeddings, embedding_dim, _weight=torch.empty(num_embeddings, embedding_dim))
