"""PCA of vectors too many to hold in memory: fit on a sample, transform in streamed chunks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class PcaModel:
    mean: np.ndarray  # (D,) float64
    components: np.ndarray  # (d, D) float32, rows are unit principal axes
    explained_variance: np.ndarray  # (d,)
    explained_variance_ratio: np.ndarray  # (d,)
    fitted_on: int

    def transform(self, x: np.ndarray) -> np.ndarray:
        # (x - mean) W = x W - mean W: no centred copy of x (a block of 2048-d rows is half a GB)
        components = self.components.T.astype(np.float32, copy=False)
        return x.astype(np.float32, copy=False) @ components - self.mean.astype(np.float32) @ components

    def save(self, path: Path) -> None:
        np.savez(
            path,
            mean=self.mean,
            components=self.components,
            explained_variance=self.explained_variance,
            explained_variance_ratio=self.explained_variance_ratio,
            fitted_on=self.fitted_on,
        )

    @classmethod
    def load(cls, path: Path) -> "PcaModel":
        z = np.load(path)
        return cls(
            z["mean"], z["components"], z["explained_variance"], z["explained_variance_ratio"], int(z["fitted_on"])
        )


def fit_pca(sample: np.ndarray, n_components: int, chunk: int = 16_384) -> PcaModel:
    """Exact PCA of `sample` (n, D) via the covariance matrix, accumulated chunk by chunk in float64."""
    n, dim = sample.shape
    if n_components > dim:
        raise ValueError(f"cannot keep {n_components} components of {dim}-d vectors")
    if n < 2:
        raise ValueError("PCA needs at least two vectors")
    mean = np.zeros(dim)
    for start in range(0, n, chunk):
        mean += sample[start : start + chunk].astype(np.float64).sum(axis=0)
    mean /= n
    mean32 = mean.astype(np.float32)
    cov = np.zeros((dim, dim))
    for start in range(0, n, chunk):
        centred = sample[start : start + chunk].astype(np.float32) - mean32
        cov += (centred.T @ centred).astype(np.float64)
    cov /= n - 1
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    top = np.argsort(eigenvalues)[::-1][:n_components]
    variance = np.maximum(eigenvalues[top], 0.0)
    components = eigenvectors[:, top].T
    # a deterministic sign: the largest loading of each axis is positive
    signs = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
    components *= np.where(signs == 0, 1, signs)[:, None]
    total = max(float(np.trace(cov)), 1e-12)
    return PcaModel(mean, components.astype(np.float32), variance, variance / total, n)
