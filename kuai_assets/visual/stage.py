"""VisualStage: video_embeddings -> pca_visual_features -> video_clusters in one pass.

Each vector is read once, from the released files (or, without the store among the outputs,
from the store). The stages of the pass and what joins them:

    read threads (sources.Released, visual_zip.READ_AHEAD at once): read, decode, check, round,
        and once the PCA is there project each chunk (projection.EarlyProjection)
    -> this thread: each chunk's ids; its stored values to the store writer (store.StoreWriter:
        a writer thread, at most two chunks waiting); the chunk on to the projection:
    -> PcaBacklog: until the PCA fit ends, the chunks are kept as stored, at most BACKLOG_BYTES
        (then this thread waits for the PCA)
    -> the projection worker (flow.Worker, its queue bounded by BACKLOG_BYTES): projects what the
        read threads could not, writes the table rows (projection.ReducedWriter, a writer
        thread), keeps and assigns the reduced vectors (projection.Assignment: catches up at
        once on the rows before the KMeans fits ended)
    beside the pass, on a fit thread: the PCA fit on the fitting sample (read first, alone),
        then the KMeans fits at every k on the reduced sample.

BLAS runs on one thread meanwhile: the stage's own threads already share the cores.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from kuai_assets.formats.visual import CHUNK_VECTORS
from kuai_assets.ml.kmeans import fit_kmeans
from kuai_assets.ml.pca import PcaModel, fit_pca
from kuai_assets.visual.codec import ENCODINGS
from kuai_assets.visual.flow import Worker
from kuai_assets.visual.projection import (
    Assignment,
    ChunkToProject,
    EarlyProjection,
    Progress,
    Projection,
    ReducedWriter,
    read_reduced,
    write_clusters,
)
from kuai_assets.visual.sampling import FitSample, read_sample
from kuai_assets.visual.settings import VisualSettings, VisualSettingsError
from kuai_assets.visual.sources import Released
from kuai_assets.visual.store import SPLIT_CODES, StoreWriter, VectorStore


PROJECTIONS = ("local", "dask")


class PcaBacklog:
    """Between this thread and the projection worker until the PCA fit (`pca`) ends.

    `hand_on(chunk)`: before the PCA is there, the chunk is kept (in row order); once it is, the
    chunks kept and then this one go to the worker. Bound: when the chunks kept hold more than
    `limit` bytes, `hand_on` waits for the PCA rather than keep more (so at most `limit` bytes
    plus one chunk are kept). `finish` waits for the PCA and hands on what is left.
    A chunk that a read thread could not project (read before the PCA ended) but that comes
    after it, while the worker has nothing to do, is projected here from its float32 buffer
    rather than decoded again by the worker; the buffer is never kept beyond `hand_on`.
    """

    def __init__(self, pca: Future, limit: int, worker: Worker, progress: Progress):
        self.pca, self.limit, self.worker, self.progress = pca, limit, worker, progress
        self.model: PcaModel | None = None
        self.kept: list[ChunkToProject] = []
        self.nbytes = 0

    def hand_on(self, chunk: ChunkToProject) -> None:
        if self.model is None and (self.pca.done() or self.nbytes > self.limit):
            self._release(chunk.start)
        if self.model is not None and chunk.reduced is None and chunk.buffer is not None and self.worker.idle():
            chunk.project_now(self.model)
        chunk.buffer = None  # the reader's: never kept
        if self.model is None:
            self.kept.append(chunk)
            self.nbytes += chunk.nbytes
        else:
            self.worker.put(chunk, chunk.nbytes)

    def finish(self, rows: int) -> None:
        if self.model is None:
            self._release(rows)

    def _release(self, row: int) -> None:
        self.model = self.pca.result()
        if self.kept:
            self.progress(f"pca_visual_features: projecting from row {row:,} on (and the {row:,} before it now)")
        for chunk in self.kept:
            self.worker.put(chunk, chunk.nbytes)
        self.kept, self.nbytes = [], 0


class VisualStage:
    """video_embeddings -> pca_visual_features -> video_clusters in one pass over the vectors
    (see the module's docstring for the stages). Refuses settings that cannot work with the data
    (VisualSettingsError) and bad vectors (DataFormatError, from the sources)."""

    # the chunks on their way to the projection (kept before the PCA, or queued for the worker)
    # hold at most this many bytes each way; beyond, the pass waits
    BACKLOG_BYTES = 1 << 30

    def __init__(
        self,
        settings: VisualSettings,
        progress: Progress = lambda message: None,
        report_every: int = 500_000,
        chunk_rows: int = CHUNK_VECTORS,
    ):
        if settings.encoding not in ENCODINGS:
            raise VisualSettingsError(f"encoding must be one of {', '.join(ENCODINGS)}, not {settings.encoding!r}")
        if settings.projection not in PROJECTIONS:
            raise VisualSettingsError(f"projection must be one of {', '.join(PROJECTIONS)}, not {settings.projection!r}")
        if settings.projection == "dask" and not settings.dask_scheduler:
            raise VisualSettingsError("projection dask needs dask_scheduler (tcp://host:port)")
        if settings.partition_vectors < 1:
            raise VisualSettingsError(f"partition_vectors must be at least 1, got {settings.partition_vectors}")
        self.settings = settings
        self.progress = progress
        self.report_every = report_every
        self.chunk_rows = chunk_rows  # vectors per chunk of the pass (at most; a zip block is also at most 64 MB)

    def run(
        self,
        source: Released | VectorStore,
        store_out: Path | None = None,
        pca_out: Path | None = None,
        clusters_out: Path | None = None,
    ) -> dict:
        """Write the outputs given (an empty folder for the store, Parquet paths for the tables).

        Returns what each made: "store" (its meta), "pca" (PcaModel), "clusters" ({k: (model,
        photos per cluster)}). The store is written only from the released vectors; the clusters
        only with the PCA (else see `clusters_from_table`).
        """
        with threadpool_limits(limits=1, user_api="blas"):
            return self._run(source, store_out, pca_out, clusters_out)

    def _run(self, source, store_out, pca_out, clusters_out) -> dict:
        released = isinstance(source, Released)
        if store_out is not None and not released:
            raise ValueError("the store is written from the released vectors")
        total = source.total if released else len(source)
        ks = self._ks(total) if clusters_out is not None else []
        results: dict = {}
        pca = fits = None
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            if pca_out is not None:
                # the sample is read first, alone: its random runs, read while the pass reads,
                # would compete with the pass's sequential reads for the disk
                sample, sizes, vectors = self._read_sample(source, total, ks)
                pca = Future()
                fits = pool.submit(self._fit, vectors, sample, sizes, pca)
                del vectors
            elif ks:
                raise ValueError("clusters are made in the pass only with the PCA; see clusters_from_table")
            photo_id, labels, models = self._pass(source, store_out, pca, pca_out, fits if ks else None, ks, results)
            if fits is not None:
                fits.result()  # raises what the fits raised, if the pass did not
            if ks:
                results["clusters"] = write_clusters(models, photo_id, labels, clusters_out)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results

    def run_on_dask(self, source: Released, pca_out: Path, clusters_out: Path | None = None) -> dict:
        """pca_visual_features (and video_clusters) with the projection and the assignment as a
        map on the Dask scheduler of the settings (visual/distributed.py): the PCA and the KMeans
        are fitted here first, on the same sample and in the same way as `run` fits them, so the
        tables are those `run` writes. Returns what `run` returns for them ("pca", "clusters")."""
        from kuai_assets.ml.dask_training import check_scheduler
        from kuai_assets.visual.distributed import project_on_dask

        check_scheduler(self.settings.dask_scheduler)  # before reading anything
        total = source.total
        ks = self._ks(total) if clusters_out is not None else []
        with threadpool_limits(limits=1, user_api="blas"):
            sample, sizes, vectors = self._read_sample(source, total, ks)
            pca = Future()
            models = self._fit(vectors, sample, sizes, pca)
        del vectors
        made = project_on_dask(
            source, pca.result(), models, self.settings.encoding, self.settings.dask_scheduler, pca_out,
            clusters_out if ks else None, self.settings.partition_vectors, self.progress,
        )
        return {"pca": pca.result(), **({"clusters": made["clusters"]} if ks else {})}

    def _ks(self, total: int) -> list[int]:
        ks = sorted(set(self.settings.ks))
        for k in ks:
            if k < 2 or k > total:
                raise VisualSettingsError(f"ks: cannot make {k} clusters of {total:,} photos (each k must be 2 to the number of photos)")
        return ks

    def _sample_plan(self, total: int, ks: list[int]) -> tuple[FitSample, dict[int, int]]:
        """The fitting sample's rows and each k's sample size: the same for a whole pass and for
        clusters made alone from the PCA table, so both fit on the same rows."""
        settings = self.settings
        sizes = {k: settings.cluster_sample_size(k, total) for k in ks}
        sample = FitSample.draw(total, max([settings.fit_sample, *sizes.values()]), settings.seed, settings.run_length)
        return sample, sizes

    def _read_sample(self, source, total: int, ks: list[int]) -> tuple[FitSample, dict[int, int], np.ndarray]:
        """The fitting sample's rows (and each k's sample size) and their vectors as the store keeps them."""
        settings = self.settings
        sample, sizes = self._sample_plan(total, ks)
        started = time.time()
        vectors = read_sample(source, sample, settings.encoding)
        self.progress(
            f"pca_visual_features: read {len(vectors):,} sample vectors in {len(sample.ranges()):,} runs "
            f"({time.time() - started:.1f} s); fitting {settings.dimensions} components while the pass starts"
        )
        if not 1 <= settings.dimensions <= vectors.shape[1]:
            raise VisualSettingsError(f"dimensions must be between 1 and {vectors.shape[1]} (the vectors' length), got {settings.dimensions}")
        return sample, sizes, vectors

    def _fit(self, vectors: np.ndarray, sample: FitSample, sizes: dict[int, int], pca: Future) -> dict:
        """On the fit thread while the pass runs: fit the PCA (handed to the pass through `pca`),
        then the KMeans at every k on the reduced sample."""
        started = time.time()
        chosen = sample.first(self.settings.fit_sample)
        try:
            # the whole sample is the PCA's when no k asks for more rows: no copy of it (it is held
            # beside the pass's backlog, so a copy would add to the stage's peak)
            model = fit_pca(vectors if chosen.all() else vectors[chosen], self.settings.dimensions)
        except BaseException as exc:
            pca.set_exception(exc)
            raise
        pca.set_result(model)
        self.progress(f"pca_visual_features: fitted in {time.time() - started:.1f} s")
        if not sizes:
            return {}
        reduced_sample = model.transform(vectors)
        del vectors
        return self._fit_clusters(reduced_sample, sample, sizes)

    def clusters_from_table(self, reduced_table: Path, clusters_out: Path) -> dict:
        """Only the clusters, from an existing pca_visual_features table (fitted on the same rows
        a whole pass would fit them on)."""
        photo_id, reduced = read_reduced(reduced_table)
        sample, sizes = self._sample_plan(len(reduced), self._ks(len(reduced)))
        models = self._fit_clusters(reduced[sample.positions], sample, sizes)
        labels = {k: model.assign(reduced) for k, model in models.items()}
        return {"clusters": write_clusters(models, photo_id, labels, clusters_out)}

    def _fit_clusters(self, reduced_sample: np.ndarray, sample: FitSample, sizes: dict[int, int]) -> dict:
        models = {}
        for k, size in sizes.items():
            rows = reduced_sample[sample.first(size)]
            started = time.time()
            models[k] = fit_kmeans(rows, k, seed=self.settings.seed)
            self.progress(
                f"video_clusters: k={k} fitted on {len(rows):,} photos "
                f"({models[k].iterations} iterations, {time.time() - started:.1f} s)"
            )
        return models

    def _pass(self, source, store_out, pca: Future | None, pca_out, fits: Future | None, ks: list[int], results: dict):
        """The pass; returns (photo_id, {k: cluster of every row}, {k: KMeansModel})."""
        settings, log = self.settings, self.progress
        released = isinstance(source, Released)
        total = source.total if released else len(source)
        started = time.time()
        photo_id = np.empty(total, dtype=np.int64) if released else source.photo_id
        split_code = np.empty(total, dtype=np.int8) if released else source.split
        store = StoreWriter(store_out, total, settings.encoding) if store_out is not None else None
        writer = assignment = projecting = backlog = None
        if pca is not None:
            writer = ReducedWriter(pca_out, settings.dimensions)
            assignment = Assignment(fits, total, settings.dimensions, ks, log) if fits is not None else None
            projection = Projection(pca, settings.encoding, writer, photo_id, split_code, assignment)
            projecting = Worker("visual-projection", projection, self.BACKLOG_BYTES)
            backlog = PcaBacklog(pca, self.BACKLOG_BYTES, projecting, log)
        row, next_report = 0, self.report_every
        finished = False
        try:
            if backlog is not None and not released:
                backlog.finish(0)  # a store source: nothing to overlap the PCA fit with
            if released:
                early = EarlyProjection(pca) if pca is not None else None
                chunks = source.chunks(encoding=settings.encoding, rows=self.chunk_rows, project=early)
            else:
                chunks = source.row_blocks(max(self.chunk_rows, 1))
            for item in chunks:
                if released:
                    split, chunk = item
                    n = len(chunk.photo_id)
                    photo_id[row : row + n] = chunk.photo_id
                    split_code[row : row + n] = SPLIT_CODES[split]
                    if store is not None:
                        store.write(chunk.stored)
                    # the stored values (the reader reuses its buffer, `chunk.vectors`) or the projection
                    on = ChunkToProject(row, None if chunk.reduced is not None else chunk.stored, True, chunk.reduced, chunk.vectors)
                else:
                    _, values = item  # a new array per block
                    n = len(values)
                    on = ChunkToProject(row, values, False)
                if backlog is not None:
                    backlog.hand_on(on)
                row += n
                if row >= next_report or row == total:
                    rate = row / max(time.time() - started, 1e-9)
                    log(f"visual pass: {row:,} of {total:,} vectors ({rate:,.0f}/s)")
                    next_report = row + self.report_every
            if backlog is not None:
                backlog.finish(row)
                projecting.finish()
            finished = True
        finally:
            if projecting is not None and not finished:
                projecting.stop()
            try:
                if store is not None:
                    store.close()
            finally:
                if writer is not None:
                    writer.close()
        labels, models = assignment.finish() if assignment is not None else ({}, None)
        if backlog is not None:
            results["pca"] = backlog.model
        if store is not None:
            results["store"] = store.finish(source, photo_id, split_code, time.time() - started)
        return photo_id, labels, models


def consolidate(
    sources: dict,
    out: Path,
    encoding: str = "bfloat16",
    progress: Progress = lambda message: None,
    report_every: int = 500_000,
) -> dict:
    """Stream every split's released vectors into one store at `out` (an empty folder); returns its meta."""
    return VisualStage(VisualSettings(encoding=encoding), progress, report_every).run(
        Released(sources), store_out=out
    )["store"]
