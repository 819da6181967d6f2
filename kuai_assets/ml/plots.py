"""Figures for MLflow and the Dagster UI (PNG bytes; matplotlib without a display)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def roc_png(fpr, tpr, auc: float, title: str = "ROC on validation rows") -> bytes:
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot(fpr, tpr, lw=2, label=f"AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right")
    return _png(fig)


def bar_png(values: dict[str, float], title: str, xlabel: str, reference: float | None = None) -> bytes:
    names = list(values)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.2))
    ax.barh(names, [values[n] for n in names], color="#4c72b0")
    if reference is not None:
        ax.axvline(reference, color="crimson", ls="--", lw=1)
    ax.set(title=title, xlabel=xlabel)
    return _png(fig)


def line_png(values: list[float], title: str, xlabel: str, ylabel: str, mark: int | None = None) -> bytes:
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(range(1, len(values) + 1), values, lw=1.5)
    if mark:
        ax.axvline(mark, color="crimson", ls="--", lw=1, label=f"best iteration {mark}")
        ax.legend(loc="lower right")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _png(fig)


def histogram_png(values, title: str, xlabel: str, bins: int = 40) -> bytes:
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.hist(values, bins=bins, color="#55a868")
    ax.set(title=title, xlabel=xlabel, ylabel="count")
    return _png(fig)
