"""The CPU decode step in C++ (csrc/decode_step.cpp): every decoder layer of a small decode batch in
one call.

Run op by op, a decode step of SmolLM2-135M on the CPU spent about half its time outside the weight
kernels: ~45 eager ops per layer, each a few microseconds of dispatch and allocation, and a gather
of every sequence's blocks for attention. The C++ step calls the same weight kernels and does the rest
in plain loops over the batch's rows, reading keys and values in place through the block table.
It takes decode-only batches of up to MAX_ROWS sequences; larger batches and prefills amortise the
dispatch over many rows and stay on the eager path (layers/attention.py), which it matches to
rounding (tests/layers/test_cpu_decode.py).

The extension is compiled with the machine's C++ compiler (through torch.utils.cpp_extension and
ninja) into torch's extension cache (~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR): once per
machine and source version, about 10 s on 2 cores, done by `scripts/install.sh`. Where it cannot be
built the eager path runs, and the log says why.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn

from inferline.layers.attention import AttentionMetadata
from inferline.layers.quant_linear import INT4_GROUP_SIZE, Int4Linear, Int8Linear
from inferline.layers.rotary import RopeTable

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "decode_step.cpp"

MAX_ROWS = 16
"""Largest decode batch the C++ step takes: the int8 kernels' limit too (quant_linear.SMALL_BATCH_ROWS)."""

_WEIGHT_KINDS = {nn.Linear: 0, Int8Linear: 1, Int4Linear: 2}


_CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only"]


def _build_directory() -> Path:
    """One folder per source, flags, torch version and CPU: a cached build is reused only as built."""
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(" ".join([*_CFLAGS, torch.__version__, torch.backends.cpu.get_cpu_capability()]).encode())
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    return root / f"inferline_decode_step_{key.hexdigest()[:16]}"


@functools.cache
def load_decode_kernels() -> bool:
    """Load the C++ step, compiling it first if this machine has no build of this source yet.

    False, with a warning, when it cannot be built. A cached build loads in milliseconds: without the
    cpp_extension machinery, which alone takes a second to import.
    """
    directory = _build_directory()
    library = directory / f"{directory.name}.so"
    try:
        if library.is_file():
            torch.ops.load_library(str(library))
            return True
        from torch.utils import cpp_extension

        if shutil.which("ninja") is None:  # the ninja package's binary, when its venv is not activated
            import ninja

            os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
        directory.mkdir(parents=True, exist_ok=True)
        logger.info("compiling the C++ CPU decode step into %s (once per machine)", directory)
        cpp_extension.load(
            name=directory.name,
            sources=[str(SOURCE)],
            extra_cflags=_CFLAGS,
            build_directory=str(directory),
            is_python_module=False,
        )
    except Exception as error:  # no compiler, no ninja, a read-only cache: run the eager path instead
        logger.warning("the C++ CPU decode step could not be built (%s); decoding with PyTorch ops", error)
        return False
    return True


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
    scales: torch.Tensor = empty
    if isinstance(module, Int4Linear):
        scales = module.scales_and_zeros
    elif isinstance(module, Int8Linear):
        scales = module.scales
    weight = cast(torch.Tensor, module.weight)
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
            # The order of csrc/decode_step.cpp's LayerTensor (projections other than qkv have no bias).
            weights += [layer.input_norm, *qkv, *o[:2], layer.post_norm, *gate_up[:2], *down[:2]]
        if len(kinds) != 1:
            raise ValueError(f"the C++ decode step needs one weight format in all layers, got kinds {kinds}")
        self.weight_kind = kinds.pop()
        self.weights = weights
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.eps = eps

    @staticmethod
    def handles(meta: AttentionMetadata) -> bool:
        return meta.decode is not None and not meta.prefills and meta.decode.num_seqs <= MAX_ROWS

    def __call__(
        self, x: torch.Tensor, rope: RopeTable, kv_caches: list[torch.Tensor], meta: AttentionMetadata
    ) -> torch.Tensor:
        # x: [B, hidden] embeddings of the batch's tokens -> hidden states after the last layer
        decode = meta.decode
        assert decode is not None
        cos, signed_sin = rope
        return torch.ops.inferline_cpu.decode_layers(
            x,
            self.weights,
            self.weight_kind,
            INT4_GROUP_SIZE,
            kv_caches,
            meta.slot_mapping,
            decode.block_tables,
            decode.context_lens,
            cos.view(x.shape[0], -1),
            signed_sin.view(x.shape[0], -1),
            self.num_heads,
            self.num_kv_heads,
            self.eps,
        )
