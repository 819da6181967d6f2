"""The projection and the cluster assignment as a map on a Dask cluster, over partitions of the
zip members (or of an unzipped folder's files).

Given the fitted PCA and KMeans centres (fitted as the local stage fits them, on the fitting
sample), each task opens the released source itself (it must be on storage the workers share:
NFS, or a mounted object store), reads its range of members in file order, checks and rounds
them to the store's encoding (sources.CheckAndRound, as the local pass does), projects them and
assigns every k. The driver receives each partition's ids, reduced vectors and labels, in member
order, and writes pca_visual_features and video_clusters exactly as the local pass does (same
rows, same order, same writers). What travels is 4 x d bytes per vector back (256 bytes at 64
dimensions) instead of the 2048-d vector (8 kB) to the driver.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kuai_assets.formats.layout import VisualSource
from kuai_assets.ml.kmeans import KMeansModel
from kuai_assets.ml.pca import PcaModel
from kuai_assets.visual.projection import Progress, ReducedWriter, write_clusters
from kuai_assets.visual.sources import Released
from kuai_assets.visual.store import SPLIT_CODES

DEFAULT_PARTITION_VECTORS = 100_000


@dataclass(frozen=True)
class Partition:
    """Members [first, last) of one split's source, in the reader's (file) order."""

    split: str
    source: VisualSource
    first: int
    last: int


def partitions(source: Released, vectors: int = DEFAULT_PARTITION_VECTORS) -> list[Partition]:
    """Every split's members cut into runs of at most `vectors`, in pass order (train, then test)."""
    if vectors < 1:
        raise ValueError(f"a partition holds at least one vector, got {vectors}")
    out = []
    for split, reader in source.readers.items():
        for first in range(0, len(reader), vectors):
            out.append(Partition(split, source.sources[split], first, min(first + vectors, len(reader))))
    return out


def project_partition(
    partition: Partition, pca: PcaModel, centres: dict[int, np.ndarray], encoding: str
) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """On a worker: (photo_id, reduced vectors, {k: cluster}) of the partition's members.

    Bad vectors are refused (DataFormatError naming the file and the photo) as in the local pass."""
    from threadpoolctl import threadpool_limits

    from kuai_assets.formats.visual import CHUNK_VECTORS, open_vectors
    from kuai_assets.ml.kmeans import nearest
    from kuai_assets.visual.sources import CheckAndRound

    reader = open_vectors(partition.source)
    prepare = CheckAndRound(partition.source.path, encoding, None)
    ids, reduced = [], []
    with threadpool_limits(limits=1, user_api="blas"):  # one task per worker thread
        for chunk in reader.chunks(CHUNK_VECTORS, ranges=[(partition.first, partition.last)], prepare=prepare):
            ids.append(np.array(chunk.photo_id, dtype=np.int64))
            reduced.append(pca.transform(chunk.vectors))
        matrix = np.concatenate(reduced) if reduced else np.empty((0, len(pca.components)), np.float32)
        labels = {k: nearest(matrix, c)[0] for k, c in centres.items()}
    return (np.concatenate(ids) if ids else np.empty(0, np.int64)), matrix, labels


def _project_shared(partition: Partition, shared: tuple, encoding: str):
    pca, centres = shared
    return project_partition(partition, pca, centres, encoding)


def project_on_dask(
    source: Released,
    pca: PcaModel,
    models: dict[int, KMeansModel],
    encoding: str,
    scheduler: str,
    pca_out: Path,
    clusters_out: Path | None,
    partition_vectors: int = DEFAULT_PARTITION_VECTORS,
    progress: Progress = lambda message: None,
) -> dict:
    """Write pca_visual_features (and, with `clusters_out`, video_clusters) from a map over the
    source's partitions on the Dask scheduler at `scheduler` (checked within a bounded time).

    Returns {"clusters": {k: (model, photos per cluster)}} when clusters were written, and
    "partitions", "workers", "seconds"."""
    from distributed import Client

    from kuai_assets.ml.dask_training import check_scheduler

    check_scheduler(scheduler)
    parts = partitions(source, partition_vectors)
    centres = {k: model.centers for k, model in models.items()} if clusters_out is not None else {}
    started = time.time()
    total = source.total
    photo_id = np.empty(total, dtype=np.int64)
    labels = {k: np.empty(total, dtype=np.int32) for k in centres}
    writer = ReducedWriter(pca_out, len(pca.components))
    row = 0
    try:
        with Client(scheduler, timeout=30) as client:
            workers = len(client.scheduler_info().get("workers", {}))
            progress(
                f"visual map: {total:,} vectors in {len(parts)} partition(s) of at most {partition_vectors:,} "
                f"on {workers} Dask worker(s) at {scheduler}"
            )
            [shared] = client.scatter([(pca, centres)], broadcast=True)
            futures = [client.submit(_project_shared, part, shared, encoding, pure=False) for part in parts]
            for part, future in zip(parts, futures):  # in pass order, whatever order they finish in
                ids, reduced, part_labels = future.result()
                if len(ids) != part.last - part.first:
                    raise RuntimeError(
                        f"{part.source.path} members {part.first}-{part.last}: the worker read {len(ids)} vectors"
                    )
                n = len(ids)
                photo_id[row : row + n] = ids
                for k in labels:
                    labels[k][row : row + n] = part_labels[k]
                writer.add(ids, np.full(n, SPLIT_CODES[part.split], dtype=np.int8), reduced)
                row += n
                future.release()
    finally:
        writer.close()
    seconds = round(time.time() - started, 1)
    progress(f"visual map: {row:,} vectors projected{' and assigned' if labels else ''} in {seconds} s")
    made: dict = {"partitions": len(parts), "workers": workers, "seconds": seconds}
    if clusters_out is not None:
        made["clusters"] = write_clusters(models, photo_id, labels, clusters_out)
    return made
