"""Evaluation metrics: scikit-learn's, with the platform's contracts on their inputs.

scikit-learn is installed with MLflow; these wrappers only fix what the platform promises: a
global AUC with ties counted as one half (the competition's metric), a clear error when a slice
holds one class, and a ROC curve thinned to a plottable number of points.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics


def roc_auc(label: np.ndarray, score: np.ndarray) -> float:
    """Global ROC AUC, ties in `score` counted as one half; refuses a single class."""
    label = np.asarray(label).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    if label.shape != score.shape:
        raise ValueError(f"label and score differ in shape: {label.shape} vs {score.shape}")
    n_pos = int(label.sum())
    if n_pos == 0 or n_pos == len(label):
        raise ValueError("AUC needs both clicked and unclicked rows")
    return float(metrics.roc_auc_score(label, score))


def roc_curve(label: np.ndarray, score: np.ndarray, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at up to `points` thresholds (for plotting), from (0, 0) to (1, 1)."""
    fpr, tpr, _ = metrics.roc_curve(np.asarray(label).astype(bool), np.asarray(score, dtype=np.float64))
    keep = np.unique(np.linspace(0, len(fpr) - 1, points).astype(np.int64))
    return fpr[keep], tpr[keep]


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two clusterings of the same items: 1 when they group the items alike
    (whatever the labels' names), about 0 for unrelated groupings."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"two labellings of the same items are needed, got shapes {a.shape} and {b.shape}")
    return float(metrics.adjusted_rand_score(a, b))


def matched_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of items whose cluster in `b` is the one that most of their cluster in `a` went to."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"two labellings of the same items are needed, got shapes {a.shape} and {b.shape}")
    if len(a) == 0:
        return 1.0
    table = metrics.cluster.contingency_matrix(a, b, sparse=True)
    return float(table.max(axis=1).sum() / len(a))
