"""impression_embedding: user and photo embeddings learnt from who was shown what, and the row's
photo compared, in that space, with its user and with what its user clicked.

The embeddings are a truncated SVD of the user x photo impression matrix over the whole log,
train and test (the test log is given at prediction time; no label is read): rows are users,
columns photos, each impression weighted by the photo's inverse exposure (an impression of a
photo shown to few users says more about the user) and each user's row scaled to unit length.
Photos shown to the same users land close together, whatever their covers look like: the
recommender's own view of the catalogue, which the content features cannot see. It is the
matrix-factorisation form of item2vec/DeepWalk with a window of a whole user's log (Levy and
Goldberg's result that skip-gram factorises a shifted PMI matrix), computed exactly in a few
sparse passes rather than by sampling walks.

Columns (cosines in the embedding space):
- impression_embedding_user: the photo with its user's own embedding (label-free);
- impression_embedding_clicked / _unclicked / _margin: the photo with the centroids of what the
  user clicked and did not click, from label_history, out of fold (features/centroid_similarity.py).

It has no distributed definition: under the Spark engine it runs here, on the driver
(`driver_only`), holding the log's ids, their dense codes and the sparse matrix in memory: some
50 bytes per impression, so a few hundred million impressions need a driver with tens of GB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import duckdb
import numpy as np

from kuai_assets.features.centroid_similarity import write_centroid_similarity
from kuai_assets.features.fold_statistics import fetch
from kuai_assets.features.spec import TableModel

DIMENSIONS = 16
SEED = 0


def embed(user: np.ndarray, photo: np.ndarray, n_users: int, n_photos: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit user vectors, unit photo vectors) of the impressions (user[i], photo[i]) (dense codes)."""
    from scipy import sparse
    from sklearn.decomposition import TruncatedSVD

    exposure = np.bincount(photo, minlength=n_photos).astype(np.float64)
    weight = np.log1p(n_users / np.maximum(exposure, 1.0))[photo]
    matrix = sparse.csr_matrix((weight, (user, photo)), shape=(n_users, n_photos))
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    matrix = sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ matrix
    dimensions = max(1, min(DIMENSIONS, min(n_users, n_photos) - 1))
    svd = TruncatedSVD(dimensions, algorithm="randomized", n_iter=5, random_state=SEED).fit(matrix)
    scale = np.sqrt(np.maximum(svd.singular_values_, 1e-12))
    photo_vectors = (svd.components_.T * scale).astype(np.float32)
    user_vectors = ((matrix @ svd.components_.T) / scale).astype(np.float32)
    for vectors in (photo_vectors, user_vectors):
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return user_vectors, photo_vectors


def compute_impression_embedding(
    con: duckdb.DuckDBPyConnection, out: Path, log: Callable[[str], None] = lambda m: None
) -> int:
    log_rows = fetch(con, "select user_id, photo_id from raw_interactions")
    user_ids, user = np.unique(log_rows["user_id"], return_inverse=True)
    photo_ids, photo = np.unique(log_rows["photo_id"], return_inverse=True)
    del log_rows
    log(f"impression_embedding: {len(user):,} impressions of {len(photo_ids):,} photos by {len(user_ids):,} users")
    user_vectors, photo_vectors = embed(user, photo, len(user_ids), len(photo_ids))
    del user, photo
    return write_centroid_similarity(
        con, out, photo_ids, photo_vectors, "impression_embedding", "impression in the log", log,
        user_space=(user_ids, user_vectors),
    )


GROUP = TableModel(
    name="impression_embedding",
    layer="features",
    description=(
        "Embeddings of users and photos learnt from the impression log (train and test, no labels): "
        f"a {DIMENSIONS}-d truncated SVD of the user x photo matrix. The cosine of the row's photo with "
        "its user, and with the centroids of what the user clicked and did not click (label statistics, "
        "out of fold)."
    ),
    grain=("setup", "row_id"),
    upstream=("label_history", "model_rows", "raw_interactions"),
    continuous=(
        "impression_embedding_clicked",
        "impression_embedding_unclicked",
        "impression_embedding_margin",
        "impression_embedding_user",
    ),
    compute=compute_impression_embedding,
    uses_scored_window_log=True,  # the SVD reads every impression, the test window's included
    driver_only=(
        "a truncated SVD of the whole user x photo matrix; a distributed one (block power iteration "
        "with joins) would match it only up to rotation"
    ),
)
