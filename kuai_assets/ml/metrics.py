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
