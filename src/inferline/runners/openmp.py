"""The OpenMP runtime that PyTorch computes with on the CPU, as seen by the threads of a server.

libgomp keeps a pool of worker threads for every thread that ever started a parallel region, for as long
as that thread lives. Once a process holds more OpenMP threads than cores, every one of them spins only
~100 times at a barrier before it sleeps on a futex, so each of the ~200 parallel regions of an LLM
engine step pays a sleep and a wake-up: on 2 cores a lone stream fell from 181 to 77 tok/s after a
single embedding request had left its thread's pool behind. So the LLM engine's thread is the only one
that keeps a pool (it builds its model too); a thread that computes beside it hands its pool back when
it is done.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

OMP_PAUSE_SOFT = 1
"""omp_pause_soft (OpenMP 5.0): end the pool's threads, keep the runtime."""


@functools.cache
def _pause_resource_all() -> Callable[[int], int] | None:
    try:
        # dlopen by soname finds the libgomp that torch has loaded, not another copy.
        return ctypes.CDLL("libgomp.so.1").omp_pause_resource_all
    except (OSError, AttributeError):
        return None  # another OpenMP runtime, or none: no pool to hand back


def release_thread_pool() -> None:
    """End the calling thread's OpenMP worker threads; its next parallel region starts new ones (tens of
    microseconds, against milliseconds for any forward pass worth running on several threads)."""
    pause = _pause_resource_all()
    if pause is not None:
        pause(OMP_PAUSE_SOFT)
