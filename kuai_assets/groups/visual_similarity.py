"""visual_similarity: the cosine similarity between the photo's reduced visual vector and the
centroids of what the user clicked and did not click, out of fold.

The numpy fast path (what DuckDB runs): averaging the reduced vectors per user, out of fold, is a
few numpy reductions (features/centroid_similarity.py). Its definition, what Spark runs, is
dbt_like_sql/features/visual_similarity.sql (one expression per component, listed from the table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import duckdb
import numpy as np

from kuai_assets.features.centroid_similarity import write_centroid_similarity
from kuai_assets.features.spec import TableModel


def _pca_matrix(con: duckdb.DuckDBPyConnection) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length reduced vectors, sorted by photo_id."""
    table = con.sql("select * exclude (split) from pca_visual_features order by photo_id").to_arrow_table()
    photo_id = table.column("photo_id").to_numpy()
    names = [c for c in table.column_names if c.startswith("pc_")]
    matrix = np.column_stack([table.column(c).to_numpy().astype(np.float32) for c in names])
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return photo_id, matrix


def compute_visual_similarity(
    con: duckdb.DuckDBPyConnection, out: Path, log: Callable[[str], None] = lambda m: None
) -> int:
    photo_ids, vectors = _pca_matrix(con)
    return write_centroid_similarity(con, out, photo_ids, vectors, "visual_similarity", "reduced visual vector", log)


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
