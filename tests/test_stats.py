"""The one percentile: hand-worked type-7 figures, NumPy's default method, and the edges."""

import random

import numpy as np
import pytest

from inferline.stats import percentile


def test_percentile_interpolates_linearly_between_closest_ranks() -> None:
    values = [10.0, 20.0, 30.0, 40.0]  # ranks 0..3
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == 25.0  # rank 1.5: halfway between 20 and 30
    assert percentile(values, 99) == pytest.approx(39.7)  # rank 2.97
    assert percentile([40.0, 10.0, 30.0, 20.0], 50) == 25.0  # order does not matter
    assert percentile([7.0], 99) == 7.0


def test_p95_is_interpolated_not_the_nearest_rank() -> None:
    # 1..20: rank 0.95 * 19 = 18.05, 5 % of the way from 19 to 20 (nearest rank would say 19).
    assert percentile([float(i) for i in range(1, 21)], 95) == pytest.approx(19.05)
    # 10 fast answers and 10 slow: rank 18.05 lies among the slow ones.
    assert percentile([0.1] * 10 + [0.5] * 10, 95) == pytest.approx(0.5)
    # 10..100: rank 8.55, between 90 and 100 (nearest rank would say 100).
    assert percentile([10.0 * i for i in range(1, 11)], 95) == pytest.approx(95.5)
    # Two values: rank 0.95, nearly the larger.
    assert percentile([1.0, 3.0], 95) == pytest.approx(2.9)


def test_percentile_matches_numpys_default_method() -> None:
    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 20, 101, 1000):
        values = rng.exponential(size=size).tolist()
        for q in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_presorted_values_give_the_same_figure_without_a_sort() -> None:
    values = [random.Random(3).uniform(0, 1) for _ in range(50)]
    ordered = sorted(values)
    for q in (5, 50, 95):
        assert percentile(ordered, q, presorted=True) == percentile(values, q)
    # presorted trusts the caller: unsorted input is read as given.
    assert percentile([3.0, 1.0, 2.0], 0, presorted=True) == 3.0


def test_ties_and_negative_values() -> None:
    assert percentile([5.0, 5.0, 5.0], 95) == 5.0
    assert percentile([-3.0, -1.0], 50) == -2.0


def test_percentile_refuses_empty_input_and_bad_q() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]; got 101"):
        percentile([1.0], 101)
    with pytest.raises(ValueError, match=r"\[0, 100\]; got -1"):
        percentile([1.0], -1)
