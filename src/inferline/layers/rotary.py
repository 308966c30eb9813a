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


class RotaryEmbedding:
    """Applies rotary embeddings to q and k at given positions; the table lives on the model's device."""

    def __init__(
        self, head_dim: int, theta: float, scaling: dict[str, Any] | None, max_positions: int
    ) -> None:
        # Explicit device: the model may be built under a meta-device context, the tables may not.
        inv_freq, attention_factor = rotary_inv_freq(head_dim, theta, scaling, max_positions)
        positions = torch.arange(max_positions, dtype=torch.float64, device="cpu")
        freqs = torch.outer(positions, inv_freq.cpu())
        angles = torch.cat([freqs, freqs], dim=-1)
        self.cos = (angles.cos() * attention_factor).float()  # [max_positions, head_dim]
        self.sin = (angles.sin() * attention_factor).float()

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the tables to the model's device and dtype (called once after loading)."""
        self.cos = self.cos.to(device=device, dtype=dtype)
        self.sin = self.sin.to(device=device, dtype=dtype)

    def __call__(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [T]; q: [T, H, D]; k: [T, KVH, D]
        cos = self.cos[positions].unsqueeze(1)  # [T, 1, D]
        sin = self.sin[positions].unsqueeze(1)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)
