"""The consolidated store of every photo's visual vector, and the visual stage built on it.

The store is a folder: `vectors.npy` (an (N, D) matrix read memory-mapped), `photo_id.npy`,
`split.npy` (0 train, 1 test) and `meta.json`. Streaming it row-block by row-block runs at disk
speed; nothing ever holds all N vectors in memory.

Encodings: `bfloat16` (default) keeps the top 16 bits of each float32, rounded: half the bytes,
float32's full range, 8 bits of precision, and converts at memory speed (numpy's float16 cast
runs at ~100M values/s here, a tenth of that, which would make consolidation CPU-bound).
`float16` and `float32` are there too. BENCHMARKS.md has the measurement that PCA and clusters
come out the same.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kuai_assets.formats.layout import VisualSource
from kuai_assets.formats.released import DataFormatError
from kuai_assets.formats.visual import open_vectors
from kuai_assets.ml.kmeans import KMeansModel, fit_kmeans
from kuai_assets.ml.pca import PcaModel, fit_pca

SPLIT_CODES = {"train": 0, "test": 1}
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


def consolidate(
    sources: dict[str, VisualSource],
    out: Path,
    encoding: str = "bfloat16",
    progress: Progress = lambda message: None,
    report_every: int = 500_000,
) -> dict:
    """Stream every split's released vectors into one store at `out` (an empty folder)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"store encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
    readers = {split: open_vectors(source) for split, source in sources.items()}
    total = sum(len(r) for r in readers.values())
    if total == 0:
        raise DataFormatError(next(iter(sources.values())).path, "no vectors found")
    started = time.time()
    photo_id = np.empty(total, dtype=np.int64)
    split_code = np.empty(total, dtype=np.int8)
    source_bytes = 0
    row = 0
    dim = None
    next_report = report_every
    with open(out / "vectors.npy", "wb") as store:
        for split, reader in readers.items():
            where = sources[split].path
            source_bytes += where.stat().st_size if sources[split].kind == "zip" else 0
            for chunk in reader.chunks(reuse_buffers=True):
                vectors = chunk.vectors
                if dim is None:
                    dim = vectors.shape[1]
                    np.lib.format.write_array_header_1_0(
                        store, {"descr": ENCODINGS[encoding].str, "fortran_order": False, "shape": (total, dim)}
                    )
                elif vectors.shape[1] != dim:
                    raise DataFormatError(
                        where,
                        f"vectors have {vectors.shape[1]} values, those read before (the other split) have {dim}",
                        photo_id=int(chunk.photo_id[0]),
                    )
                # one pass each for max and min: NaN propagates through both, infinity shows in one
                high, low = vectors.max(axis=1), vectors.min(axis=1)
                finite = np.isfinite(high) & np.isfinite(low)
                if not finite.all():
                    bad = int(chunk.photo_id[np.argmin(finite)])
                    raise DataFormatError(where, "vector contains NaN or infinity", photo_id=bad)
                if encoding == "float16":
                    too_big = (high > FLOAT16_MAX) | (low < -FLOAT16_MAX)
                    if too_big.any():
                        raise DataFormatError(
                            where,
                            "vector values exceed the float16 range; set the store encoding to bfloat16 or float32",
                            photo_id=int(chunk.photo_id[np.argmax(too_big)]),
                        )
                n = len(vectors)
                encode(vectors, encoding).tofile(store)
                photo_id[row : row + n] = chunk.photo_id
                split_code[row : row + n] = SPLIT_CODES[split]
                row += n
                if row >= next_report or row == total:
                    elapsed = max(time.time() - started, 1e-9)
                    progress(f"video_embeddings: {row:,} of {total:,} vectors consolidated ({row / elapsed:,.0f}/s)")
                    next_report = row + report_every
    unique, counts = np.unique(photo_id, return_counts=True)
    if (counts > 1).any():
        repeated = int(unique[np.argmax(counts > 1)])
        splits = sorted({s for s, c in SPLIT_CODES.items() if (split_code[photo_id == repeated] == c).any()})
        raise DataFormatError(
            ", ".join(str(sources[s].path) for s in splits),
            "photo has more than one vector" + (" (in both train and test)" if len(splits) > 1 else ""),
            photo_id=repeated,
        )
    np.save(out / "photo_id.npy", photo_id)
    np.save(out / "split.npy", split_code)
    elapsed = time.time() - started
    meta = {
        "vectors": int(total),
        "dim": int(dim),
        "encoding": encoding,
        "bytes": int((out / "vectors.npy").stat().st_size),
        "sources": {s: {"path": str(src.path), "kind": src.kind, "vectors": len(readers[s])} for s, src in sources.items()},
        "seconds": round(elapsed, 2),
        "source_megabytes_per_second": round(source_bytes / 1e6 / max(elapsed, 1e-9), 1) if source_bytes else None,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def reduce_vectors(
    store: VectorStore,
    out_table: Path,
    n_components: int,
    fit_sample: int,
    seed: int = 0,
    progress: Progress = lambda message: None,
) -> PcaModel:
    """Fit PCA on a random sample of the store, then write every photo's reduced vector (Parquet)."""
    if n_components < 1 or n_components > store.dim:
        raise ValueError(f"pca dimensions must be between 1 and {store.dim}, got {n_components}")
    rng = np.random.default_rng(seed)
    sample_rows = np.sort(rng.choice(len(store), size=min(len(store), fit_sample), replace=False))
    sample = store.rows(sample_rows)
    progress(f"pca_visual_features: fitting {n_components} components on {len(sample_rows):,} vectors")
    model = fit_pca(sample, n_components)
    del sample
    names = [f"pc_{i:02d}" for i in range(n_components)]
    schema = pa.schema(
        [("photo_id", pa.int64()), ("split", pa.string())] + [(n, pa.float32()) for n in names]
    )
    split_names = np.array(["train", "test"], dtype=object)
    with pq.ParquetWriter(out_table, schema, compression="zstd") as writer:
        for start, block in store.row_blocks():
            reduced = model.transform(block)
            end = start + len(block)
            columns = {
                "photo_id": store.photo_id[start:end],
                "split": split_names[store.split[start:end]],
            }
            columns.update({n: reduced[:, i] for i, n in enumerate(names)})
            writer.write_table(pa.table(columns, schema=schema))
            if (start // len(block)) % 16 == 15 or end == len(store):
                progress(f"pca_visual_features: {end:,} of {len(store):,} vectors reduced")
    return model


def read_reduced(table: Path) -> tuple[np.ndarray, np.ndarray]:
    """photo_id and the (N, d) float32 matrix of a pca_visual_features table."""
    parquet = pq.ParquetFile(table)
    names = [n for n in parquet.schema_arrow.names if n.startswith("pc_")]
    data = parquet.read(columns=["photo_id"] + names)
    matrix = np.empty((data.num_rows, len(names)), dtype=np.float32)
    for i, n in enumerate(names):
        matrix[:, i] = data.column(n).to_numpy()
    return data.column("photo_id").to_numpy(), matrix


def cluster_vectors(
    photo_id: np.ndarray,
    reduced: np.ndarray,
    ks: list[int],
    out_table: Path,
    sample_fraction: float,
    seed: int = 0,
    progress: Progress = lambda message: None,
    max_sample_per_cluster: int = 256,
) -> dict[int, tuple[KMeansModel, np.ndarray]]:
    """KMeans at every k, fitted on a sample, applied to all photos.

    The sample is `sample_fraction` of the photos, at least 50 and at most
    `max_sample_per_cluster` per cluster (and at most a million): beyond a few hundred points per
    centre the fit only costs time (at 5 million photos, k=500, a 10% sample took 3x as long).

    Returns, per k, the model and the number of photos in each cluster.
    """
    rng = np.random.default_rng(seed)
    models: dict[int, tuple[KMeansModel, np.ndarray]] = {}
    schema = pa.schema([("photo_id", pa.int64()), ("k", pa.int32()), ("cluster", pa.int32())])
    with pq.ParquetWriter(out_table, schema, compression="zstd") as writer:
        for k in ks:
            if k < 2 or k > len(reduced):
                raise ValueError(f"cannot make {k} clusters of {len(reduced)} photos")
            wanted = min(sample_fraction * len(reduced), max_sample_per_cluster * k)
            size = int(min(len(reduced), max(wanted, 50 * k), 1_000_000))
            sample = reduced[np.sort(rng.choice(len(reduced), size=size, replace=False))]
            progress(f"video_clusters: fitting k={k} on {size:,} photos")
            model = fit_kmeans(sample, k, seed=seed)
            labels = model.assign(reduced)
            models[k] = (model, np.bincount(labels, minlength=k))
            writer.write_table(
                pa.table({"photo_id": photo_id, "k": np.full(len(labels), k, np.int32), "cluster": labels}, schema=schema)
            )
            progress(f"video_clusters: k={k} assigned to {len(labels):,} photos ({model.iterations} iterations)")
    return models
