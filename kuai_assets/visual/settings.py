"""What the visual stage keeps and fits (defs.visual.VisualConfig holds the same fields)."""

from __future__ import annotations

from dataclasses import dataclass


class VisualSettingsError(ValueError):
    """A visual-stage setting that cannot work (with this data): names the setting and why."""


@dataclass
class VisualSettings:
    encoding: str = "bfloat16"  # how the store keeps each value: see codec.ENCODINGS
    dimensions: int = 64  # principal components kept
    fit_sample: int = 50_000  # rows the PCA is fitted on
    ks: tuple[int, ...] = (100, 500)  # numbers of clusters
    sample_fraction: float = 0.1
    max_sample_per_cluster: int = 256
    seed: int = 0  # of the fitting sample and of k-means++
    run_length: int = 32  # consecutive rows per run of the fitting sample
    # where the projection and the cluster assignment run: "local" (in the one pass) or "dask"
    # (a map over partitions of the released members on the scheduler at dask_scheduler;
    # see visual/distributed.py)
    projection: str = "local"
    dask_scheduler: str = ""
    partition_vectors: int = 100_000  # released members per task of the map

    def cluster_sample_size(self, k: int, total: int) -> int:
        """KMeans at k fits on `sample_fraction` of the photos, at least 50 and at most
        `max_sample_per_cluster` per cluster, at most a million: beyond a few hundred points per
        centre the fit only costs time."""
        wanted = min(self.sample_fraction * total, self.max_sample_per_cluster * k)
        return int(min(total, max(wanted, 50 * k), 1_000_000))
