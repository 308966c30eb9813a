"""Weight-only quantized linear layers for the CPU: int8 and int4, in groups of 32 inputs.

The formats are GGUF's Q8_0 (int8 codes, a float16 scale per group) and Q4_1 (4-bit codes, a float16
scale and minimum per group), so weights from such a GGUF carry over exactly. Decoding a few
sequences is bound by reading weights, so smaller weights are faster: up to SMALL_BATCH_ROWS rows go
through inferline's kernels (layers/csrc/cpu_kernels.cpp), which quantize the activations of each
group to int8 and multiply with integer dot products, as llama.cpp does; 3-5x faster than a bfloat16
matmul for a few rows. Their cost grows with every row, though (they unpack a weight once for a tile of
up to 16 rows), while a bfloat16 GEMM barely notices 16 more. So for many rows at once (long prefill
chunks, large decode batches) the layers widen their weights to bfloat16 for the call and run the GEMM;
the widening costs about what 32 rows of the kernel cost, and is paid once for all rows. (Quantizing
activations per row instead of per group of 32 made the 135M model's perplexity 6% worse; per group
costs ~0.5%, benchmarks/RESULTS.md.) Without the C++ kernels every matmul takes the widened-weights path.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from inferline.errors import ModelLoadError
from inferline.layers.cpu_kernels import load_cpu_kernels

QuantizationMode = Literal["none", "int8", "int4"]

SMALL_BATCH_ROWS = 32
"""Up to this many rows the kernels win; above it widening the weights for a GEMM does. Measured on the
default model's shapes (2-core Zen 5, 1 and 2 threads): 3072 x 576 at 24 rows 0.75 against 1.11 ms
widened, at 32 rows even on one thread and 0.58 against 0.78 ms on two, at 48 rows even on two; a short
prompt joining a few decoding sequences (~24 rows) is the case this serves."""

LARGE_WEIGHT_ELEMENTS = 8 << 20
LARGE_WEIGHT_KERNEL_ROWS = 96
"""A matrix this large (the vocabulary projection: 49152 x 576) widens past the caches, so widening is
bound by memory and the kernels win to ~100 rows: int8 at 32 rows took 20 ms against 61 ms widened
(a 32-sequence decode step spent 60 of its 133 ms there), at 128 rows 72 against 85 ms. A decoder
layer's matrix widens in cache and crosses over near 32-48 rows, so SMALL_BATCH_ROWS holds for it."""


def max_kernel_rows(out_features: int, in_features: int) -> int:
    """Most rows a quantized layer of this shape sends through the kernels rather than a widened GEMM."""
    if out_features * in_features >= LARGE_WEIGHT_ELEMENTS:
        return LARGE_WEIGHT_KERNEL_ROWS
    return SMALL_BATCH_ROWS


GROUP_SIZE = 32
"""GGUF's Q4_1 and Q8_0 use blocks of 32 along the input dimension: the same groups keep their values."""


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 [out, in], one float16 scale per group of 32 inputs
    (GGUF's Q8_0, whose weights carry over exactly).

    Few rows go through inferline's int8 kernel (int8 activations per group of 32, integer dot
    products); many rows through a GEMM on the weights widened for the call.
    """

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        """codes: int8 [out, in]; scales: float16 [out, in / 32]; bias in the compute dtype."""
        super().__init__()
        self.weight = nn.Parameter(codes, requires_grad=False)
        self.scales = nn.Parameter(scales, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.max_kernel_rows = max_kernel_rows(*codes.shape)

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> Int8Linear:
        """Quantize float weights [out, in]: each group's scale maps its largest magnitude to 127."""
        out_features, in_features = weight.shape
        groups = weight.float().view(out_features, in_features // GROUP_SIZE, GROUP_SIZE)
        scales = (groups.abs().amax(dim=-1) / 127).clamp(min=1e-7).half()  # [out, groups]
        codes = (groups / scales.float()[..., None]).round().clamp(-127, 127).to(torch.int8)
        return cls(codes.view(out_features, in_features), scales, None if bias is None else bias.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in] -> [T, out]
        if x.shape[0] <= self.max_kernel_rows and load_cpu_kernels():
            y = torch.ops.inferline_cpu.int8_linear(x.contiguous(), self.weight, self.scales)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.dequantized(x.dtype), self.bias)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The weights as a dense [out, in] matrix in `dtype`."""
        out_features = self.weight.shape[0]
        groups = self.weight.view(out_features, -1, GROUP_SIZE).to(dtype)
        return (groups * self.scales.to(dtype)[..., None]).view(out_features, -1)


class Int4Linear(nn.Module):
    """y = x W^T (+ b) with W in 4 bits: a scale and a minimum per group of 32 inputs (GGUF's Q4_1).

    Few rows go through inferline's int4 kernel (layers/csrc/cpu_kernels.cpp: int8 activations per
    group of 32 and integer dot products, as llama.cpp computes Q4_1); many rows through a GEMM on
    the weights dequantized for the call. Without the C++ kernels both dequantize with PyTorch ops.
    """

    def __init__(self, codes: torch.Tensor, scales_and_mins: torch.Tensor, bias: torch.Tensor | None) -> None:
        """codes: uint8 [out, in / 2], byte j of a group holding element j in its low nibble and
        element j + 16 in its high one (Q4_1's own layout); scales_and_mins: float16 [2, out, in / 32];
        bias in the compute dtype."""
        super().__init__()
        self.codes = nn.Parameter(codes, requires_grad=False)
        self.scales_and_mins = nn.Parameter(scales_and_mins, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.max_kernel_rows = max_kernel_rows(codes.shape[0], codes.shape[1] * 2)

    @classmethod
    def quantize(cls, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> Int4Linear:
        """Quantize float weights [out, in]: each group's 16 levels span its minimum to its maximum."""
        out_features, in_features = weight.shape
        groups = weight.float().view(out_features, in_features // GROUP_SIZE, GROUP_SIZE)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        # float16 like GGUF's own: a Q4_1 block's scale and minimum come back exactly.
        scales = ((high - low) / 15).clamp(min=1e-7).half()  # [out, groups]
        mins = low.half()
        codes = ((groups - mins.float()[..., None]) / scales.float()[..., None]).round().clamp(0, 15)
        codes = codes.to(torch.uint8).view(out_features, -1, 2, GROUP_SIZE // 2)
        packed = codes[:, :, 0] | (codes[:, :, 1] << 4)
        return cls(
            packed.reshape(out_features, in_features // 2),
            torch.stack([scales, mins]),
            None if bias is None else bias.to(dtype),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in] -> [T, out]
        if x.shape[0] <= self.max_kernel_rows and load_cpu_kernels():
            y = torch.ops.inferline_cpu.int4_linear(x.contiguous(), self.codes, self.scales_and_mins)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.dequantized(x.dtype), self.bias)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The weights as a dense [out, in] matrix in `dtype`."""
        if load_cpu_kernels():
            return torch.ops.inferline_cpu.int4_dequantize(self.codes, self.scales_and_mins, dtype)
        codes = torch.stack([self.codes & 15, self.codes >> 4], dim=2)  # [out, in / 2, 2]
        out_features = codes.shape[0]
        codes = codes.view(out_features, -1, 16, 2).transpose(2, 3).reshape(out_features, -1, GROUP_SIZE)
        scales, mins = self.scales_and_mins.float()
        return (codes.float() * scales[..., None] + mins[..., None]).view(out_features, -1).to(dtype)


VOCABULARY_PROJECTION = "lm_head"
"""Kept in int8 under int4: the one matrix whose 4-bit error shows. SmolLM2-135M's perplexity was +8%
with a 4-bit vocabulary projection and +0.2% with an int8 one (its GGUF keeps it in Q8_0 too)."""


def quantize_linears(model: nn.Module, mode: QuantizationMode, dtype: torch.dtype) -> None:
    """Replace every nn.Linear under `model` by its quantized form, in place (the float weights go)."""
    if mode == "none":
        return
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                if child.in_features % GROUP_SIZE:
                    raise ModelLoadError(
                        f"quantization {mode!r} groups each layer's inputs by {GROUP_SIZE}, but {name} has "
                        f"{child.in_features} inputs; load this model with quantization: none"
                    )
                layer = Int8Linear if mode == "int8" or name == VOCABULARY_PROJECTION else Int4Linear
                setattr(parent, name, layer.quantize(child.weight.detach(), child.bias, dtype))
