"""Loads a model for the engine: weights on the chosen device and dtype, its tokenizer, its limits."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from inferline.config import EngineConfig
from inferline.engine.quantization import QuantizationChoice, choose_quantization
from inferline.errors import InvalidRequestError
from inferline.layers.quant_linear import quantize_linears
from inferline.models.config import ModelConfig
from inferline.models.llama import LlamaForCausalLM
from inferline.models.loader import load_source
from inferline.models.store import resolve
from inferline.models.tokenizer import Tokenizer
from inferline.models.weights import build_model

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError(
            f"device {name!r} was asked for but CUDA is not available; use 'cpu'", "device"
        )
    return device


def resolve_dtype(name: str, device: torch.device, quantization: str = "none") -> torch.dtype:
    if quantization != "none":
        # The CPU kernels for int8/int4 weights take bfloat16 activations (float32 runs 20x slower).
        if device.type != "cpu":
            raise InvalidRequestError(
                f"quantization {quantization!r} runs on the CPU only; set quantization: none on {device}",
                "quantization",
            )
        if name not in ("auto", "bfloat16"):
            raise InvalidRequestError(
                f"quantization {quantization!r} computes in bfloat16, not {name}: "
                "set dtype to auto or bfloat16",
                "dtype",
            )
        return torch.bfloat16
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


@dataclass
class LoadedModel:
    name: str
    model: LlamaForCausalLM
    tokenizer: Tokenizer
    config: ModelConfig
    device: torch.device
    dtype: torch.dtype
    quantization: QuantizationChoice
    load_time_s: float

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return frozenset(self.config.eos_token_ids) | frozenset(self.tokenizer.eos_token_ids)


def load_model(config: EngineConfig) -> LoadedModel:
    started = time.perf_counter()
    device = resolve_device(config.device)
    source = resolve(config.model)
    quantization = choose_quantization(config.quantization, config.dtype, source, device)
    dtype = resolve_dtype(config.dtype, device, quantization.mode)
    keep_blocks = None if quantization.mode == "none" else quantization.mode
    weights = load_source(source, keep_blocks)
    model = build_model(weights.config, weights.state_dict, dtype, device)
    quantize_linears(model, quantization.mode, dtype)
    elapsed = time.perf_counter() - started
    logger.info(
        "loaded %s on %s as %s in %.2f s; weights %s: %s",
        config.model,
        device,
        dtype,
        elapsed,
        quantization.mode,
        quantization.reason,
    )
    return LoadedModel(
        name=config.model,
        model=model,
        tokenizer=weights.tokenizer,
        config=weights.config,
        device=device,
        dtype=dtype,
        quantization=quantization,
        load_time_s=elapsed,
    )
