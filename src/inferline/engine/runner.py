"""The model runner: turns a SchedulerOutput into one batched forward pass and sampled tokens.

It owns the KV-cache tensors and makes no policy: what to compute was decided by the scheduler.
Rows are laid out decodes first (one token each, attended as one batch), then prefill chunks.
Only the rows that sample a token go through the vocabulary projection.
"""

from __future__ import annotations

import math
import mmap

import torch

from inferline.engine.guided.masks import PendingMasks, row_masks
from inferline.engine.sampler import SampledToken, Sampler
from inferline.engine.scheduler import ScheduledChunk, SchedulerOutput
from inferline.engine.speculative.verify import verify_drafts
from inferline.layers.attention import AttentionMetadata, DecodeBatch, PrefillChunk
from inferline.models.llama import LlamaForCausalLM


def kv_cache_dtype(model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype of the KV cache, in which attention is computed.

    float32 on the CPU whatever the model's dtype: CPU attention kernels in bfloat16 are 4-6x slower
    for decode-sized problems, which costs more than the cast of q, k and v and the doubled cache.
    """
    return torch.float32 if device.type == "cpu" else model_dtype


def allocate_kv_caches(
    num_layers: int, layer_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """One zeroed KV tensor per layer.

    Zeroed, not empty: padded decode rows read unused slots, and 0 * NaN would poison the output. On
    the CPU the pool is an anonymous memory mapping, whose pages the kernel zero-fills on first write:
    a large pool costs neither start-up time nor resident memory until the KV is actually written.
    """
    if device.type != "cpu":
        return [torch.zeros(layer_shape, dtype=dtype, device=device) for _ in range(num_layers)]
    layer_numel = math.prod(layer_shape)
    pool = mmap.mmap(-1, num_layers * layer_numel * dtype.itemsize)
    flat = torch.frombuffer(pool, dtype=dtype)
    return [flat[i * layer_numel : (i + 1) * layer_numel].view(layer_shape) for i in range(num_layers)]


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        num_blocks: int,
        block_size: int,
        sampler: Sampler,
        single_stream_threads: int | None = None,
        cpu_decode_step: bool = True,
    ) -> None:
        config = model.config
        self.model = model
        self.block_size = block_size
        self.sampler = sampler
        self.device = model.norm.weight.device
        self.dtype = kv_cache_dtype(model.norm.weight.dtype, self.device)  # the compute dtype
        layer_shape = (2, num_blocks, block_size, config.num_key_value_heads, config.head_dim)
        self.kv_caches = allocate_kv_caches(config.num_hidden_layers, layer_shape, self.dtype, self.device)
        self.all_threads = torch.get_num_threads()
        self.single_stream_threads = single_stream_threads
        # The model may be shared between engines (tests, benchmarks): this engine's choice holds.
        model.cpu_decode = None
        if cpu_decode_step and self.device.type == "cpu":
            model.use_cpu_decode_step()

    @torch.inference_mode()
    def execute(
        self, output: SchedulerOutput, masks: PendingMasks | None = None
    ) -> dict[str, list[SampledToken]]:
        """Run the scheduled chunks; return the tokens sampled for each chunk that ends its sequence:
        one, or for a chunk carrying drafts, the accepted drafts and the target's next token.
        `masks`, computed meanwhile on another thread, constrain the rows of guided sequences."""
        decodes = [c for c in output.chunks if len(c.token_ids) == 1]
        prefills = [c for c in output.chunks if len(c.token_ids) > 1]
        chunks = decodes + prefills
        self._set_threads(output.num_tokens)
        self._copy_blocks(output.chunks)
        input_ids, positions, meta = self._prepare(decodes, prefills)
        hidden = self.model(input_ids, positions, self.kv_caches, meta)  # [T, hidden]

        sample_rows: list[int] = []
        sample_chunks: list[ScheduledChunk] = []
        row = 0
        for chunk in chunks:
            row += len(chunk.token_ids)
            if chunk.sample:
                # A verify chunk needs the logits after its first token and after every draft.
                sample_rows.extend(range(row - 1 - len(chunk.draft_token_ids), row))
                sample_chunks.append(chunk)
        if not sample_chunks:
            return {}
        rows = torch.tensor(sample_rows, device=self.device)
        logits = self.model.compute_logits(hidden.index_select(0, rows)).float()  # [S, vocab]
        allowed = row_masks(sample_chunks, masks.result()) if masks is not None else None
        if len(sample_rows) > len(sample_chunks):
            verified = verify_drafts(self.sampler, logits, sample_chunks, allowed)
            return {chunk.seq_id: tokens for chunk, tokens in zip(sample_chunks, verified, strict=True)}
        sampled = self.sampler(logits, sample_chunks, allowed)
        return {chunk.seq_id: [token] for chunk, token in zip(sample_chunks, sampled, strict=True)}

    def _copy_blocks(self, chunks: list[ScheduledChunk]) -> None:
        """Copy cached blocks into the fresh blocks of the chunks that reuse them, before any KV is written
        (a copied block may be taken for new data in this very step)."""
        for chunk in chunks:
            if chunk.copied_block is not None and chunk.copied_block[0] != chunk.copied_block[1]:
                source, destination = chunk.copied_block
                for kv in self.kv_caches:
                    kv[:, destination].copy_(kv[:, source])

    def _set_threads(self, num_tokens: int) -> None:
        if self.single_stream_threads is None or self.device.type != "cpu":
            return
        threads = self.single_stream_threads if num_tokens == 1 else self.all_threads
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    def _prepare(
        self, decodes: list[ScheduledChunk], prefills: list[ScheduledChunk]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        block_size = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        for chunk in decodes + prefills:
            input_ids.extend(chunk.token_ids)
            for pos in range(chunk.start_position, chunk.start_position + len(chunk.token_ids)):
                positions.append(pos)
                slots.append(chunk.block_ids[pos // block_size] * block_size + pos % block_size)

        device = self.device
        decode_batch = None
        if decodes:
            max_blocks = max(len(c.block_ids) for c in decodes)
            tables = [c.block_ids + [0] * (max_blocks - len(c.block_ids)) for c in decodes]
            context_lens = torch.tensor([c.start_position + 1 for c in decodes], device=device)
            key_positions = torch.arange(max_blocks * block_size, device=device)
            past_context = key_positions.unsqueeze(0) >= context_lens.unsqueeze(1)
            mask = torch.zeros(past_context.shape, dtype=self.dtype, device=device).masked_fill_(
                past_context, float("-inf")
            )
            mask = mask.view(len(decodes), 1, 1, -1)
            decode_batch = DecodeBatch(len(decodes), torch.tensor(tables, device=device), mask, context_lens)

        prefill_meta = []
        row = len(decodes)
        for chunk in prefills:
            prefill_meta.append(
                PrefillChunk(
                    row_start=row,
                    num_tokens=len(chunk.token_ids),
                    num_context_tokens=chunk.start_position,
                    block_table=torch.tensor(chunk.block_ids, device=device),
                )
            )
            row += len(chunk.token_ids)

        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, device=device), decode=decode_batch, prefills=prefill_meta
        )
        return torch.tensor(input_ids, device=device), torch.tensor(positions, device=device), meta
