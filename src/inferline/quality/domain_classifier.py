"""Embedding drift as a domain classifier's AUC (numpy only).

Design note: train a classifier to tell a reference prompt's embedding from a current one's; if it can, the
prompts changed. The effect size is the cross-validated ROC AUC of that classifier: 0.5 means it cannot
tell the windows apart (no drift), 1.0 that every current prompt is recognisable as new. Unlike the MMD²
it reads as a probability ("a new prompt looks newer than an old one 80% of the time") and so needs no
tuning per embedding model. Every score is out of fold (stratified k-fold), so a classifier that
memorised its training prompts earns nothing. The classifier sees the pooled prompts' top NUM_COMPONENTS
principal directions (found without the labels): a change of topic moves the windows apart along a
direction of large variance in the pooled set, and 32 coordinates instead of MiniLM's 384 make each fit
about 6x cheaper (0.15 s instead of 0.9 s for 200 prompts a side on a loaded core) and overfit less. It is
an L2-regularised logistic regression on z-scored coordinates, fitted by Newton's method. The fold split
is seeded, so the same windows give the same AUC at every scrape.
"""

from __future__ import annotations

import numpy as np

NUM_FOLDS = 5
NUM_COMPONENTS = 32
L2_PENALTY = 1.0
"""On z-scored features; strong enough that a fold with fewer prompts than dimensions does not overfit."""
NEWTON_STEPS = 6
"""The regularised log-loss is smooth and strongly convex: a handful of Newton steps converge."""
SEED = 0


def classifier_auc(reference: np.ndarray, current: np.ndarray) -> float:
    """Out-of-fold ROC AUC of a logistic regression telling `current` rows [M, D] from `reference` [N, D]."""
    features = _principal_coordinates(np.concatenate([reference, current]).astype(np.float64))
    labels = np.concatenate([np.zeros(len(reference)), np.ones(len(current))])
    scores = np.empty(len(labels))
    for fold in _stratified_folds(labels):
        train = np.ones(len(labels), dtype=bool)
        train[fold] = False
        mean, spread = features[train].mean(axis=0), features[train].std(axis=0) + 1e-8
        weights, bias = fit_logistic((features[train] - mean) / spread, labels[train])
        scores[fold] = ((features[fold] - mean) / spread) @ weights + bias
    return roc_auc(labels, scores)


def _principal_coordinates(features: np.ndarray) -> np.ndarray:
    """The rows' coordinates along the top NUM_COMPONENTS principal directions of all of them."""
    centred = features - features.mean(axis=0)
    if centred.shape[1] <= NUM_COMPONENTS:
        return centred
    directions = np.linalg.svd(centred, full_matrices=False)[2][:NUM_COMPONENTS]  # [K, D]
    return centred @ directions.T


def _stratified_folds(labels: np.ndarray) -> list[np.ndarray]:
    rng = np.random.default_rng(SEED)
    num_folds = min(NUM_FOLDS, int(min(np.sum(labels == 0), np.sum(labels == 1))))
    folds: list[list[int]] = [[] for _ in range(num_folds)]
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == label))
        for position, index in enumerate(members):
            folds[position % num_folds].append(int(index))
    return [np.asarray(fold) for fold in folds]


def fit_logistic(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights [D] and bias minimising Σ log-loss + λ/2·|w|² (bias unpenalised), by Newton steps.

    The optimal w lies in the span of the training rows, so with more dimensions than rows the steps run
    on the rows' coordinates in an orthonormal basis Q of that span (|Qβ| = |β|, the same problem, exactly)
    and w = Qβ: each Newton system is min(n, d)+1 wide.
    """
    basis = np.linalg.qr(features.T)[0] if features.shape[1] > len(labels) else None
    reduced = features if basis is None else features @ basis
    design = np.hstack([reduced, np.ones((len(labels), 1))])
    penalty = np.full(design.shape[1], L2_PENALTY)
    penalty[-1] = 0.0
    coefficients = np.zeros(design.shape[1])
    for _ in range(NEWTON_STEPS):
        probs = 0.5 * (1.0 + np.tanh(0.5 * (design @ coefficients)))  # the logistic, without exp overflow
        gradient = design.T @ (probs - labels) + penalty * coefficients
        hessian = (design.T * (probs * (1 - probs))) @ design + np.diag(penalty)
        coefficients -= np.linalg.solve(hessian, gradient)
    weights = coefficients[:-1] if basis is None else basis @ coefficients[:-1]
    return weights, float(coefficients[-1])


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The probability that a positive outscores a negative (Mann-Whitney U over mid-ranks for ties)."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    positives = labels == 1
    num_pos, num_neg = int(positives.sum()), int((~positives).sum())
    return float((ranks[positives].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))
