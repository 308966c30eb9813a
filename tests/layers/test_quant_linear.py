"""Quantized linear layers compute what the float layer computes, within their format's error."""

import pytest
import torch
from torch import nn

from inferline.errors import ModelLoadError
from inferline.layers import quant_linear
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
    layer = Int8Linear.quantize(weight, bias, torch.bfloat16)
    assert layer.weight.dtype == torch.int8
    assert _relative_error(layer, weight, bias, rows) < 0.02


@pytest.mark.parametrize("rows", [1, 33])
def test_int4_matches_float_within_four_bit_error(rows: int) -> None:
    weight = torch.randn(64, 256, generator=torch.Generator().manual_seed(2)) * 0.05
    layer = Int4Linear.quantize(weight, None, torch.bfloat16)
    assert _relative_error(layer, weight, None, rows) < 0.1


def test_a_vocabulary_sized_matrix_keeps_32_rows_on_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    # Widening 49152 x 576 weights costs more than the kernel's per-row work up to ~100 rows.
    weight = torch.randn(16384, 512, generator=torch.Generator().manual_seed(4)) * 0.05
    layer = Int8Linear.quantize(weight, None, torch.bfloat16)
    small = Int8Linear.quantize(weight[:96, :128], None, torch.bfloat16)
    assert layer.max_kernel_rows == quant_linear.LARGE_WEIGHT_KERNEL_ROWS
    assert small.max_kernel_rows == SMALL_BATCH_ROWS
    if not quant_linear.load_cpu_kernels():
        pytest.skip("the C++ kernels are not built here")
    widened: list[int] = []
    monkeypatch.setattr(Int8Linear, "dequantized", lambda self, dtype: widened.append(1) or torch.zeros(0))
    assert _relative_error(layer, weight, None, 32) < 0.02
    assert widened == [], "32 rows of a large matrix went through the widened GEMM"


def test_int4_keeps_weights_that_already_lie_on_a_four_bit_grid() -> None:
    # GGUF Q4 checkpoints hold 16 levels per block of 32: re-quantizing them must lose (almost) nothing.
    levels = torch.randint(0, 16, (64, 128), generator=torch.Generator().manual_seed(3)).float()
    levels[:, ::32] = 0  # every group spans the full 0..15 range, as a Q4 block does
    levels[:, 1::32] = 15
    weight = levels * 0.01 - 0.07
    assert _relative_error(Int4Linear.quantize(weight, None, torch.bfloat16), weight, None, 4) < 0.01


def test_quantize_linears_replaces_every_linear() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 64, bias=False)))
    quantize_linears(model, "int8", torch.bfloat16)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == 2
    assert model(torch.randn(3, 64).bfloat16()).shape == (3, 64)


def test_int4_keeps_the_vocabulary_projection_in_int8() -> None:
    model = nn.Module()
    model.proj = nn.Linear(64, 64)
    model.lm_head = nn.Linear(64, 128, bias=False)
    quantize_linears(model, "int4", torch.bfloat16)
    assert isinstance(model.proj, Int4Linear)
    assert isinstance(model.lm_head, Int8Linear)


@pytest.mark.parametrize("layer_type", [Int4Linear, Int8Linear])
@pytest.mark.parametrize("rows", [1, 5, SMALL_BATCH_ROWS])
@pytest.mark.parametrize("in_features", [192, 160, 224])  # groups of 32: 4 + 2, 4 + 1, 4 + 3 (the tails)
def test_kernels_match_their_dense_weights_up_to_activation_rounding(
    layer_type: type[nn.Module], rows: int, in_features: int
) -> None:
    # The kernels quantize activations per group of 32 to int8; the dense path multiplies exactly. The
    # last one to three groups of a row (past the last four) are read with masks.
    weight = torch.randn(80, in_features, generator=torch.Generator().manual_seed(4)) * 0.05
    layer = layer_type.quantize(weight, torch.randn(80), torch.bfloat16)  # type: ignore[attr-defined]
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(5)).bfloat16()
    dense = x.float() @ layer.dequantized(torch.float32).t() + layer.bias.float()  # type: ignore[operator]
    got = layer(x).float()
    assert ((got - dense).norm() / dense.norm()).item() < 0.01


@pytest.mark.parametrize("layer_type", [Int4Linear, Int8Linear])
def test_a_row_comes_out_the_same_to_the_bit_alone_or_in_a_batch(layer_type: type[nn.Module]) -> None:
    # Seeded sampling must not depend on what else is in the batch, so neither may the logits. Float32
    # activations and outputs: bfloat16 would round away most differences in the sums' last bits.
    weight = torch.randn(96, 192, generator=torch.Generator().manual_seed(9)) * 0.05
    layer = layer_type.quantize(weight, None, torch.float32)  # type: ignore[attr-defined]
    x = torch.randn(SMALL_BATCH_ROWS, 192, generator=torch.Generator().manual_seed(10))
    alone = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])
    for rows in (2, 5, 16, SMALL_BATCH_ROWS):
        assert torch.equal(layer(x[:rows]), alone[:rows]), f"rows of a batch of {rows} differ from alone"


def test_int4_dequantizes_the_same_with_and_without_the_cpp_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    weight = torch.randn(48, 96, generator=torch.Generator().manual_seed(6))
    layer = Int4Linear.quantize(weight, None, torch.bfloat16)
    with_kernels = layer.dequantized(torch.float32)
    monkeypatch.setattr(quant_linear, "load_cpu_kernels", lambda: False)
    torch.testing.assert_close(layer.dequantized(torch.float32), with_kernels, atol=1e-6, rtol=1e-6)
    x = torch.randn(3, 96).bfloat16()
    torch.testing.assert_close(layer(x).float(), x.float() @ with_kernels.t(), atol=0.05, rtol=0.02)


def test_layers_whose_inputs_do_not_fill_groups_of_32_are_refused_by_name() -> None:
    model = nn.Sequential(nn.Linear(40, 32))
    with pytest.raises(ModelLoadError, match=r"quantization 'int8'.*0 has 40 inputs.*quantization: none"):
        quantize_linears(model, "int8", torch.bfloat16)
