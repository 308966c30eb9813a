"""The int4/int8 kernels' other paths compute what the AVX-512 VNNI one does. This machine has VNNI, so
the kernels are built again here, with the engine's flags, for x86-64-v3 (AVX2, FMA, F16C: the AVX2 path)
and x86-64-v2 (no AVX2: the scalar loop, as on ARM edge boxes), each in a process of its own (one process
can hold only one build of the library). The builds go to the engine's build cache, where
benchmarks/cpu_kernels_isa.py's smoke run leaves the same two: only the first of them compiles."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from inferline.layers.cpu_kernels import load_cpu_kernels

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from inferline.layers import cpu_kernels, quant_linear

    march, outputs = sys.argv[1:]
    torch.ops.load_library(str(cpu_kernels.build_cpu_kernels(march)))
    quant_linear.load_cpu_kernels = lambda: False  # the layers' own PyTorch path is the reference
    generator = torch.Generator().manual_seed(0)
    got_float32 = {}
    for layer_type in (quant_linear.Int4Linear, quant_linear.Int8Linear):
        # K = 160: five blocks, so the int4 kernel's two-block loop leaves one to the scalar loop.
        layer = layer_type.quantize(torch.randn(96, 160, generator=generator) * 0.05, None, torch.bfloat16)
        x = torch.randn(6, 160, generator=generator)
        if layer_type is quant_linear.Int4Linear:
            run = lambda x: torch.ops.inferline_cpu.int4_linear(x, layer.codes, layer.scales_and_mins)
        else:
            run = lambda x: torch.ops.inferline_cpu.int8_linear(x, layer.weight, layer.scales)
        dense = x.bfloat16().float() @ layer.dequantized(torch.float32).t()
        error = ((run(x.bfloat16()).float() - dense).norm() / dense.norm()).item()
        print(layer_type.__name__, error)
        assert error < 0.01, (layer_type.__name__, error)
        got_float32[layer_type.__name__] = run(x)
    torch.save(got_float32, outputs)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not load_cpu_kernels(), reason="no C++ compiler to build the kernels")
def test_avx2_and_scalar_int4_and_int8_kernels_match_the_dense_weights_and_each_other(tmp_path: Path) -> None:
    builds = {}
    for march in ("x86-64-v3", "x86-64-v2"):  # both compile at once, unless cached: the time is theirs
        builds[march] = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, march, str(tmp_path / f"{march}.pt")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for march, process in builds.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{march}:\n{out}{err}"
        assert "Int4Linear" in out
        assert "Int8Linear" in out
    avx2 = torch.load(tmp_path / "x86-64-v3.pt")
    scalar = torch.load(tmp_path / "x86-64-v2.pt")
    for name in ("Int4Linear", "Int8Linear"):
        # The integer block sums are exact on both paths; only the order the blocks' float terms are
        # added in differs (eight lanes summed at the end against one running total), a few float32 ulps.
        torch.testing.assert_close(avx2[name], scalar[name], rtol=1e-5, atol=1e-6, msg=name)
