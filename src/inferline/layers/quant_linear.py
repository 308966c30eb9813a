"""Weight-only quantized linear layers for the CPU: int8 per output channel, int4 in groups of 32.

Decoding a few sequences is bound by reading weights, so smaller weights are faster: PyTorch's CPU
kernels multiply bfloat16 activations by int8 (`_weight_int8pack_mm`) or packed int4
(`_weight_int4pack_mm_for_cpu`) weights directly, 3-5x faster than a bfloat16 matmul for a few rows.
Those kernels are matrix-vector loops, though: their cost grows with every row, while a bfloat16 GEMM
barely notices 16 more. So for many rows at once (prefill chunks, large decode batches) the int8
layer widens its weights to bfloat16 for the call and runs the GEMM; the widening costs about what
16 rows of the kernel cost, and is paid once for all rows. Activations are never quantized: per-row
int8 activations made the 135M model's perplexity 6% worse, weight-only int8 leaves it unchanged.
The int4 layer has no GEMM path (its per-group scales vary along the input dimension), so it trades
prefill speed for the smallest weights: choose it when memory, not throughput, is the limit.
Scales are rounded to the activation dtype before the codes are chosen, so the codes are the best for
the scales the kernel will actually use.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

QuantizationMode = Literal["none", "int8", "int4"]

SMALL_BATCH_ROWS = 16
"""Up to this many rows the int8 kernel wins; above it widening the weights for a GEMM does."""

INT4_GROUP_SIZE = 32
"""GGUF's Q4 formats use blocks of 32 along the input dimension: the same groups keep their values."""


class Int8Linear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 [out, in] and one scale per output channel."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        w = weight.float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(dtype)
        codes = (w / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.weight = nn.Parameter(codes, requires_grad=False)
        self.scales = nn.Parameter(scales, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in] -> [T, out]
        if x.shape[0] <= SMALL_BATCH_ROWS:
            y = torch._weight_int8pack_mm(x, self.weight, self.scales)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight.to(x.dtype) * self.scales[:, None], self.bias)


class Int4Linear(nn.Module):
    """y = x W^T (+ b) with W in 4 bits: an asymmetric scale and offset per group of 32 inputs."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        groups = weight.float().view(out_features, in_features // INT4_GROUP_SIZE, INT4_GROUP_SIZE)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        # The kernel computes (code - 8) * scale + zero, so zero is the value of code 8.
        scales = ((high - low) / 15).clamp(min=1e-12).to(dtype)  # [out, groups]
        zeros = (low + 8 * scales.float()).to(dtype)
        codes = ((groups - zeros.float()[..., None]) / scales.float()[..., None] + 8).round().clamp(0, 15)
        packed = torch._convert_weight_to_int4pack_for_cpu(codes.view(out_features, in_features).int(), 1)
        self.weight = nn.Parameter(packed, requires_grad=False)
        scales_and_zeros = torch.stack([scales.t(), zeros.t()], dim=-1).contiguous()
        self.scales_and_zeros = nn.Parameter(scales_and_zeros, requires_grad=False)  # [groups, out, 2]
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, in] -> [T, out]
        y = torch._weight_int4pack_mm_for_cpu(x, self.weight, INT4_GROUP_SIZE, self.scales_and_zeros)
        return y if self.bias is None else y + self.bias


def quantize_linears(model: nn.Module, mode: QuantizationMode, dtype: torch.dtype) -> None:
    """Replace every nn.Linear under `model` by its quantized form, in place (the float weights go)."""
    if mode == "none":
        return
    layer = Int8Linear if mode == "int8" else Int4Linear
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, layer(child.weight.detach(), child.bias, dtype))
