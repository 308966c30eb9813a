"""Sentence embeddings: texts -> tokenize -> BERT -> pool -> normalise, one batch per call.

The runner is synchronous and holds no queue; `DynamicBatcher` decides which texts run together and
calls `embed` on its worker thread. Texts are padded to the longest in the batch (not to
max_seq_length), so a batch of short sentences costs what short sentences cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from inferline.errors import ModelLoadError
from inferline.models.sentence_loader import PoolingMode, SentenceModel, load_sentence_model
from inferline.models.store import resolve


@dataclass
class EmbeddingOutput:
    vectors: np.ndarray
    """[n, embedding_dim] float32, one row per text, in input order."""
    num_tokens: list[int]
    """Tokens of each text after truncation, [CLS] and [SEP] included."""


class EmbeddingRunner:
    def __init__(self, model: SentenceModel) -> None:
        self.model = model

    @classmethod
    def from_source(cls, name_or_path: str) -> EmbeddingRunner:
        """Load a store name ("all-minilm-l6-v2"), or a sentence-transformers or BERT folder."""
        source = resolve(name_or_path)
        if source.kind == "gguf":
            raise ModelLoadError(
                f"{name_or_path!r} is a GGUF (chat) model; an embedding deployment needs a "
                "sentence-transformers folder, e.g. source: all-minilm-l6-v2"
            )
        return cls(load_sentence_model(source.path))

    @property
    def embedding_dim(self) -> int:
        return self.model.embedding_dim

    @property
    def max_seq_length(self) -> int:
        return self.model.max_seq_length

    def embed(self, texts: list[str]) -> EmbeddingOutput:
        """Embed `texts` in one forward pass (texts longer than max_seq_length are truncated)."""
        if not texts:
            return EmbeddingOutput(np.zeros((0, self.embedding_dim), dtype=np.float32), [])
        encodings = self.model.tokenizer.encode_batch(texts)
        input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)  # [B, S]
        token_type_ids = torch.tensor([e.type_ids for e in encodings], dtype=torch.long)  # [B, S]
        attention_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)  # [B, S]
        with torch.inference_mode():
            hidden = self.model.model(input_ids, attention_mask, token_type_ids)  # [B, S, hidden]
            vectors = pool(hidden, attention_mask, self.model.pooling)  # [B, hidden]
            if self.model.normalize:
                vectors = F.normalize(vectors, p=2.0, dim=-1)
        return EmbeddingOutput(vectors.float().numpy(), attention_mask.sum(dim=1).tolist())


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: PoolingMode) -> torch.Tensor:
    """One vector per sequence. hidden: [B, S, H], attention_mask: [B, S] (1 = token) -> [B, H]."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
    # Clamped like sentence-transformers, so an all-padding row gives zeros instead of NaN.
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
