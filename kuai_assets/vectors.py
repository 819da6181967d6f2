"""The consolidated store of every photo's visual vector, and the visual stage built on it.

The store is a folder: `vectors.npy` (an (N, D) matrix read memory-mapped), `photo_id.npy`,
`split.npy` (0 train, 1 test) and `meta.json`. Streaming it row-block by row-block runs at disk
speed; nothing ever holds all N vectors in memory.

Encodings: `bfloat16` (default) keeps the top 16 bits of each float32, rounded: half the bytes,
float32's full range, 8 bits of precision, and converts at memory speed (numpy's float16 cast
runs at ~100M values/s here, a tenth of that, which would make consolidation CPU-bound).
`float16` and `float32` are there too. `python -m benchmarks.encoding_check` measures that the
PCA and the clusters come out the same as from the float32 values (BENCHMARKS.md has the figures
at preliminary scale: principal axes within a cosine of 0.99999, cluster groupings closer to
float32's than float32's own with another seed, and as tight).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from kuai_assets.formats.layout import VisualSource
from kuai_assets.formats.released import DataFormatError
from kuai_assets.formats.visual import CHUNK_VECTORS, VectorChunk, open_vectors
from kuai_assets.ml.kmeans import fit_kmeans
from kuai_assets.ml.pca import fit_pca

SPLIT_CODES = {"train": 0, "test": 1}


class VisualSettingsError(ValueError):
    """A visual-stage setting that cannot work (with this data): names the setting and why."""

FLOAT16_MAX = 65504.0
ENCODINGS = {"bfloat16": np.dtype("<u2"), "float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
Progress = Callable[[str], None]


def encode(vectors: np.ndarray, encoding: str) -> np.ndarray:
    """float vectors -> the store's encoding. May overwrite `vectors` (a float32 chunk we own)."""
    if encoding == "float32":
        return vectors.astype(np.float32, copy=False)
    if encoding == "float16":
        return vectors.astype(np.float16)
    bits = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32)
    bits += 0x8000  # round to nearest on the 16 dropped bits
    out = np.empty(bits.shape, dtype=np.uint16)
    np.right_shift(bits, 16, out=out, casting="unsafe")
    return out


def decode(block: np.ndarray, encoding: str) -> np.ndarray:
    """The store's encoding -> float32."""
    if encoding != "bfloat16":
        return np.asarray(block, dtype=np.float32)
    out = np.empty(block.shape, dtype=np.uint32)
    np.left_shift(block, 16, out=out, dtype=np.uint32)
    return out.view(np.float32)


@dataclass
class VectorStore:
    path: Path
    photo_id: np.ndarray
    split: np.ndarray
    vectors: np.ndarray  # memory-mapped (N, D), in `encoding`
    meta: dict

    @classmethod
    def open(cls, path: Path) -> "VectorStore":
        path = Path(path)
        return cls(
            path,
            np.load(path / "photo_id.npy"),
            np.load(path / "split.npy"),
            np.load(path / "vectors.npy", mmap_mode="r"),
            json.loads((path / "meta.json").read_text()),
        )

    def __len__(self) -> int:
        return len(self.photo_id)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def encoding(self) -> str:
        return self.meta.get("encoding", "float32")

    def rows(self, index: np.ndarray) -> np.ndarray:
        """float32 vectors of the given row positions."""
        return decode(self.vectors[index], self.encoding)

    def rows_in_runs(self, sample: "FitSample") -> np.ndarray:
        """float32 vectors of a FitSample's rows, each run read with one plain file read."""
        dtype = self.vectors.dtype
        row_bytes = self.dim * dtype.itemsize
        offset = int(getattr(self.vectors, "offset", 0))
        raw = np.empty((len(sample.positions), self.dim), dtype=dtype)
        view = memoryview(raw).cast("B")
        done = 0
        with open(self.path / "vectors.npy", "rb", buffering=0) as handle:
            for first, last in sample.ranges():
                want = (last - first) * row_bytes
                got = 0
                while got < want:
                    n = os.preadv(handle.fileno(), [view[done + got : done + want]], offset + first * row_bytes + got)
                    if n <= 0:
                        raise OSError(f"{self.path / 'vectors.npy'} ends before row {last}")
                    got += n
                done += want
        return decode(raw, self.encoding)

    def row_blocks(self, rows: int = 65_536):
        """(start, float32 block) in order; the next block is read from disk while this one is used.

        Blocks are read with plain file reads, not through the memory map: pages of a mapped file
        that a pass has touched stay in the process's resident set, so one pass over a 20 GB
        store would show as 20 GB of memory.
        """
        starts = list(range(0, len(self), rows))
        offset = int(getattr(self.vectors, "offset", 0))
        dtype = self.vectors.dtype
        row_bytes = self.dim * dtype.itemsize
        handle = open(self.path / "vectors.npy", "rb", buffering=0)

        def load(start: int) -> np.ndarray:
            raw = np.empty((min(rows, len(self) - start), self.dim), dtype=dtype)
            view = memoryview(raw).cast("B")
            done = 0
            while done < len(view):
                n = os.preadv(handle.fileno(), [view[done:]], offset + start * row_bytes + done)
                if n <= 0:
                    raise OSError(f"{self.path / 'vectors.npy'} ends before row {start + done // row_bytes}")
                done += n
            return decode(raw, self.encoding)

        with handle, ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(load, starts[0]) if starts else None
            for k, start in enumerate(starts):
                block = pending.result()
                pending = pool.submit(load, starts[k + 1]) if k + 1 < len(starts) else None
                yield start, block


@dataclass
class VisualSettings:
    """What the visual stage keeps and fits (defs.visual.VisualConfig holds the same fields)."""

    encoding: str = "bfloat16"
    dimensions: int = 64
    fit_sample: int = 50_000
    ks: tuple[int, ...] = (100, 500)
    sample_fraction: float = 0.1
    max_sample_per_cluster: int = 256
    seed: int = 0
    run_length: int = 32

    def cluster_sample_size(self, k: int, total: int) -> int:
        """KMeans at k fits on `sample_fraction` of the photos, at least 50 and at most
        `max_sample_per_cluster` per cluster, at most a million: beyond a few hundred points per
        centre the fit only costs time (at 5 million photos, k=500, a 10% sample took 3x as long)."""
        wanted = min(self.sample_fraction * total, self.max_sample_per_cluster * k)
        return int(min(total, max(wanted, 50 * k), 1_000_000))


@dataclass
class FitSample:
    """The rows the PCA and the KMeans are fitted on: runs of `run_length` consecutive rows,
    the runs drawn at random.

    Reading runs rather than single rows turns ~50,000 random reads (37 s from a store that is not
    in the page cache, at preliminary scale) into ~1,600 short sequential ones. The runs come in a
    random order and every fit takes the rows of the first runs it needs, so the PCA's rows do not
    depend on the ks and a smaller fit's rows are part of a larger one's.
    """

    positions: np.ndarray  # sorted row positions of every chosen run
    run_rank: np.ndarray  # per position: its run's place in the random order
    run_length: int

    @classmethod
    def draw(cls, total: int, largest: int, seed: int, run_length: int) -> "FitSample":
        n_runs = -(-total // run_length)
        order = np.random.default_rng(seed).permutation(n_runs)
        chosen = np.sort(order[: min(n_runs, -(-largest // run_length))])
        rank = np.empty(n_runs, dtype=np.int64)
        rank[order] = np.arange(n_runs)
        starts = chosen * run_length
        ends = np.minimum(starts + run_length, total)
        lengths = ends - starts
        positions = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
        return cls(positions, np.repeat(rank[chosen], lengths), run_length)

    def first(self, n: int) -> np.ndarray:
        """Which of `positions` belong to the first runs holding about n rows (a mask)."""
        return self.run_rank < -(-n // self.run_length)

    def ranges(self, offset: int = 0, length: int | None = None) -> list[tuple[int, int]]:
        """The positions as sorted [i, j) ranges, shifted by -offset and kept within [0, length)."""
        if len(self.positions) == 0:
            return []
        breaks = np.flatnonzero(np.diff(self.positions) != 1) + 1
        firsts = self.positions[np.concatenate([[0], breaks])] - offset
        lasts = self.positions[np.concatenate([breaks - 1, [len(self.positions) - 1]])] + 1 - offset
        limit = length if length is not None else int(lasts[-1])
        firsts, lasts = np.clip(firsts, 0, limit), np.clip(lasts, 0, limit)
        return [(int(a), int(b)) for a, b in zip(firsts, lasts) if b > a]


def round_to_encoding(vectors: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """(what the store keeps, those values as float32): the values later steps would read back.

    bfloat16 rounds in place: `vectors` (a float32 chunk we own) then holds the decoded values.
    """
    if encoding == "bfloat16" and vectors.dtype == np.float32 and vectors.flags.c_contiguous and vectors.flags.writeable:
        bits = vectors.view(np.uint32)
        bits += 0x8000  # round to nearest on the 16 dropped bits
        out = np.empty(bits.shape, dtype=np.uint16)
        np.right_shift(bits, 16, out=out, casting="unsafe")
        bits &= 0xFFFF0000
        return out, vectors
    stored = encode(vectors, encoding)
    return stored, decode(stored, encoding)


def check_vectors(vectors: np.ndarray, photo_id: np.ndarray, where, encoding: str) -> None:
    """Stop on NaN or infinity, or (float16 store) values beyond its range, naming the photo."""
    if encoding != "float16":
        # one pass: NaN and infinity make a row's sum NaN or infinite; a finite row's sum can
        # only overflow, so the rows whose sum is not finite are looked at value by value
        with np.errstate(over="ignore", invalid="ignore"):
            sums = vectors.sum(axis=1)
        suspect = np.flatnonzero(~np.isfinite(sums))
        if len(suspect):
            finite = np.isfinite(vectors[suspect]).all(axis=1)
            if not finite.all():
                raise DataFormatError(where, "vector contains NaN or infinity", photo_id=int(photo_id[suspect[np.argmin(finite)]]))
        return
    # one pass each for max and min: NaN propagates through both, infinity shows in one
    high, low = vectors.max(axis=1), vectors.min(axis=1)
    finite = np.isfinite(high) & np.isfinite(low)
    if not finite.all():
        raise DataFormatError(where, "vector contains NaN or infinity", photo_id=int(photo_id[np.argmin(finite)]))
    if encoding == "float16":
        too_big = (high > FLOAT16_MAX) | (low < -FLOAT16_MAX)
        if too_big.any():
            raise DataFormatError(
                where,
                "vector values exceed the float16 range; set the store encoding to bfloat16 or float32",
                photo_id=int(photo_id[np.argmax(too_big)]),
            )


def check_rounded(stored: np.ndarray, photo_id: np.ndarray, where, encoding: str) -> None:
    """After rounding to bfloat16 (NaN and infinity were stopped before): a finite value within
    half a bfloat16 step of float32's largest (above about 3.39e38) rounds up to infinity."""
    if encoding != "bfloat16":
        return
    overflowed = (stored & 0x7FFF).max(axis=1) >= 0x7F80  # every exponent bit set: infinity
    if overflowed.any():
        raise DataFormatError(
            where,
            "vector values exceed the bfloat16 range (about 3.39e38); set the store encoding to float32",
            photo_id=int(photo_id[np.argmax(overflowed)]),
        )


class Released:
    """The released vectors of every split, read in order (train, then test) as one sequence."""

    # the pass holds two chunks at once: the one it was given and the one before, still projected
    HELD = 2

    def __init__(self, sources: dict[str, VisualSource]):
        self.sources = sources
        with ThreadPoolExecutor(max_workers=len(sources) or 1) as pool:  # each zip's index parsed at once
            opened = {split: pool.submit(open_vectors, source) for split, source in sources.items()}
            self.readers = {split: reader.result() for split, reader in opened.items()}
        self.total = sum(len(r) for r in self.readers.values())
        if self.total == 0:
            raise DataFormatError(next(iter(sources.values())).path, "no vectors found")
        self.dim: int | None = None

    def chunks(
        self,
        sample: FitSample | None = None,
        encoding: str = "bfloat16",
        rows: int = CHUNK_VECTORS,
        project: Callable[[np.ndarray], np.ndarray | None] | None = None,
    ):
        """(split, chunk) in order; with `sample`, only its rows.

        Every chunk is checked and rounded to `encoding` on the reader's thread that decoded it,
        so that the read threads share that work: `chunk.stored` holds the values as the store
        keeps them, `chunk.vectors` the same values as float32 (without `sample`, its array is
        reused once two more chunks have been taken: see HELD). With `project`, `chunk.reduced` is what it returns
        for those float32 values, computed there too.
        """
        offset = 0
        for split, reader in self.readers.items():
            where = self.sources[split].path
            ranges = None if sample is None else sample.ranges(offset, len(reader))
            offset += len(reader)
            if ranges == []:
                continue

            def checked_and_rounded(chunk: VectorChunk, where=where) -> VectorChunk:
                check_vectors(chunk.vectors, chunk.photo_id, where, encoding)
                stored, values = round_to_encoding(chunk.vectors, encoding)
                check_rounded(stored, chunk.photo_id, where, encoding)
                return VectorChunk(chunk.photo_id, values, stored, None if project is None else project(values))

            reuse = self.HELD if sample is None else None
            for chunk in reader.chunks(rows, reuse_after=reuse, ranges=ranges, prepare=checked_and_rounded):
                if self.dim is None:
                    self.dim = chunk.vectors.shape[1]
                elif chunk.vectors.shape[1] != self.dim:
                    raise DataFormatError(
                        where,
                        f"vectors have {chunk.vectors.shape[1]} values, those read before (the other split) have {self.dim}",
                        photo_id=int(chunk.photo_id[0]),
                    )
                yield split, chunk

    def read(self, sample: FitSample, encoding: str) -> np.ndarray:
        """The sample's vectors as float32, rounded as the store would keep them."""
        # without reuse, every chunk's array is its own
        return np.concatenate([chunk.vectors for _, chunk in self.chunks(sample, encoding)])


def consolidate(
    sources: dict[str, VisualSource],
    out: Path,
    encoding: str = "bfloat16",
    progress: Progress = lambda message: None,
    report_every: int = 500_000,
) -> dict:
    """Stream every split's released vectors into one store at `out` (an empty folder)."""
    return VisualStage(VisualSettings(encoding=encoding), progress, report_every).run(
        Released(sources), store_out=out
    )["store"]


class VisualStage:
    """video_embeddings -> pca_visual_features -> video_clusters in one pass over the vectors.

    Each vector is read once, from the released files (or, without the store among the outputs,
    from the store): the pass checks it, writes it to the store, projects it on the PCA axes and
    assigns its clusters. A sample of runs (`FitSample`) is read first; the PCA and then the
    KMeans are fitted on it on a second thread while the pass starts (see `_pass` for how the
    chunks before each fit are caught up). Reading the 41 GB of preliminary vectors, the store
    after them and the store again for the projection made three passes over the disk; this is one.
    """

    # chunks consolidated before the PCA is fitted are kept (as stored) up to this many bytes
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
        self.settings = settings
        self.progress = progress
        self.report_every = report_every
        self.chunk_rows = chunk_rows  # vectors per chunk of the pass (at most; a zip block is also at most 64 MB)

    def run(
        self,
        source: "Released | VectorStore",
        store_out: Path | None = None,
        pca_out: Path | None = None,
        clusters_out: Path | None = None,
    ) -> dict:
        """Write the outputs given (a folder for the store, Parquet paths for the tables).

        Returns what each made: "store" (its meta), "pca" (PcaModel), "clusters" ({k: (model, sizes)}).

        BLAS runs on one thread meanwhile: the stage's own threads already share both cores, and
        BLAS's second thread only waited on them (preliminary scale, 41 GB of zips: the pass took
        163 s with BLAS on two threads, 144 s and 40% less CPU time on one; the KMeans fit on the
        side took no longer).
        """
        with threadpool_limits(limits=1, user_api="blas"):
            return self._run(source, store_out, pca_out, clusters_out)

    def _run(self, source, store_out, pca_out, clusters_out) -> dict:
        settings = self.settings
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
                # the sample is read first, alone: read while the pass reads, its random runs took
                # 8x as long (38 s against 5 s at preliminary scale)
                sample, sizes, vectors = self._read_sample(source, total, ks)
                pca = Future()
                fits = pool.submit(self._fit, vectors, sample, sizes, pca)
                del vectors
            elif ks:
                raise ValueError("clusters are made in the pass only with the PCA; see clusters_from_table")
            photo_id, labels, models = self._pass(source, store_out, pca, pca_out, fits if ks else None, results)
            if fits is not None:
                fits.result()  # raises what the preparation raised, if the pass did not
            if ks:
                results["clusters"] = self._write_clusters(models, photo_id, labels, clusters_out)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results

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
        vectors = source.read(sample, settings.encoding) if isinstance(source, Released) else source.rows_in_runs(sample)
        self.progress(
            f"pca_visual_features: read {len(vectors):,} sample vectors in {len(sample.ranges()):,} runs "
            f"({time.time() - started:.1f} s); fitting {settings.dimensions} components while the pass starts"
        )
        if not 1 <= settings.dimensions <= vectors.shape[1]:
            raise VisualSettingsError(f"dimensions must be between 1 and {vectors.shape[1]} (the vectors' length), got {settings.dimensions}")
        return sample, sizes, vectors

    def _fit(self, vectors: np.ndarray, sample: FitSample, sizes: dict[int, int], pca: Future) -> dict:
        """On a second thread while the pass runs: fit the PCA (handed to the pass through `pca`),
        then the KMeans at every k on the reduced sample."""
        started = time.time()
        try:
            model = fit_pca(vectors[sample.first(self.settings.fit_sample)], self.settings.dimensions)
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
        return {"clusters": self._write_clusters(models, photo_id, labels, clusters_out)}

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

    def _write_clusters(self, models: dict, photo_id: np.ndarray, labels: dict, out: Path) -> dict:
        schema = pa.schema([("photo_id", pa.int64()), ("k", pa.int32()), ("cluster", pa.int32())])
        made = {}
        with pq.ParquetWriter(out, schema, compression="zstd") as writer:
            for k, model in models.items():
                made[k] = (model, np.bincount(labels[k], minlength=k))
                writer.write_table(
                    pa.table({"photo_id": photo_id, "k": np.full(len(photo_id), k, np.int32), "cluster": labels[k]}, schema=schema)
                )
        return made

    def _pass(self, source, store_out, pca: Future | None, pca_out, fits, results: dict):
        """The pass; returns (photo_id, {k: cluster of every row}, {k: KMeansModel}).

        Four things overlap: the reader's threads (visual_zip.READ_AHEAD of them) each read a
        block, then decode, check and round it, and once the PCA is there project it too; this
        thread hands each chunk to a writer thread, which writes the store, and to a projection
        thread, which writes its table rows and assigns its clusters (and projects the chunks
        the readers could not) while the next chunks are read.
        The PCA (`pca`, a future) and then the KMeans fits (`fits`) are fitted on another thread
        while the pass runs. Until the PCA is there, chunks are only consolidated and their
        rounded values kept (as stored: 2 bytes a value in bfloat16); then they are projected in
        one go, and each chunk after as it comes. Likewise, once the KMeans fits end, the rows
        projected before are assigned at once from the reduced vectors kept in memory (N x 64
        float32: 1.2 GB at 4.85M photos), and each chunk after as it is projected. While the
        projection thread catches up like this, the chunks that come are kept too (up to
        BACKLOG_BYTES), so that the reads do not stop.
        """
        settings, log = self.settings, self.progress
        released = isinstance(source, Released)
        total = source.total if released else len(source)
        started = time.time()
        photo_id = np.empty(total, dtype=np.int64) if released else source.photo_id
        split_code = np.empty(total, dtype=np.int8) if released else source.split
        reduced_all = np.empty((total, settings.dimensions), dtype=np.float32) if fits is not None else None
        labels = {k: np.empty(total, dtype=np.int32) for k in settings.ks} if fits is not None else {}
        models, assigned = None, 0
        model = None if released or pca is None else pca.result()  # a store source: nothing to overlap
        # chunks consolidated but not projected yet (before the PCA was there, or while the
        # projection thread was busy catching up), as project_all's tasks: (row, stored values,
        # whether they are encoded, None)
        backlog: list[tuple[int, np.ndarray, bool, None]] = []
        backlog_bytes = 0
        writer = _ReducedWriter(pca_out, settings.dimensions) if pca is not None else None
        store = BackgroundFile(store_out / "vectors.npy") if store_out is not None else None
        row, next_report = 0, self.report_every

        def assign_up_to(end: int) -> None:
            nonlocal assigned
            for k, model in models.items():
                labels[k][assigned:end] = model.assign(reduced_all[assigned:end])
            assigned = end

        def project_all(chunks: list[tuple[int, np.ndarray | None, bool, np.ndarray | None]]) -> None:
            for start, values, encoded, reduced in chunks:
                if reduced is None:  # not projected by the reader
                    reduced = model.transform(decode(values, settings.encoding) if encoded else values)
                place(start, reduced)

        def place(start: int, reduced: np.ndarray) -> None:
            """On the projection thread: one chunk's table rows and its clusters."""
            nonlocal projected_end
            end = start + len(reduced)
            writer.add(photo_id[start:end], split_code[start:end], reduced)
            if reduced_all is not None:
                reduced_all[start:end] = reduced
                if models is not None:
                    assign_up_to(end)
            projected_end = end

        def project_early(values: np.ndarray) -> np.ndarray | None:
            """On a reader's thread: the chunk's projection, once the PCA is there."""
            if pca is None or not pca.done() or pca.exception() is not None:
                return None
            return pca.result().transform(values)

        def catch_up_assignment() -> None:
            """On the projection thread, after every chunk handed to it before: the KMeans fits
            are there; the rows projected so far are assigned, each chunk after as it comes."""
            nonlocal models
            models = fits.result()
            log(f"video_clusters: assigning from row {projected_end:,} on (and the {projected_end:,} before it now)")
            assign_up_to(projected_end)

        # the projection runs on its own thread, one chunk behind this one (which hands each chunk
        # on): numpy and BLAS release the GIL, so it overlaps with the reader's threads
        projecting = ThreadPoolExecutor(max_workers=1) if pca is not None else None
        projected = None  # the last task handed to the projection thread (they run in turn)
        # the last one that reads a chunk's array in the reader's buffers, which the reader reuses
        # once this thread has taken two more chunks (Released.HELD): until it is done, this
        # thread waits for the projection rather than keep chunks and read on
        holding: Future | None = None
        assignment_caught_up = fits is None
        projected_end = 0
        try:
            blocks = (
                source.chunks(encoding=settings.encoding, rows=self.chunk_rows, project=project_early)
                if released
                else source.row_blocks(max(self.chunk_rows, 1))
            )
            for item in blocks:
                if released:
                    split, chunk = item
                    n = len(chunk.vectors)
                    photo_id[row : row + n] = chunk.photo_id
                    split_code[row : row + n] = SPLIT_CODES[split]
                    if row == 0 and store is not None:
                        store.header(
                            {"descr": ENCODINGS[settings.encoding].str, "fortran_order": False, "shape": (total, source.dim)}
                        )
                    stored, values = chunk.stored, chunk.vectors  # checked and rounded by the reader
                    # handed to other threads while the reader refills chunk.vectors: never the buffer itself
                    own = stored.copy() if np.may_share_memory(stored, values) else stored
                    if store is not None:
                        store.write(own)
                else:
                    _, values = item
                    n = len(values)
                    own = values
                if projecting is not None:
                    # with enough kept, wait for the PCA rather than hold more
                    if model is None and (pca.done() or backlog_bytes > self.BACKLOG_BYTES):
                        model = pca.result()
                        if backlog:
                            log(f"pca_visual_features: projecting from row {row:,} on (and the {row:,} before it now)")
                    if model is not None and not assignment_caught_up and fits.done():
                        projected = projecting.submit(catch_up_assignment)
                        assignment_caught_up = True
                    projected_by_reader = released and chunk.reduced is not None
                    # the last task that reads a reader buffer ends before that buffer is reused: waited
                    # for here when a catch-up waits behind it, or when this chunk needs no waiting
                    if holding is not None and (holding is not projected or projected_by_reader):
                        holding.result()
                        holding = None
                    # while the projection thread catches up (the backlog above, or the rows before
                    # the KMeans fits ended), this chunk joins the backlog: the reads go on
                    busy = projected is not None and projected is not holding and not projected.done()
                    if projected_by_reader:
                        # its task holds none of the reader's buffers, so this thread hands it on
                        # (after the backlog, if any) and goes on at once
                        projected = projecting.submit(project_all, backlog + [(row, None, False, chunk.reduced)])
                        backlog, backlog_bytes = [], 0
                    elif model is None or (busy and backlog_bytes + own.nbytes <= self.BACKLOG_BYTES):
                        backlog.append((row, own, released, None))
                        backlog_bytes += own.nbytes
                    else:
                        if projected is not None:
                            projected.result()  # the chunk before: at most one chunk waits, so buffers are reused safely
                        # a catch-up takes this chunk as kept too, so that it holds no buffer while it runs
                        this = (row, own, released, None) if backlog else (row, values, False, None)
                        projected = projecting.submit(project_all, backlog + [this])
                        holding = projected if released and not backlog else holding
                        backlog, backlog_bytes = [], 0
                row += n
                if row >= next_report or row == total:
                    rate = row / max(time.time() - started, 1e-9)
                    log(f"visual pass: {row:,} of {total:,} vectors ({rate:,.0f}/s)")
                    next_report = row + self.report_every
            if projecting is not None:
                if model is None:
                    model = pca.result()
                if projected is not None:
                    projected.result()
                project_all(backlog)
                backlog = []
        finally:
            if projecting is not None:
                projecting.shutdown(wait=True, cancel_futures=True)
            if store is not None:
                store.close()
            if writer is not None:
                writer.close()
        if fits is not None:
            if models is None:
                models = fits.result()
            assign_up_to(total)
            log(f"video_clusters: every photo assigned at k={', '.join(map(str, models))}")
        if model is not None:
            results["pca"] = model
        if store_out is not None:
            results["store"] = self._finish_store(source, store_out, photo_id, split_code, time.time() - started)
        return photo_id, labels, models

    def _finish_store(self, source: Released, out: Path, photo_id, split_code, elapsed: float) -> dict:
        unique, counts = np.unique(photo_id, return_counts=True)
        if (counts > 1).any():
            repeated = int(unique[np.argmax(counts > 1)])
            splits = sorted({s for s, c in SPLIT_CODES.items() if (split_code[photo_id == repeated] == c).any()})
            raise DataFormatError(
                ", ".join(str(source.sources[s].path) for s in splits),
                "photo has more than one vector" + (" (in both train and test)" if len(splits) > 1 else ""),
                photo_id=repeated,
            )
        np.save(out / "photo_id.npy", photo_id)
        np.save(out / "split.npy", split_code)
        source_bytes = sum(src.path.stat().st_size for src in source.sources.values() if src.kind == "zip")
        meta = {
            "vectors": int(source.total),
            "dim": int(source.dim),
            "encoding": self.settings.encoding,
            "bytes": int((out / "vectors.npy").stat().st_size),
            "sources": {
                s: {"path": str(src.path), "kind": src.kind, "vectors": len(source.readers[s])}
                for s, src in source.sources.items()
            },
            "seconds": round(elapsed, 2),
            "source_megabytes_per_second": round(source_bytes / 1e6 / max(elapsed, 1e-9), 1) if source_bytes else None,
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=2))
        return meta


class BackgroundFile:
    """A file written on a second thread, at most two arrays waiting: the pass does not stop
    while the page cache flushes the store to disk. Behind the writes, the kernel is asked to
    start writing back what is written (and to drop it from the page cache once clean), so that
    the flush before publishing has little left to do and the store does not crowd the cache."""

    WINDOW = 256 << 20

    def __init__(self, path: Path):
        self.handle = open(path, "wb")
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: deque = deque()
        self.written = 0

    def header(self, header: dict) -> None:
        np.lib.format.write_array_header_1_0(self.handle, header)

    def _write(self, array: np.ndarray) -> None:
        array.tofile(self.handle)
        self.handle.flush()
        self.written = self.handle.tell()
        try:
            start = max(0, self.written - self.WINDOW)
            os.posix_fadvise(self.handle.fileno(), start, self.written - start, os.POSIX_FADV_DONTNEED)
        except (AttributeError, OSError):
            pass

    def write(self, array: np.ndarray) -> None:
        while len(self.pending) >= 2:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._write, array))

    def close(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.handle.close()


class _ReducedWriter:
    """pca_visual_features' Parquet, in row groups of about 65,536 photos, encoded on a second thread."""

    ROWS = 65_536

    def __init__(self, path: Path, dimensions: int):
        from kuai_assets.features.fold_statistics import BackgroundParquetWriter

        self.names = [f"pc_{i:02d}" for i in range(dimensions)]
        self.schema = pa.schema(
            [("photo_id", pa.int64()), ("split", pa.string())] + [(n, pa.float32()) for n in self.names]
        )
        # no dictionary for the components: continuous values, where the dictionary attempt was
        # most of the writer's CPU (py-spy, preliminary scale)
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


SPLIT_NAMES = np.array(["train", "test"], dtype=object)


def read_reduced(table: Path) -> tuple[np.ndarray, np.ndarray]:
    """photo_id and the (N, d) float32 matrix of a pca_visual_features table."""
    parquet = pq.ParquetFile(table)
    names = [n for n in parquet.schema_arrow.names if n.startswith("pc_")]
    data = parquet.read(columns=["photo_id"] + names)
    matrix = np.empty((data.num_rows, len(names)), dtype=np.float32)
    for i, n in enumerate(names):
        matrix[:, i] = data.column(n).to_numpy()
    return data.column("photo_id").to_numpy(), matrix
