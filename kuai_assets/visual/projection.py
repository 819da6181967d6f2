"""Projection onto the PCA axes, cluster assignment, and the tables they make.

In the pass, chunks reach the projection worker in row order as `ChunkToProject` (already
projected by a read thread, or to be projected here); `Projection` writes each chunk's rows of
pca_visual_features and hands its reduced vectors to `Assignment`, which assigns clusters once
the KMeans fits are there (catching up on the rows before at once).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kuai_assets.ml.kmeans import KMeansModel
from kuai_assets.ml.pca import PcaModel
from kuai_assets.visual.codec import decode
from kuai_assets.visual.store import SPLIT_NAMES

Progress = Callable[[str], None]


class EarlyProjection:
    """On the read threads: a chunk's float32 values projected on the PCA axes once the PCA fit
    (`pca`, a future) has ended well; None before that or if it failed (the projection worker
    then projects the chunk, or the pass raises the fit's error)."""

    def __init__(self, pca: Future):
        self.pca = pca

    def __call__(self, values: np.ndarray) -> np.ndarray | None:
        if not self.pca.done() or self.pca.exception() is not None:
            return None
        return self.pca.result().transform(values)


@dataclass
class ChunkToProject:
    """Rows [start, start + n) of the pass on their way to the projection worker: either their
    projection (`reduced`), or their values (float32, or as stored when `encoded`) to project.
    `buffer` (optional) holds the same values as float32 in a reader's buffer, which the reader
    reuses: it may be read only by the thread that made the chunk, before handing it on (see
    `project_now`). None of the other arrays is a reader's buffer: the worker may hold them as
    long as it needs."""

    start: int
    values: np.ndarray | None = None
    encoded: bool = False
    reduced: np.ndarray | None = None
    buffer: np.ndarray | None = None

    def project_now(self, model: PcaModel) -> None:
        """Project on this thread from the float32 `buffer` (saves the worker the decoding)."""
        if self.reduced is None:
            self.reduced = model.transform(self.buffer if self.buffer is not None else self.values)
        self.values = None

    def __len__(self) -> int:
        return len(self.reduced if self.reduced is not None else self.values)

    @property
    def nbytes(self) -> int:
        return (self.reduced if self.reduced is not None else self.values).nbytes

    def project(self, model: PcaModel, encoding: str) -> np.ndarray:
        if self.reduced is not None:
            return self.reduced
        return model.transform(decode(self.values, encoding) if self.encoded else self.values)


class Assignment:
    """Every row's cluster at every k, from the reduced vectors given in row order (`add`).

    Until the KMeans fits (`fits`, a future of {k: KMeansModel}) have ended, the reduced vectors
    are only kept (N x d float32: 1.2 GB at 4.85M photos, 64 dimensions); `catch_up` (called
    between chunks) then assigns the rows given so far at once, and each chunk after as it comes.
    `finish` waits for the fits if need be, assigns the rest and returns ({k: labels}, models).
    """

    def __init__(self, fits: Future, total: int, dimensions: int, ks: list[int], progress: Progress):
        self.fits, self.progress = fits, progress
        self.reduced = np.empty((total, dimensions), dtype=np.float32)
        self.labels = {k: np.empty(total, dtype=np.int32) for k in ks}
        self.models: dict[int, KMeansModel] | None = None
        self.given = 0  # rows given so far
        self.assigned = 0  # rows assigned so far

    def add(self, start: int, reduced: np.ndarray) -> None:
        if start != self.given:
            raise ValueError(f"rows must come in order: expected row {self.given:,}, got {start:,}")
        end = start + len(reduced)
        self.reduced[start:end] = reduced
        self.given = end
        if self.models is not None:
            self._assign_up_to(end)

    def catch_up(self) -> None:
        """If the fits have just ended (and raised nothing): assign every row given so far."""
        if self.models is None and self.fits.done():
            self.models = self.fits.result()
            self.progress(f"video_clusters: assigning from row {self.given:,} on (and the {self.given:,} before it now)")
            self._assign_up_to(self.given)

    def finish(self) -> tuple[dict[int, np.ndarray], dict[int, KMeansModel]]:
        if self.models is None:
            self.models = self.fits.result()
        self._assign_up_to(self.given)
        self.progress(f"video_clusters: every photo assigned at k={', '.join(map(str, self.models))}")
        return self.labels, self.models

    def _assign_up_to(self, end: int) -> None:
        for k, model in self.models.items():
            self.labels[k][self.assigned : end] = model.assign(self.reduced[self.assigned : end])
        self.assigned = end


class Projection:
    """The projection worker's work on each chunk, in row order: project it (unless a read thread
    did), write its table rows, hand its reduced vectors to the assignment (if any).

    `photo_id` and `split_code` are the pass's arrays of every row, filled before a chunk is
    handed on. The PCA (`pca`, a future) has ended well before the first chunk is handed on.
    """

    def __init__(
        self,
        pca: Future,
        encoding: str,
        writer: "ReducedWriter",
        photo_id: np.ndarray,
        split_code: np.ndarray,
        assignment: Assignment | None,
    ):
        self.pca, self.encoding, self.writer = pca, encoding, writer
        self.photo_id, self.split_code, self.assignment = photo_id, split_code, assignment
        self.end = 0  # rows projected so far

    def __call__(self, chunk: ChunkToProject) -> None:
        if self.assignment is not None:
            self.assignment.catch_up()
        reduced = chunk.project(self.pca.result(), self.encoding)
        end = chunk.start + len(reduced)
        self.writer.add(self.photo_id[chunk.start : end], self.split_code[chunk.start : end], reduced)
        if self.assignment is not None:
            self.assignment.add(chunk.start, reduced)
        self.end = end


class ReducedWriter:
    """pca_visual_features' Parquet (photo_id, split, pc_00...), in row groups of about ROWS
    photos, encoded on a second thread (at most one table waits). `add` copies ids and splits."""

    ROWS = 65_536

    def __init__(self, path: Path, dimensions: int):
        from kuai_assets.features.fold_statistics import BackgroundParquetWriter

        self.names = [f"pc_{i:02d}" for i in range(dimensions)]
        self.schema = pa.schema(
            [("photo_id", pa.int64()), ("split", pa.string())] + [(n, pa.float32()) for n in self.names]
        )
        # no dictionary for the components: continuous values, where the dictionary attempt was
        # most of the writer's CPU
        self.writer = BackgroundParquetWriter(path, self.schema, compression="zstd", use_dictionary=["split"])
        self.writer.__enter__()
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.rows = 0

    def add(self, photo_id: np.ndarray, split_code: np.ndarray, reduced: np.ndarray) -> None:
        self.pending.append((photo_id.copy(), split_code.copy(), reduced))
        self.rows += len(photo_id)
        if self.rows >= self.ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        photo_id = np.concatenate([p[0] for p in self.pending])
        split = SPLIT_NAMES[np.concatenate([p[1] for p in self.pending])]
        reduced = np.concatenate([p[2] for p in self.pending])
        columns = {"photo_id": photo_id, "split": split}
        columns.update({n: reduced[:, i] for i, n in enumerate(self.names)})
        self.writer.write_table(pa.table(columns, schema=self.schema))
        self.pending, self.rows = [], 0

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.writer.__exit__(None, None, None)


def read_reduced(table: Path) -> tuple[np.ndarray, np.ndarray]:
    """photo_id and the (N, d) float32 matrix of a pca_visual_features table."""
    parquet = pq.ParquetFile(table)
    names = [n for n in parquet.schema_arrow.names if n.startswith("pc_")]
    data = parquet.read(columns=["photo_id"] + names)
    matrix = np.empty((data.num_rows, len(names)), dtype=np.float32)
    for i, n in enumerate(names):
        matrix[:, i] = data.column(n).to_numpy()
    return data.column("photo_id").to_numpy(), matrix


def write_clusters(models: dict[int, KMeansModel], photo_id: np.ndarray, labels: dict, out: Path) -> dict:
    """video_clusters' Parquet (photo_id, k, cluster: one row per photo and k); returns
    {k: (model, photos per cluster)}."""
    schema = pa.schema([("photo_id", pa.int64()), ("k", pa.int32()), ("cluster", pa.int32())])
    made = {}
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for k, model in models.items():
            made[k] = (model, np.bincount(labels[k], minlength=k))
            writer.write_table(
                pa.table({"photo_id": photo_id, "k": np.full(len(photo_id), k, np.int32), "cluster": labels[k]}, schema=schema)
            )
    return made
