"""The CPU decode step in C++: every decoder layer of a small decode batch in
one call.

Run op by op, a decode step of SmolLM2-135M on the CPU spent about half its time outside the weight
kernels: ~45 eager ops per layer, each a few microseconds of dispatch and allocation, and a gather
of every sequence's blocks for attention. The C++ step calls the same weight kernels and does the rest
in plain loops over the batch's rows, reading keys and values in place through the block table.
It takes steps of up to MAX_ROWS tokens (MAX_QUANTIZED_ROWS with int4/int8 weights), short prefill
chunks included: every token is a row with its own context length and block table, so a prompt token
at position p attends to keys 0..p, its chunk's earlier keys written in the same layer just before. A
short prompt joining a few decoding sequences, the first token of most chat requests, costs one call
instead of ~45 eager ops a layer (a 20-token prompt with 3 decodes: ~30 ms of dispatch). Larger steps
amortise the dispatch over many rows and stay on the eager path (layers/attention.py), which the step
matches to rounding (tests/layers/test_cpu_decode.py).

The C++ source is layers/csrc/cpu_kernels.cpp, built by layers/cpu_kernels.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from inferline.layers.attention import AttentionMetadata
from inferline.layers.quant_linear import Int4Linear, Int8Linear
from inferline.layers.rotary import RopeTable

MAX_ROWS = 16
"""Most tokens a step the C++ step takes with float weights (its dense projections are PyTorch's)."""
MAX_QUANTIZED_ROWS = 32
"""Most tokens a step it takes with int4/int8 weights: the default max_num_seqs. At 32 rows the
step is still well ahead of the eager layers and their weights widened per call (the default model,
int4, 32 sequences decoding, 2 cores: 251 against 204 tok/s), whose ~45 ops a layer cost more than
the kernels' per-row work."""

_WEIGHT_KINDS = {nn.Linear: 0, Int8Linear: 1, Int4Linear: 2}


@dataclass
class DecoderLayerWeights:
    """The modules of one Llama-family decoder layer that the C++ step reads."""

    input_norm: torch.Tensor
    qkv_proj: nn.Module
    o_proj: nn.Module
    post_norm: torch.Tensor
    gate_up_proj: nn.Module
    down_proj: nn.Module


def _linear_tensors(module: nn.Module) -> tuple[int, list[torch.Tensor]]:
    """The weight format and [weight, scales, bias] of a projection, empty tensors where it has none."""
    empty = torch.empty(0)
    if isinstance(module, Int4Linear):
        weight, scales = module.codes, module.scales_and_mins
    elif isinstance(module, Int8Linear):
        weight, scales = module.weight, module.scales
    else:
        weight, scales = cast(torch.Tensor, module.weight), empty
    bias = cast(torch.Tensor | None, module.bias)
    return _WEIGHT_KINDS[type(module)], [weight, scales, empty if bias is None else bias]


class CpuDecodeStep:
    """Runs all decoder layers for decode-only batches of up to MAX_ROWS sequences."""

    def __init__(
        self, layers: list[DecoderLayerWeights], num_heads: int, num_kv_heads: int, eps: float
    ) -> None:
        weights: list[torch.Tensor] = []
        kinds = set()
        for layer in layers:
            qkv_kind, qkv = _linear_tensors(layer.qkv_proj)
            o_kind, o = _linear_tensors(layer.o_proj)
            gate_up_kind, gate_up = _linear_tensors(layer.gate_up_proj)
            down_kind, down = _linear_tensors(layer.down_proj)
            kinds |= {qkv_kind, o_kind, gate_up_kind, down_kind}
            # The order of csrc/cpu_kernels.cpp's LayerTensor (projections other than qkv have no bias).
            weights += [layer.input_norm, *qkv, *o[:2], layer.post_norm, *gate_up[:2], *down[:2]]
        if len(kinds) != 1:
            raise ValueError(f"the C++ decode step needs one weight format in all layers, got kinds {kinds}")
        self.weight_kind = kinds.pop()
        self.weights = weights
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.eps = eps

    def handles(self, meta: AttentionMetadata) -> bool:
        max_rows = MAX_ROWS if self.weight_kind == _WEIGHT_KINDS[nn.Linear] else MAX_QUANTIZED_ROWS
        return meta.slot_mapping.numel() <= max_rows

    def __call__(
        self, x: torch.Tensor, rope: RopeTable, kv_caches: list[torch.Tensor], meta: AttentionMetadata
    ) -> torch.Tensor:
        # x: [T, hidden] embeddings of the step's tokens -> hidden states after the last layer
        block_tables, context_lens = _rows(meta)
        cos, signed_sin = rope
        return torch.ops.inferline_cpu.decode_layers(
            x,
            self.weights,
            self.weight_kind,
            kv_caches,
            meta.slot_mapping,
            block_tables,
            context_lens,
            cos.view(x.shape[0], -1),
            signed_sin.view(x.shape[0], -1),
            self.num_heads,
            self.num_kv_heads,
            self.eps,
        )


def _rows(meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, max_blocks] block tables and [T] context lengths, one per token: the decodes' own, then each
    prefill token's sequence table with the keys up to and including its position."""
    if not meta.prefills:
        assert meta.decode is not None
        return meta.decode.block_tables, meta.decode.context_lens
    tables: list[torch.Tensor] = []
    lengths: list[torch.Tensor] = []
    if meta.decode is not None:
        tables += list(meta.decode.block_tables)
        lengths.append(meta.decode.context_lens)
    for chunk in meta.prefills:
        tables += [chunk.block_table] * chunk.num_tokens
        first = chunk.num_context_tokens + 1
        lengths.append(torch.arange(first, first + chunk.num_tokens))
    # Padding entries are never read: a row reads only the blocks its context length covers.
    return pad_sequence(tables, batch_first=True), torch.cat(lengths)
