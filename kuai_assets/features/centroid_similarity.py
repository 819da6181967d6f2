"""Out-of-fold similarity of a photo to what its user clicked and did not click, in any vector space.

Shared by the groups that compare a row's photo with the user's history through photo vectors
(visual_similarity: the reduced cover vectors; impression_embedding: the photos' embeddings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kuai_assets.features.fold_statistics import float32_column
from kuai_assets.features.id_index import IdIndex

ROW_CHUNK = 2_000_000


def _keyed_sums(key: np.ndarray, vectors: np.ndarray, n_keys: int) -> np.ndarray:
    """Sum the rows of `vectors` by integer key: one weighted bincount per dimension."""
    columns = np.ascontiguousarray(vectors.T)
    return np.stack([np.bincount(key, weights=c, minlength=n_keys) for c in columns], axis=1)


def write_centroid_similarity(
    con: duckdb.DuckDBPyConnection,
    out: Path,
    photo_ids: np.ndarray,
    vectors: np.ndarray,
    prefix: str,
    what: str,
    log: Callable[[str], None] = lambda m: None,
    user_space: tuple[np.ndarray, np.ndarray] | None = None,
) -> int:
    """Write `<prefix>_clicked`, `_unclicked` and `_margin` for every row of model_rows.

    With `user_space` = (sorted user ids, unit-length user vectors in the same space), also
    `<prefix>_user`: the cosine of the photo's vector with its user's (no label involved).

    `vectors` are unit-length rows for `photo_ids` (sorted). For each setup, the centroid
    directions of the photos each user clicked and did not click are summed from label_history
    by (fold, user); a fit row of fold f sees the centroids without fold f, a scored row (fold -1)
    the centroids of every fit row. A row's value is the cosine of its photo's vector with those
    centroids, null where the user has no such history out of fold. A photo of model_rows or
    label_history without a vector is refused, naming `what`. Returns the rows written.
    """
    index = IdIndex(photo_ids)
    missing = f"{{}}: photo_id(s) with no {what}"
    dim = vectors.shape[1]
    schema = pa.schema(
        [
            ("setup", pa.string()),
            ("row_id", pa.int64()),
            (f"{prefix}_clicked", pa.float32()),
            (f"{prefix}_unclicked", pa.float32()),
            (f"{prefix}_margin", pa.float32()),
        ]
        + ([(f"{prefix}_user", pa.float32())] if user_space is not None else [])
    )
    user_index = IdIndex(user_space[0]) if user_space is not None else None
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
                photo = index.positions(batch.column("photo_id").to_numpy(), missing.format("label_history"))
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
                photo = index.positions(batch.column("photo_id").to_numpy(), missing.format("model_rows"))
                similarity = np.einsum("nkd,nd->nk", centroids[which, user], vectors[photo])
                clicked, unclicked = similarity[:, 1], similarity[:, 0]
                extra = {}
                if user_space is not None:
                    row_users = user_index.positions(batch.column("user_id").to_numpy(), f"{prefix}: user_id(s) with no vector")
                    extra[f"{prefix}_user"] = float32_column(np.einsum("nd,nd->n", user_space[1][row_users], vectors[photo]))
                writer.write_table(
                    pa.table(
                        {
                            "setup": pa.repeat(pa.scalar(setup, pa.string()), len(fold)),
                            "row_id": batch.column("row_id"),
                            # null, not NaN, where the user has no (un)clicked history out of fold
                            f"{prefix}_clicked": float32_column(clicked),
                            f"{prefix}_unclicked": float32_column(unclicked),
                            f"{prefix}_margin": float32_column(clicked - unclicked),
                            **extra,
                        },
                        schema=schema,
                    )
                )
                written += len(fold)
            log(f"{prefix}: {setup} done, {written:,} rows so far")
    return written
