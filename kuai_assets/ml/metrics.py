"""Evaluation metrics, written out so they stream and need no extra dependency."""

from __future__ import annotations

import numpy as np


def roc_auc(label: np.ndarray, score: np.ndarray) -> float:
    """Global ROC AUC (the competition's metric), with ties in `score` counted as one half.

    Mann-Whitney U computed from average ranks; O(n log n) and exact.
    """
    label = np.asarray(label).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    if label.shape != score.shape:
        raise ValueError(f"label and score differ in shape: {label.shape} vs {score.shape}")
    n_pos = int(label.sum())
    n_neg = len(label) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both clicked and unclicked rows")
    order = np.argsort(score, kind="mergesort")
    sorted_score = score[order]
    # average rank of each run of tied scores (ranks start at 1)
    run_start = np.concatenate([[True], sorted_score[1:] != sorted_score[:-1]])
    run_id = np.cumsum(run_start) - 1
    first = np.flatnonzero(run_start)
    last = np.concatenate([first[1:], [len(score)]]) - 1
    average_rank = (first + last) / 2.0 + 1.0
    rank_sum = average_rank[run_id][label[order]].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(label: np.ndarray, score: np.ndarray, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at up to `points` thresholds (for plotting)."""
    label = np.asarray(label).astype(bool)
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")
    hits = label[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    keep = np.unique(np.linspace(0, len(hits) - 1, points).astype(np.int64))
    tpr = np.concatenate([[0.0], tp[keep] / max(tp[-1], 1)])
    fpr = np.concatenate([[0.0], fp[keep] / max(fp[-1], 1)])
    return fpr, tpr


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts of every (label in a, label in b) pair that occurs (labels are any integers)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"two labellings of the same items are needed, got shapes {a.shape} and {b.shape}")
    _, a_code = np.unique(a, return_inverse=True)
    _, b_code = np.unique(b, return_inverse=True)
    width = int(b_code.max()) + 1 if len(b_code) else 1
    pair, counts = np.unique(a_code.astype(np.int64) * width + b_code, return_counts=True)
    return np.stack([pair // width, pair % width, counts], axis=1)


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two clusterings of the same items (Hubert and Arabie, 1985): 1 when
    they group the items alike (whatever the labels' names), about 0 for unrelated groupings."""
    cells = _contingency(a, b)
    n = len(a)

    def pairs(counts: np.ndarray) -> float:
        counts = counts.astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    together = pairs(cells[:, 2])
    in_a = pairs(np.bincount(cells[:, 0], weights=cells[:, 2]))
    in_b = pairs(np.bincount(cells[:, 1], weights=cells[:, 2]))
    expected = in_a * in_b / (n * (n - 1) / 2) if n > 1 else 0.0
    most = (in_a + in_b) / 2
    if most == expected:  # both put every item alone, or every item together
        return 1.0
    return (together - expected) / (most - expected)


def matched_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of items whose cluster in `b` is the one that most of their cluster in `a` went to."""
    cells = _contingency(a, b)
    if len(cells) == 0:
        return 1.0
    order = np.lexsort((-cells[:, 2], cells[:, 0]))
    first = np.concatenate([[True], np.diff(cells[order, 0]) != 0])
    return float(cells[order][first, 2].sum() / len(a))
