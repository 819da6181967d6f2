"""The consolidated store of every photo's visual vector, and the visual stage built on it.

The store is a folder: `vectors.npy` (an (N, D) matrix opened memory-mapped, float16 by default),
`photo_id.npy`, `split.npy` (0 train, 1 test) and `meta.json`. Streaming it row-block by
row-block runs at disk speed; nothing ever holds all N vectors in memory.
"""

from __future__ import annotations

import json
import time
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
Progress = Callable[[str], None]


@dataclass
class VectorStore:
    path: Path
    photo_id: np.ndarray
    split: np.ndarray
    vectors: np.ndarray  # memory-mapped (N, D)
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

    def row_blocks(self, rows: int = 65_536):
        for start in range(0, len(self), rows):
            yield start, np.asarray(self.vectors[start : start + rows], dtype=np.float32)


def consolidate(
    sources: dict[str, VisualSource],
    out: Path,
    dtype: str = "float16",
    progress: Progress = lambda message: None,
    report_every: int = 200_000,
) -> dict:
    """Stream every split's released vectors into one store at `out` (an empty folder)."""
    store_dtype = np.dtype(dtype)
    if store_dtype not in (np.dtype("float16"), np.dtype("float32")):
        raise ValueError(f"store dtype must be float16 or float32, not {dtype}")
    readers = {split: open_vectors(source) for split, source in sources.items()}
    total = sum(len(r) for r in readers.values())
    if total == 0:
        raise DataFormatError(next(iter(sources.values())).path, "no vectors found")
    started = time.time()
    matrix = None
    photo_id = np.empty(total, dtype=np.int64)
    split_code = np.empty(total, dtype=np.int8)
    source_bytes = 0
    row = 0
    next_report = report_every
    for split, reader in readers.items():
        where = sources[split].path
        source_bytes += where.stat().st_size if sources[split].kind == "zip" else 0
        for chunk in reader.chunks():
            vectors = chunk.vectors
            if matrix is None:
                matrix = np.lib.format.open_memmap(
                    out / "vectors.npy", mode="w+", dtype=store_dtype, shape=(total, vectors.shape[1])
                )
            elif vectors.shape[1] != matrix.shape[1]:
                raise DataFormatError(where, f"vectors have {vectors.shape[1]} values, earlier ones {matrix.shape[1]}")
            finite = np.isfinite(vectors).all(axis=1)
            if not finite.all():
                bad = int(chunk.photo_id[np.argmin(finite)])
                raise DataFormatError(where, "vector contains NaN or infinity", photo_id=bad)
            if store_dtype == np.float16:
                too_big = np.abs(vectors).max(axis=1) > FLOAT16_MAX
                if too_big.any():
                    raise DataFormatError(
                        where,
                        "vector values exceed the float16 range; set the store dtype to float32",
                        photo_id=int(chunk.photo_id[np.argmax(too_big)]),
                    )
            n = len(vectors)
            matrix[row : row + n] = vectors
            photo_id[row : row + n] = chunk.photo_id
            split_code[row : row + n] = SPLIT_CODES[split]
            row += n
            if row >= next_report or row == total:
                elapsed = max(time.time() - started, 1e-9)
                progress(f"video_embeddings: {row:,} of {total:,} vectors consolidated ({row / elapsed:,.0f}/s)")
                next_report = row + report_every
    matrix.flush()
    del matrix
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
        "dim": int(np.load(out / "vectors.npy", mmap_mode="r").shape[1]),
        "dtype": str(store_dtype),
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
    sample = np.asarray(store.vectors[sample_rows], dtype=np.float32)
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
) -> dict[int, tuple[KMeansModel, np.ndarray]]:
    """KMeans at every k, fitted on a sample (at least 50 points per cluster), applied to all photos.

    Returns, per k, the model and the number of photos in each cluster.
    """
    rng = np.random.default_rng(seed)
    models: dict[int, tuple[KMeansModel, np.ndarray]] = {}
    schema = pa.schema([("photo_id", pa.int64()), ("k", pa.int32()), ("cluster", pa.int32())])
    with pq.ParquetWriter(out_table, schema, compression="zstd") as writer:
        for k in ks:
            if k < 2 or k > len(reduced):
                raise ValueError(f"cannot make {k} clusters of {len(reduced)} photos")
            size = int(min(len(reduced), max(sample_fraction * len(reduced), 50 * k), 1_000_000))
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
