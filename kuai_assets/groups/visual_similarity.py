"""visual_similarity: the cosine similarity between the photo's reduced visual vector and the
centroids of what the user clicked and did not click, out of fold.

Averaging 64-d vectors per user, out of fold, is a few numpy reductions; in SQL it would be 64
hand-written columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kuai_assets.features.spec import TableModel
from kuai_assets.features.fold_statistics import float32_column
from kuai_assets.features.id_index import IdIndex

ROW_CHUNK = 2_000_000
NO_VECTOR = "{}: photo_id(s) with no reduced visual vector"


def _pca_matrix(con: duckdb.DuckDBPyConnection) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length reduced vectors, sorted by photo_id."""
    table = con.sql("select * exclude (split) from pca_visual_features order by photo_id").to_arrow_table()
    photo_id = table.column("photo_id").to_numpy()
    names = [c for c in table.column_names if c.startswith("pc_")]
    matrix = np.column_stack([table.column(c).to_numpy().astype(np.float32) for c in names])
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return photo_id, matrix


def _keyed_sums(key: np.ndarray, vectors: np.ndarray, n_keys: int) -> np.ndarray:
    """Sum the rows of `vectors` by integer key: one weighted bincount per dimension."""
    columns = np.ascontiguousarray(vectors.T)
    return np.stack([np.bincount(key, weights=c, minlength=n_keys) for c in columns], axis=1)


def compute_visual_similarity(
    con: duckdb.DuckDBPyConnection, out: Path, log: Callable[[str], None] = lambda m: None
) -> int:
    photo_ids, vectors = _pca_matrix(con)
    index = IdIndex(photo_ids)
    dim = vectors.shape[1]
    schema = pa.schema(
        [
            ("setup", pa.string()),
            ("row_id", pa.int64()),
            ("visual_similarity_clicked", pa.float32()),
            ("visual_similarity_unclicked", pa.float32()),
            ("visual_similarity_margin", pa.float32()),
        ]
    )
    written = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for (setup,) in con.execute("select distinct setup from model_rows order by setup").fetchall():
            users = con.execute(
                "select distinct user_id from model_rows where setup = ? order by user_id", [setup]
            ).fetchnumpy()["user_id"]
            n_users = len(users)
            n_folds = int(con.execute("select max(fold) from model_rows where setup = ?", [setup]).fetchall()[0][0]) + 1
            # sums of unit vectors per (fold, user, clicked), accumulated over the fit rows in chunks
            n_keys = n_folds * n_users * 2
            sums = np.zeros((n_keys, dim))
            counts = np.zeros(n_keys)
            reader = con.sql(
                "select fold, user_id, photo_id, click from label_history where setup = ?", params=[setup]
            ).to_arrow_reader(ROW_CHUNK)
            for batch in reader:
                fold = batch.column("fold").to_numpy().astype(np.int64)
                user = np.searchsorted(users, batch.column("user_id").to_numpy())
                photo = index.positions(batch.column("photo_id").to_numpy(), NO_VECTOR.format("label_history"))
                key = (fold * n_users + user) * 2 + batch.column("click").to_numpy().astype(np.int64)
                sums += _keyed_sums(key, vectors[photo], n_keys)
                counts += np.bincount(key, minlength=n_keys)
            sums = sums.reshape(n_folds, n_users, 2, dim)
            counts = counts.reshape(n_folds, n_users, 2)
            # centroid directions out of each fold (index f) and over everything (index n_folds)
            centroids = np.concatenate([sums.sum(axis=0)[None] - sums, sums.sum(axis=0)[None]])
            counts = np.concatenate([counts.sum(axis=0)[None] - counts, counts.sum(axis=0)[None]])
            norms = np.linalg.norm(centroids, axis=3, keepdims=True)
            centroids = np.where(norms > 0, centroids / np.maximum(norms, 1e-12), np.nan).astype(np.float32)
            centroids[counts == 0] = np.nan

            rows = con.sql(
                "select row_id, fold, user_id, photo_id from model_rows where setup = ?", params=[setup]
            ).to_arrow_reader(ROW_CHUNK)
            for batch in rows:
                fold = batch.column("fold").to_numpy().astype(np.int64)
                which = np.where(fold >= 0, fold, n_folds)
                user = np.searchsorted(users, batch.column("user_id").to_numpy())
                photo = index.positions(batch.column("photo_id").to_numpy(), NO_VECTOR.format("model_rows"))
                similarity = np.einsum("nkd,nd->nk", centroids[which, user], vectors[photo])
                clicked, unclicked = similarity[:, 1], similarity[:, 0]
                writer.write_table(
                    pa.table(
                        {
                            "setup": pa.repeat(pa.scalar(setup, pa.string()), len(fold)),
                            "row_id": batch.column("row_id"),
                            # null, not NaN, where the user has no (un)clicked history out of fold
                            "visual_similarity_clicked": float32_column(clicked),
                            "visual_similarity_unclicked": float32_column(unclicked),
                            "visual_similarity_margin": float32_column(clicked - unclicked),
                        },
                        schema=schema,
                    )
                )
                written += len(fold)
            log(f"visual_similarity: {setup} done, {written:,} rows so far")
    return written


GROUP = TableModel(
    name="visual_similarity",
    layer="features",
    description=(
        "Visual affinity: the cosine similarity between the photo's reduced visual vector and the "
        "centroids of the photos the user clicked and did not click, and their difference. "
        "Label statistics, out of fold (a fit row's centroids leave out its own fold)."
    ),
    grain=("setup", "row_id"),
    upstream=("label_history", "model_rows", "pca_visual_features"),
    continuous=("visual_similarity_clicked", "visual_similarity_unclicked", "visual_similarity_margin"),
    compute=compute_visual_similarity,
)
