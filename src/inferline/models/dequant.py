"""Dequantize GGML tensors to float32 with PyTorch.

Design note: `gguf.quants.dequantize` is exact but runs in numpy on one core; the default model
(Q4_1 with a Q8_0 embedding) takes ~0.9 s that way on two cores. These kernels do the same
arithmetic with a handful of whole-tensor torch ops per type, which run multi-threaded and write
the float32 output once. Types without a kernel here fall back to `gguf.quants.dequantize`.

Block layouts (all little-endian, `d`/`m`/`dmin` are float16, QK_K = 256):
- Q8_0: 32 values: d, int8 q[32]; x = d * q.
- Q4_0: 32 values: d, 16 bytes; value j < 16 is the low nibble of byte j, value j + 16 its high
  nibble; x = d * (q - 8).
- Q4_1: as Q4_0 with d, m first; x = d * q + m.
- Q4_K: 256 values in 8 sub-blocks of 32: d, dmin, 12 bytes of packed 6-bit (scale, min) pairs,
  128 bytes of nibbles; sub-block 2i takes the low and 2i + 1 the high nibbles of bytes
  32i..32i+31; x = d * scale * q - dmin * min.
- Q6_K: 256 values: 128 bytes of low nibbles (ql), 64 bytes of 2-bit high parts (qh), 16 int8
  scales, d; in each half of 128 values, value 32k + l (k = 0..3, l = 0..31) takes the low (k even)
  or high (k odd) nibble of ql[l + 32 * (k % 2)] and bits 2k..2k+1 of qh[l]; q is biased by 32 and
  scaled by scales[l // 16 + 2k] (per half).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as numpy_dequantize

QK_K = 256


def dequantize(data: np.ndarray, ggml_type: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    """Return the tensor stored in `data` (raw uint8 bytes) as float32 with PyTorch `shape`."""
    kernel = _KERNELS.get(ggml_type)
    if kernel is None:
        values = torch.from_numpy(np.ascontiguousarray(numpy_dequantize(data, ggml_type), dtype=np.float32))
        return values.reshape(shape)
    raw = torch.from_numpy(data.reshape(-1))
    if ggml_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
        return kernel(raw).reshape(shape)
    _, block_bytes = GGML_QUANT_SIZES[ggml_type]
    return kernel(raw.view(-1, block_bytes)).reshape(shape)


def _f32(raw: torch.Tensor) -> torch.Tensor:
    # clone: the result must own its memory, not alias the file's memmap.
    return raw.view(torch.float32).clone()


def _f16(raw: torch.Tensor) -> torch.Tensor:
    return raw.view(torch.float16).float()


def _bf16(raw: torch.Tensor) -> torch.Tensor:
    return raw.view(torch.bfloat16).float()


def _half(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 at byte `start` of every block, as a float32 column: [num_blocks, 1]."""
    return blocks[:, start : start + 2].view(torch.float16).float()


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[N, B] bytes -> [N, 2B] values: the B low nibbles, then the B high nibbles."""
    out = torch.empty(packed.shape[0], 2 * packed.shape[1], dtype=torch.uint8)
    torch.bitwise_and(packed, 0x0F, out=out[:, : packed.shape[1]])
    torch.bitwise_right_shift(packed, 4, out=out[:, packed.shape[1] :])
    return out


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    # blocks: [N, 34] = d | int8 q[32]
    q = blocks[:, 2:].view(torch.int8).float()
    return q.mul_(_half(blocks, 0))


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    # blocks: [N, 18] = d | 16 bytes of nibbles
    q = _nibbles(blocks[:, 2:]).float()
    return q.sub_(8.0).mul_(_half(blocks, 0))


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    # blocks: [N, 20] = d | m | 16 bytes of nibbles
    q = _nibbles(blocks[:, 4:]).float()
    return q.mul_(_half(blocks, 0)).add_(_half(blocks, 2))


def _k_scales_mins(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack Q4_K's 12 bytes into 8 six-bit scales and 8 six-bit mins: [N, 8] each.

    Bytes 0-3 hold scales 0-3 (low 6 bits), bytes 4-7 mins 0-3; bytes 8-11 hold the low 4 bits
    of scales 4-7 (low nibble) and mins 4-7 (high nibble), whose top 2 bits are the top 2 bits of
    bytes 0-3 (scales) and 4-7 (mins).
    """
    packed = packed.to(torch.int32)
    low, mid, high = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat([low & 63, (high & 0x0F) | ((low >> 6) << 4)], dim=1)
    mins = torch.cat([mid & 63, (high >> 4) | ((mid >> 6) << 4)], dim=1)
    return scales.float(), mins.float()


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    # blocks: [N, 144] = d | dmin | 12 bytes scales/mins | 128 bytes of nibbles
    num_blocks = blocks.shape[0]
    scales, mins = _k_scales_mins(blocks[:, 4:16])
    scales = scales.mul_(_half(blocks, 0))  # [N, 8]
    mins = mins.mul_(_half(blocks, 2))  # [N, 8]
    packed = blocks[:, 16:].reshape(num_blocks, 4, 32)
    q = _nibbles(packed.reshape(num_blocks * 4, 32)).reshape(num_blocks, 8, 32).float()
    return q.mul_(scales.unsqueeze(-1)).sub_(mins.unsqueeze(-1)).reshape(num_blocks, QK_K)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    # blocks: [N, 210] = ql[128] | qh[64] | int8 scales[16] | d
    num_blocks = blocks.shape[0]
    ql = blocks[:, :128].reshape(num_blocks, 2, 2, 32)  # [N, half, ql row, l]
    qh = blocks[:, 128:192].reshape(num_blocks, 2, 1, 32).to(torch.int16)  # [N, half, 1, l]
    scales = blocks[:, 192:208].view(torch.int8).float().reshape(num_blocks, 2, 4, 2)  # [N, half, k, l//16]
    d = _half(blocks, 208)  # [N, 1]
    low = torch.cat([ql & 0x0F, ql >> 4], dim=2).to(torch.int16)  # [N, half, k, l] for k = 0, 1, 2, 3
    shifts = torch.arange(0, 8, 2, dtype=torch.int16).reshape(1, 1, 4, 1)
    high = (qh >> shifts) & 3  # [N, half, k, l]
    q = (low | (high << 4)).float().sub_(32.0).reshape(num_blocks, 2, 4, 2, 16)
    q.mul_(scales.unsqueeze(-1)).mul_(d.reshape(num_blocks, 1, 1, 1, 1))
    return q.reshape(num_blocks, QK_K)


_KERNELS: dict[GGMLQuantizationType, Callable[[torch.Tensor], torch.Tensor]] = {
    GGMLQuantizationType.F32: _f32,
    GGMLQuantizationType.F16: _f16,
    GGMLQuantizationType.BF16: _bf16,
    GGMLQuantizationType.Q8_0: _q8_0,
    GGMLQuantizationType.Q4_0: _q4_0,
    GGMLQuantizationType.Q4_1: _q4_1,
    GGMLQuantizationType.Q4_K: _q4_k,
    GGMLQuantizationType.Q6_K: _q6_k,
}
