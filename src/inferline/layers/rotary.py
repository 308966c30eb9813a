"""Rotary position embeddings (rotate-half layout) with the scaling variants Llama-family models use.

The cos/sin table is computed once for every position up to the context length, so applying it is a
gather by position: no per-step trigonometry.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from inferline.errors import ModelLoadError


def _default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    # Llama 3.1+: long wavelengths are divided by `factor`, short ones kept, the band between blended.
    factor = scaling["factor"]
    low_freq_factor = scaling.get("low_freq_factor", 1.0)
    high_freq_factor = scaling.get("high_freq_factor", 4.0)
    old_context = scaling.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def _yarn_inv_freq(
    head_dim: int, theta: float, scaling: dict[str, Any], max_positions: int
) -> tuple[torch.Tensor, float]:
    # YaRN: interpolate low frequencies, extrapolate high ones, ramp between; scale attention by mscale.
    factor = scaling["factor"]
    original = scaling.get("original_max_position_embeddings", max_positions)
    beta_fast = scaling.get("beta_fast", 32.0)
    beta_slow = scaling.get("beta_slow", 1.0)

    def correction_dim(num_rotations: float) -> float:
        return head_dim * math.log(original / (num_rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64, device="cpu") - low) / (high - low)).clamp(0, 1)
    extrapolation = _default_inv_freq(head_dim, theta)
    interpolation = extrapolation / factor
    extrapolation_weight = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight
    attention_factor = scaling.get("attention_factor") or (
        0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    )
    return inv_freq, attention_factor


def rotary_inv_freq(
    head_dim: int, theta: float, scaling: dict[str, Any] | None, max_positions: int
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim / 2] and the factor cos/sin are multiplied by."""
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    inv_freq = _default_inv_freq(head_dim, theta)
    if scaling is None or rope_type == "default":
        return inv_freq, 1.0
    if rope_type == "linear":
        return inv_freq / scaling["factor"], 1.0
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling), 1.0
    if rope_type == "yarn":
        return _yarn_inv_freq(head_dim, theta, scaling, max_positions)
    raise ModelLoadError(
        f"rope_scaling type {rope_type!r} is not supported; supported: default, linear, llama3, yarn"
    )


RopeTable = tuple[torch.Tensor, torch.Tensor]
"""cos and sign-folded sin for one step's positions, each [T, 1, head_dim]."""


class RotaryEmbedding:
    """Rotary embeddings for q and k at given positions; the tables live on the model's device.

    A step looks its positions up once (`table`) and every layer applies them (`apply`) to its queries
    and keys together: rotate-half is a roll by half the head dimension with the sign folded into the
    sin table, so a layer pays four element-wise kernels, not a dozen.
    """

    def __init__(
        self, head_dim: int, theta: float, scaling: dict[str, Any] | None, max_positions: int
    ) -> None:
        # Explicit device: the model may be built under a meta-device context, the tables may not.
        inv_freq, attention_factor = rotary_inv_freq(head_dim, theta, scaling, max_positions)
        positions = torch.arange(max_positions, dtype=torch.float64, device="cpu")
        freqs = torch.outer(positions, inv_freq.cpu())
        self.cos = (torch.cat([freqs, freqs], dim=-1).cos() * attention_factor).float()  # [P, head_dim]
        sin = freqs.sin() * attention_factor
        self.signed_sin = torch.cat([-sin, sin], dim=-1).float()
        self.half = head_dim // 2

    def to(self, device: torch.device) -> None:
        """Move the tables to the model's device (called once after loading); they stay float32."""
        self.cos = self.cos.to(device=device)
        self.signed_sin = self.signed_sin.to(device=device)

    def table(self, positions: torch.Tensor, dtype: torch.dtype) -> RopeTable:
        """cos and signed sin for these positions ([T] -> two [T, 1, D]) in the dtype of q and k."""
        return (
            self.cos[positions].unsqueeze(1).to(dtype),
            self.signed_sin[positions].unsqueeze(1).to(dtype),
        )

    def apply(self, x: torch.Tensor, table: RopeTable) -> torch.Tensor:
        # x: [T, heads, D] (queries and key heads side by side) -> rotated copy
        cos, signed_sin = table
        return x * cos + torch.roll(x, self.half, dims=-1) * signed_sin
