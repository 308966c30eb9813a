"""Effect sizes between a reference sample and a current one (numpy only).

Design note: drift is judged by how large a change is, never by a p-value: with thousands of requests in a
window every test is "significant", and an alert on that fires forever. Each function returns a size with
a fixed meaning that a threshold can be set on once: Cohen's d (difference of means in pooled standard
deviations), a difference of rates, total variation distance between two category mixes, the population
stability index (PSI; 0.1 moderate, 0.2 large by the usual rule of thumb), the Wasserstein distance in
reference standard deviations, and the squared maximum mean discrepancy (MMD²) between embedding sets
under a Gaussian kernel whose width is the median pairwise distance (the usual heuristic).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

PSI_BINS = 10
_EPS = 1e-4
"""Floor on a bin's share in PSI, so an empty bin gives a large but finite term."""
MAX_EFFECT = 100.0
"""Cap on a standardised difference whose reference has no spread at all."""


def cohens_d(reference: Sequence[float], current: Sequence[float]) -> float:
    ref, cur = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    pooled = np.sqrt(
        (ref.var(ddof=1) * (len(ref) - 1) + cur.var(ddof=1) * (len(cur) - 1)) / (len(ref) + len(cur) - 2)
    )
    difference = float(cur.mean() - ref.mean())
    if pooled == 0:
        return 0.0 if difference == 0 else float(np.sign(difference) * MAX_EFFECT)
    return float(np.clip(difference / pooled, -MAX_EFFECT, MAX_EFFECT))


def rate_difference(reference: Sequence[bool], current: Sequence[bool]) -> float:
    return float(np.mean(current) - np.mean(reference))


def total_variation(reference: Sequence[str], current: Sequence[str]) -> float:
    """Half the L1 distance between the two category shares, in [0, 1]."""
    ref, cur = Counter(reference), Counter(current)
    keys = set(ref) | set(cur)
    return 0.5 * sum(abs(ref[k] / len(reference) - cur[k] / len(current)) for k in keys)


def psi(reference: Sequence[float], current: Sequence[float], num_bins: int = PSI_BINS) -> float:
    """Population stability index over the reference's quantile bins."""
    ref, cur = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, num_bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    cur_share = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1) / len(cur)
    ref_share, cur_share = np.maximum(ref_share, _EPS), np.maximum(cur_share, _EPS)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def wasserstein_sd(reference: Sequence[float], current: Sequence[float]) -> float:
    """Earth mover's distance between the two samples, in reference standard deviations."""
    spread = float(np.std(reference))
    distance = wasserstein(reference, current)
    if spread == 0:
        return 0.0 if distance == 0 else MAX_EFFECT
    return min(distance / spread, MAX_EFFECT)


def wasserstein(reference: Sequence[float], current: Sequence[float]) -> float:
    """The 1-D earth mover's distance: the area between the two empirical distribution functions."""
    ref, cur = (
        np.sort(np.asarray(reference, dtype=np.float64)),
        np.sort(np.asarray(current, dtype=np.float64)),
    )
    points = np.concatenate([ref, cur])
    points.sort()
    widths = np.diff(points)
    ref_cdf = np.searchsorted(ref, points[:-1], side="right") / len(ref)
    cur_cdf = np.searchsorted(cur, points[:-1], side="right") / len(cur)
    return float(np.sum(np.abs(ref_cdf - cur_cdf) * widths))


def mmd2(reference: np.ndarray, current: np.ndarray) -> float:
    """Unbiased squared MMD between two sets of vectors ([N, D] and [M, D]) under a Gaussian kernel."""
    both = np.concatenate([reference, current]).astype(np.float64)
    squared = np.sum(both * both, axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * both @ both.T, 0.0)
    median = float(np.median(distances[np.triu_indices(len(both), k=1)]))
    kernel = np.exp(-distances / max(median, 1e-12))
    n = len(reference)
    k_rr, k_cc, k_rc = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    m = len(current)
    within_ref = (k_rr.sum() - np.trace(k_rr)) / (n * (n - 1))
    within_cur = (k_cc.sum() - np.trace(k_cc)) / (m * (m - 1))
    return float(within_ref + within_cur - 2 * k_rc.mean())
