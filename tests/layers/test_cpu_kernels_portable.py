"""The int4/int8 kernels' portable path (CPUs without AVX-512 VNNI, ARM edge boxes) computes what the
vectorised one does. This machine has VNNI, so the kernels are built again here for a plain x86-64-v3
target, in a process of their own (one process can hold only one build of the library)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from inferline.layers.cpu_kernels import load_cpu_kernels

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from torch.utils import cpp_extension
    from inferline.layers import cpu_kernels, quant_linear

    cpp_extension.load(
        name="inferline_cpu_kernels_portable", sources=[str(cpu_kernels.SOURCE)],
        extra_cflags=["-O2", "-march=x86-64-v3", "-fopenmp"], extra_ldflags=["-fopenmp"],
        build_directory=sys.argv[1], is_python_module=False,
    )
    quant_linear.load_cpu_kernels = lambda: False  # the layers' own PyTorch path is the reference
    generator = torch.Generator().manual_seed(0)
    for layer_type in (quant_linear.Int4Linear, quant_linear.Int8Linear):
        layer = layer_type(torch.randn(96, 160, generator=generator) * 0.05, None, torch.bfloat16)
        x = torch.randn(6, 160, generator=generator).bfloat16()
        dense = x.float() @ layer.dequantized(torch.float32).t()
        if layer_type is quant_linear.Int4Linear:
            got = torch.ops.inferline_cpu.int4_linear(x, layer.codes, layer.scales_and_mins)
        else:
            got = torch.ops.inferline_cpu.int8_linear(x, layer.weight, layer.scales)
        error = ((got.float() - dense).norm() / dense.norm()).item()
        print(layer_type.__name__, error)
        assert error < 0.01, (layer_type.__name__, error)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not load_cpu_kernels(), reason="no C++ compiler to build the kernels")
def test_portable_int4_and_int8_kernels_match_the_dense_weights(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Int4Linear" in done.stdout
    assert "Int8Linear" in done.stdout
