"""PCA of vectors too many to hold in memory: fit on a sample (scikit-learn), transform in streamed chunks."""

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


def fit_pca(sample: np.ndarray, n_components: int) -> PcaModel:
    """Exact PCA of `sample` (n, D): scikit-learn's, through the D x D covariance matrix.

    Axes get a deterministic sign (the largest loading of each axis is positive), so refits on the
    same sample give the same reduced vectors. Fitting is on a sample; `PcaModel.transform` streams
    the rest chunk by chunk.
    """
    from sklearn.decomposition import PCA

    n, dim = sample.shape
    if n_components > dim:
        raise ValueError(f"cannot keep {n_components} components of {dim}-d vectors")
    if n < 2:
        raise ValueError("PCA needs at least two vectors")
    pca = PCA(n_components, svd_solver="covariance_eigh").fit(sample)
    components = pca.components_.astype(np.float64)
    signs = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
    components *= np.where(signs == 0, 1, signs)[:, None]
    return PcaModel(
        pca.mean_.astype(np.float64),
        components.astype(np.float32),
        np.maximum(pca.explained_variance_, 0.0),
        pca.explained_variance_ratio_,
        n,
    )
