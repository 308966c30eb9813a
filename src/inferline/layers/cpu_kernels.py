"""The engine's C++ CPU kernels (csrc/cpu_kernels.cpp): the int4 matmul and the decode step.

They are compiled with the machine's C++ compiler (through torch.utils.cpp_extension and ninja) into
torch's extension cache (~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR), with -march=native so
the int4/int8 kernels use AVX-512 VNNI where the CPU has it (AVX2 where it has only that): once per
machine and source version, about 10 s on 2 cores, done by `scripts/install.sh`. Where they cannot be
built the engine runs PyTorch ops instead (int4 weights then dequantize for every matmul: correct,
several times slower), and the log says why.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cpp"

# -fopenmp: at::parallel_for is OpenMP inlined into the caller; the library links against the libgomp
# that torch has already loaded (same soname), so both share one thread pool.
_CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fopenmp"]


def cflags(march: str = "native") -> list[str]:
    """The engine's flags with the target `march` (another one builds the kernels' other paths)."""
    return [f"-march={march}" if flag.startswith("-march=") else flag for flag in _CFLAGS]


def build_directory(march: str = "native") -> Path:
    """One folder per source, flags, torch version and CPU: a cached build is reused only as built."""
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(
        " ".join([*cflags(march), torch.__version__, torch.backends.cpu.get_cpu_capability()]).encode()
    )
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    return root / f"inferline_cpu_kernels_{key.hexdigest()[:16]}"


def build_cpu_kernels(march: str = "native") -> Path:
    """The kernels' library for `march`, compiled first unless this machine has a build of it. A build
    loads the library into this process, and one process can hold only one build of it."""
    directory = build_directory(march)
    library = directory / f"{directory.name}.so"
    if library.is_file():
        return library
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # the ninja package's binary, when its venv is not activated
        import ninja

        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
    directory.mkdir(parents=True, exist_ok=True)
    logger.info("compiling the C++ CPU kernels for -march=%s into %s (once per machine)", march, directory)
    cpp_extension.load(
        name=directory.name,
        sources=[str(SOURCE)],
        extra_cflags=cflags(march),
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        is_python_module=False,
    )
    return library


@functools.cache
def load_cpu_kernels() -> bool:
    """Load the kernels, compiling them first if this machine has no build of this source yet.

    False, with a warning, when it cannot be built. A cached build loads in milliseconds: without the
    cpp_extension machinery, which alone takes a second to import.
    """
    directory = build_directory()
    try:
        if (directory / f"{directory.name}.so").is_file():
            torch.ops.load_library(str(directory / f"{directory.name}.so"))
        else:
            build_cpu_kernels()
    except Exception as error:  # no compiler, no ninja, a read-only cache: run the eager path instead
        logger.warning("the C++ CPU kernels could not be built (%s); running PyTorch ops instead", error)
        return False
    return True
