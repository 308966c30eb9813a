"""GGUF's quantized blocks carried into inferline's int4/int8 layers as they are, without a float trip.

The quantized layers store GGUF's own block formats (layers/quant_linear.py): Q4_1 is the int4 layout
byte for byte, Q4_0 is Q4_1 whose minimum is -8 times the scale (exact in float16), and Q8_0 is the int8
layout. Keeping the blocks makes loading a copy of bytes instead of dequantizing to float32 and
re-quantizing (seconds for the default model on 2 cores), and keeps the file's weights exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from gguf import GGMLQuantizationType

from inferline.layers.embedding import Int8Embedding
from inferline.layers.quant_linear import GROUP_SIZE, Int4Linear, Int8Linear

BlockMode = Literal["int4", "int8"]

KEPT_AS: dict[GGMLQuantizationType, BlockMode] = {
    GGMLQuantizationType.Q4_0: "int4",
    GGMLQuantizationType.Q4_1: "int4",
    GGMLQuantizationType.Q8_0: "int8",
}
"""The GGML block types whose bytes the int4/int8 layers run unchanged."""


@dataclass(frozen=True)
class BlockWeight:
    """A linear layer's weights [out, in] in the storage of inferline's quantized layers."""

    mode: BlockMode
    codes: torch.Tensor
    """int4: uint8 [out, in / 2]; int8: int8 [out, in]."""
    scales: torch.Tensor
    """int4: float16 [2, out, in / 32] (scales, then minimums); int8: float16 [out, in / 32]."""

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    def rows(self, order: torch.Tensor) -> BlockWeight:
        """The same weights with output rows taken in `order` (for llama.cpp's Q/K row permutation)."""
        scales = self.scales[:, order] if self.mode == "int4" else self.scales[order]
        return BlockWeight(self.mode, self.codes[order].contiguous(), scales.contiguous())

    def layer(self, bias: torch.Tensor | None) -> Int4Linear | Int8Linear:
        """The quantized linear layer over these weights; `bias` already in the compute dtype."""
        if self.mode == "int4":
            return Int4Linear(self.codes, self.scales, bias)
        return Int8Linear(self.codes, self.scales, bias)

    def embedding(self, dtype: torch.dtype) -> Int8Embedding:
        """The embedding table over these weights (int8 only), its rows looked up in `dtype`."""
        if self.mode != "int8":
            raise ValueError(f"an embedding table is kept in int8 blocks, not {self.mode}")
        return Int8Embedding(self.codes, self.scales, dtype)

    def dequantized(self) -> torch.Tensor:
        """float32 [out, in], for a layer that cannot stay in this format (e.g. fused with another)."""
        return self.layer(None).dequantized(torch.float32)


def concat_rows(parts: Sequence[BlockWeight]) -> BlockWeight:
    """Stack layers' weights along the output dimension (q|k|v, gate|up); all of one mode."""
    mode = parts[0].mode
    codes = torch.cat([part.codes for part in parts], dim=0)
    scales = torch.cat([part.scales for part in parts], dim=1 if mode == "int4" else 0)
    return BlockWeight(mode, codes, scales)


def block_weight(data: np.ndarray, ggml_type: GGMLQuantizationType, shape: tuple[int, ...]) -> BlockWeight:
    """The GGML tensor `data` (raw bytes, PyTorch `shape` [out, in]) as a BlockWeight; the type must be
    one of KEPT_AS."""
    out_features, in_features = shape
    groups = in_features // GROUP_SIZE
    raw = torch.from_numpy(data.reshape(-1))
    if ggml_type == GGMLQuantizationType.Q8_0:
        blocks = raw.view(out_features, groups, 2 + GROUP_SIZE)
        scales = blocks[..., 0:2].contiguous().view(torch.float16).view(out_features, groups)
        codes = blocks[..., 2:].contiguous().view(torch.int8).view(out_features, in_features)
        return BlockWeight("int8", codes, scales)
    if ggml_type == GGMLQuantizationType.Q4_1:
        blocks = raw.view(out_features, groups, 4 + GROUP_SIZE // 2)
        scales = blocks[..., 0:2].contiguous().view(torch.float16).view(out_features, groups)
        mins = blocks[..., 2:4].contiguous().view(torch.float16).view(out_features, groups)
        nibbles = blocks[..., 4:]
    elif ggml_type == GGMLQuantizationType.Q4_0:
        blocks = raw.view(out_features, groups, 2 + GROUP_SIZE // 2)
        scales = blocks[..., 0:2].contiguous().view(torch.float16).view(out_features, groups)
        mins = scales * -8  # x = d * (q - 8) = d * q + (-8 d)
        nibbles = blocks[..., 2:]
    else:
        raise ValueError(f"GGML type {ggml_type.name} has no int4/int8 layout; dequantize it instead")
    codes = nibbles.contiguous().view(out_features, in_features // 2)
    return BlockWeight("int4", codes, torch.stack([scales, mins]))
