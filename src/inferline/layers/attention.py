"""Attention over the paged KV cache.

The cache of one layer is a tensor [2, num_blocks, block_size, num_kv_heads, head_dim]; a sequence owns
a list of block ids (its block table), so its context is scattered over the pool. Each step:
1. the new tokens' keys and values are written to their slots (one index_copy per tensor);
2. single-token queries (decodes) are batched into one attention over their gathered blocks, padded
   to the longest context and masked. On the CPU the cache is float32 (see ModelRunner): the fused
   attention kernel is 4-6x faster there than in bfloat16, whose small-matrix paths are slow;
3. multi-token chunks (prefills) attend one sequence at a time: a fresh prompt attends to its own
   keys with a causal mask (no gather), a chunk after cached context gathers its blocks first.
The batch is laid out decodes first, then prefill chunks, in that order of rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class DecodeBatch:
    """Rows [0, num_seqs) of the batch: one query token each."""

    num_seqs: int
    block_tables: torch.Tensor
    """[num_seqs, max_blocks] int64, padded with any valid block id (masked out)."""
    mask: torch.Tensor
    """[num_seqs, 1, 1, max_blocks * block_size] additive in the cache's dtype: 0 in context, -inf past it."""
    context_lens: torch.Tensor
    """[num_seqs] int64: tokens of each sequence in the cache, this step's included."""


@dataclass
class PrefillChunk:
    """Rows [row_start, row_start + num_tokens) of the batch: consecutive tokens of one sequence."""

    row_start: int
    num_tokens: int
    num_context_tokens: int
    """Tokens of this sequence already in the cache before this chunk."""
    block_table: torch.Tensor
    """[num_blocks] int64 covering context plus chunk."""


@dataclass
class AttentionMetadata:
    """Where each new token's KV goes and how the batch's rows group into sequences."""

    slot_mapping: torch.Tensor
    """[num_tokens] int64: flat slot (block_id * block_size + offset) of each new token."""
    decode: DecodeBatch | None
    prefills: list[PrefillChunk] = field(default_factory=list)


def _gather(cache: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    # cache: [num_blocks, block_size, KVH, D]; block_ids: [...]; returns [..., block_size, KVH, D]
    flat = cache.index_select(0, block_ids.reshape(-1))
    return flat.view(*block_ids.shape, *cache.shape[1:])


def _decode_attention(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, decode: DecodeBatch
) -> torch.Tensor:
    batch = decode.num_seqs
    num_kv_heads, head_dim = key_cache.shape[2:]
    keys = _gather(key_cache, decode.block_tables).view(batch, -1, num_kv_heads, head_dim)  # [B, L, KVH, D]
    values = _gather(value_cache, decode.block_tables).view(batch, -1, num_kv_heads, head_dim)
    attended = F.scaled_dot_product_attention(
        q[:batch].unsqueeze(2),  # [B, H, 1, D]
        keys.transpose(1, 2),
        values.transpose(1, 2),
        attn_mask=decode.mask,
        enable_gqa=True,
    )
    return attended.squeeze(2)


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata
) -> torch.Tensor:
    """q: [T, H, D]; k, v: [T, KVH, D]; kv_cache: [2, num_blocks, block_size, KVH, D]. Returns [T, H, D]."""
    num_blocks, block_size, num_kv_heads, head_dim = kv_cache.shape[1:]
    key_cache, value_cache = kv_cache[0], kv_cache[1]
    key_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
    value_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
    if meta.decode is not None and not meta.prefills:
        return _decode_attention(q, key_cache, value_cache, meta.decode)
    out = torch.empty_like(q)
    if meta.decode is not None:
        out[: meta.decode.num_seqs] = _decode_attention(q, key_cache, value_cache, meta.decode)

    for chunk in meta.prefills:
        rows = slice(chunk.row_start, chunk.row_start + chunk.num_tokens)
        query = q[rows].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        if chunk.num_context_tokens == 0:
            keys, values = k[rows], v[rows]  # [n, KVH, D]: no need to read back what was just written
            mask = None
        else:
            total = chunk.num_context_tokens + chunk.num_tokens
            keys = _gather(key_cache, chunk.block_table).view(-1, num_kv_heads, head_dim)[:total]
            values = _gather(value_cache, chunk.block_table).view(-1, num_kv_heads, head_dim)[:total]
            # Query i sits at position context + i and sees keys 0..context + i.
            query_pos = torch.arange(chunk.num_tokens, device=q.device) + chunk.num_context_tokens
            mask = query_pos[:, None] >= torch.arange(total, device=q.device)[None, :]
        attended = F.scaled_dot_product_attention(
            query,
            keys.transpose(0, 1).unsqueeze(0),  # [1, KVH, L, D]
            values.transpose(0, 1).unsqueeze(0),
            attn_mask=mask,
            is_causal=mask is None,
            enable_gqa=True,
        )
        out[rows] = attended[0].transpose(0, 1)
    return out
