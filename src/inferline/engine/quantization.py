"""What `quantization: auto` means for a model on a device, and why: the choice the start-up log and
`GET /v1/models/{id}` report.

A GGUF file was quantized by someone who chose its size; running it in float32 throws that away
and reads 4-8x the bytes per token. So a GGUF keeps its own format where a kernel runs it (Q4_0 and
Q4_1 as int4, Q8_0 as int8, byte for byte), and other block types go to the nearest kernel format.
A Hugging Face folder is float by its author's choice: it stays float unless asked, or unless its
config.json names the quantization it is meant to be served in (SERVE_QUANTIZATION_KEY; `inferline
finetune` writes int8, the mode in which a short fine-tune's answers were measured to survive). CUDA
computes in bfloat16 (the int4/int8 kernels are CPU-only).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from inferline.errors import ModelLoadError
from inferline.layers.quant_linear import QuantizationMode
from inferline.models.block_weights import KEPT_AS
from inferline.models.store import ModelSource

QuantizationSetting = Literal["auto", "none", "int8", "int4"]
SERVE_QUANTIZATION_KEY = "inferline_serve_quantization"
"""A Hugging Face folder's config.json field: the mode `quantization: auto` serves it in on the CPU."""
_MODES: tuple[QuantizationMode, ...] = ("none", "int8", "int4")

_FLOAT_TYPES = frozenset({GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16})
_INT4_BITS_AT_MOST = 4.5
"""Block types of up to 4.5 bits per weight (Q2_K..Q4_K, IQ4) are nearest to int4 (4.5 bits with its
scale and minimum); wider ones (Q5_*, Q6_K) are nearest to int8, which loses nothing they hold."""


@dataclass(frozen=True)
class QuantizationChoice:
    mode: QuantizationMode
    reason: str
    """One sentence a user reads in the log and the model card: why this mode."""


def choose_quantization(
    setting: QuantizationSetting, dtype: str, source: ModelSource, device: torch.device
) -> QuantizationChoice:
    """Resolve the configured `quantization` for this model and device."""
    if setting != "auto":
        return QuantizationChoice(setting, "asked for in the engine config")
    if device.type != "cpu":
        return QuantizationChoice("none", f"on {device.type}: the int4/int8 kernels are CPU-only")
    if dtype not in ("auto", "bfloat16"):
        return QuantizationChoice(
            "none", f"dtype {dtype} was asked for; the int4/int8 kernels compute in bfloat16"
        )
    if source.kind != "gguf":
        stated = stated_quantization(source)
        if stated is not None:
            return QuantizationChoice(
                stated, f"the folder's config.json asks for {stated} ({SERVE_QUANTIZATION_KEY})"
            )
        return QuantizationChoice(
            "none",
            "a Hugging Face folder stays float on the CPU; set quantization: int8 or int4 to quantize it",
        )
    stored = dominant_linear_type(source)
    if stored is None or stored in _FLOAT_TYPES:
        return QuantizationChoice("none", f"the GGUF stores its linear layers as {_name(stored)}: kept float")
    kept = KEPT_AS.get(stored)
    if kept is not None:
        return QuantizationChoice(
            kept,
            f"the GGUF stores its linear layers as {stored.name}, which the {kept} kernels run as they are",
        )
    nearest: QuantizationMode = "int4" if _bits_per_weight(stored) <= _INT4_BITS_AT_MOST else "int8"
    return QuantizationChoice(
        nearest,
        f"the GGUF stores its linear layers as {stored.name}, which has no kernel; {nearest} is the nearest "
        "kernel format (re-quantized at load)",
    )


def stated_quantization(source: ModelSource) -> QuantizationMode | None:
    """The mode a Hugging Face folder's config.json names under SERVE_QUANTIZATION_KEY, if any."""
    config_path = source.path / "config.json"
    if not config_path.is_file():
        return None
    stated = json.loads(config_path.read_text()).get(SERVE_QUANTIZATION_KEY)
    if stated is None:
        return None
    for mode in _MODES:
        if stated == mode:
            return mode
    raise ModelLoadError(
        f"{config_path}: {SERVE_QUANTIZATION_KEY} is {stated!r}; use one of {', '.join(_MODES)} or remove it"
    )


def dominant_linear_type(source: ModelSource) -> GGMLQuantizationType | None:
    """The block type holding most of the GGUF's matrix weights (the embedding table aside)."""
    weights: Counter[GGMLQuantizationType] = Counter()
    for tensor in source.gguf.tensors.values():
        if len(tensor.shape) == 2 and tensor.name != "token_embd.weight":
            weights[tensor.ggml_type] += math.prod(tensor.shape)
    return weights.most_common(1)[0][0] if weights else None


def _bits_per_weight(ggml_type: GGMLQuantizationType) -> float:
    values, block_bytes = GGML_QUANT_SIZES[ggml_type]
    return 8 * block_bytes / values


def _name(ggml_type: GGMLQuantizationType | None) -> str:
    return "nothing" if ggml_type is None else ggml_type.name
