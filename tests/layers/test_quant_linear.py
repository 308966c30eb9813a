"""Quantized linear layers compute what the float layer computes, within their format's error."""

import pytest
import torch
from torch import nn

from inferline.layers.quant_linear import SMALL_BATCH_ROWS, Int4Linear, Int8Linear, quantize_linears


def _relative_error(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> float:
    x = torch.randn(rows, weight.shape[1], generator=torch.Generator().manual_seed(rows)).bfloat16()
    expected = x.float() @ weight.t() + (0 if bias is None else bias)
    got = layer(x).float()
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("rows", [1, SMALL_BATCH_ROWS, SMALL_BATCH_ROWS + 1, 200])
def test_int8_matches_float_on_both_paths(rows: int) -> None:
    # Few rows take the weight-streaming kernel, many the int8 GEMM with per-row activation scales.
    weight = torch.randn(96, 128, generator=torch.Generator().manual_seed(0)) * 0.05
    bias = torch.randn(96, generator=torch.Generator().manual_seed(1))
    layer = Int8Linear(weight, bias, torch.bfloat16)
    assert layer.weight.dtype == torch.int8
    assert _relative_error(layer, weight, bias, rows) < 0.02


@pytest.mark.parametrize("rows", [1, 33])
def test_int4_matches_float_within_four_bit_error(rows: int) -> None:
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(2)) * 0.05
    layer = Int4Linear(weight, None, torch.bfloat16)
    assert _relative_error(layer, weight, None, rows) < 0.1


def test_int4_keeps_weights_that_already_lie_on_a_four_bit_grid() -> None:
    # GGUF Q4 checkpoints hold 16 levels per block of 32: re-quantizing them must lose (almost) nothing.
    levels = torch.randint(0, 16, (64, 128), generator=torch.Generator().manual_seed(3)).float()
    levels[:, ::32] = 0  # every group spans the full 0..15 range, as a Q4 block does
    levels[:, 1::32] = 15
    weight = levels * 0.01 - 0.07
    assert _relative_error(Int4Linear(weight, None, torch.bfloat16), weight, None, 4) < 0.01


def test_quantize_linears_replaces_every_linear() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 64, bias=False)))
    quantize_linears(model, "int8", torch.bfloat16)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == 2
    assert model(torch.randn(3, 64).bfloat16()).shape == (3, 64)
