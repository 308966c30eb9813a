"""How much a quantized model's answers drift from the float model's: token agreement and perplexity.

Agreement: greedy continuations of the same prompts, compared position by position up to the first
divergence and in total (after a divergence the two continue from different text, so the prefix
length is the honest figure). Perplexity: exp of the mean negative log-likelihood of a fixed text,
scored by the engine's own forward pass over the paged cache, one prompt chunk per window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from inferline.engine.model_loader import LoadedModel
from inferline.engine.runner import allocate_kv_caches, kv_cache_dtype
from inferline.layers.attention import AttentionMetadata, PrefillChunk


@dataclass
class Agreement:
    matching_prefix: float
    """Mean fraction of each continuation that equals the reference's before the first difference."""
    matching_positions: float
    """Fraction of all positions where the two continuations hold the same token."""


def token_agreement(reference: list[list[int]], candidate: list[list[int]]) -> Agreement:
    prefixes, same, total = [], 0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        prefix = next((i for i, (a, b) in enumerate(zip(ref, cand, strict=False)) if a != b), len(ref))
        prefixes.append(prefix / len(ref))
        same += sum(a == b for a, b in zip(ref, cand, strict=False))
        total += len(ref)
    return Agreement(sum(prefixes) / len(prefixes), same / total)


@torch.inference_mode()
def perplexity(
    loaded: LoadedModel, token_ids: list[int], window: int = 512, chunk: int | None = None
) -> float:
    """Perplexity of `token_ids` under the model, scored in independent windows of `window` tokens.

    `chunk` feeds each window a few tokens at a time, each chunk attending to the ones before it: with
    chunks of at most 16 tokens every matmul takes the path decode steps take (on the CPU, the
    quantized kernels with their int8 activations), not the prefill GEMM.
    """
    model, config, device = loaded.model, loaded.config, loaded.device
    block_size = 16
    num_blocks = -(-window // block_size)
    layer_shape = (2, num_blocks, block_size, config.num_key_value_heads, config.head_dim)
    kv_dtype = kv_cache_dtype(loaded.dtype, device)
    kv_caches = allocate_kv_caches(config.num_hidden_layers, layer_shape, kv_dtype, device)
    block_table = torch.arange(num_blocks, device=device)
    total_nll, scored = 0.0, 0
    for start in range(0, len(token_ids) - 1, window):
        ids = torch.tensor(token_ids[start : start + window], device=device)
        n = len(ids)
        if n < 2:
            break
        step = chunk or n
        for offset in range(0, n - 1, step):
            count = min(step, n - 1 - offset)  # the window's last token is only a target
            positions = torch.arange(offset, offset + count, device=device)
            meta = AttentionMetadata(
                slot_mapping=positions, decode=None, prefills=[PrefillChunk(0, count, offset, block_table)]
            )
            hidden = model(ids[offset : offset + count], positions, kv_caches, meta)
            logprobs = torch.log_softmax(model.compute_logits(hidden).float(), dim=-1)
            total_nll -= logprobs.gather(1, ids[offset + 1 : offset + count + 1, None]).sum().item()
            scored += count
    return math.exp(total_nll / scored)
