"""A thread that computes beside the LLM engine hands its OpenMP worker threads back."""

import os
import threading

import pytest
import torch

from inferline.runners.openmp import release_thread_pool

pytestmark = pytest.mark.skipif(torch.get_num_threads() < 2, reason="one torch thread: OpenMP starts no pool")


def threads_in_process() -> int:
    return len(os.listdir("/proc/self/task"))


def run_on_a_thread(release: bool) -> tuple[int, int, int]:
    """Threads in the process before, while and after a fresh thread computed (not counting it)."""
    big = torch.ones(1 << 20)  # past ATen's grain size: the sum runs as an OpenMP parallel region
    counts: list[int] = []

    def compute() -> None:
        counts.append(threads_in_process() - 1)
        assert big.mul(2).sum().item() == 2 << 20
        counts.append(threads_in_process() - 1)
        if release:
            release_thread_pool()
        counts.append(threads_in_process() - 1)

    thread = threading.Thread(target=compute)
    thread.start()
    thread.join()
    return counts[0], counts[1], counts[2]


def test_a_thread_that_releases_its_pool_leaves_no_workers_behind() -> None:
    before, during, after = run_on_a_thread(release=True)
    assert during > before  # the parallel region started a worker pool for this thread
    assert after == before


def test_without_the_release_the_pool_outlives_the_work() -> None:
    before, during, after = run_on_a_thread(release=False)
    assert during > before
    assert after == during
