"""visual_taste: each user's own linear taste in what a cover looks like beyond its cluster,
learnt out of fold from label_history and scored on the row's photo.

A photo's *detail* is its reduced visual vector (pca_visual_features, every pc_ column) minus the
mean vector of the photos of its finest cluster (video_clusters at the largest k; photos without
a cluster at that k are centred on the mean of those photos): what the cover looks like beyond
what the clusters already tell the other groups. The cluster means are label-free (every photo
of pca_visual_features counts, whatever its split).

For each setup, over the fit rows the row may see (a fit row of fold f: every fit row of its
setup outside fold f; a scored row, fold -1: every fit row of its setup), with r a fit row's
detail and y its click, and both centred on each user's own means over those rows:

- S_u = sum (r - mean_u r)(r - mean_u r)^T and s_u = sum (r - mean_u r)(y - mean_u y), per user;
- the pooled direction w_g = (sum_u S_u + GLOBAL_PRIOR_ROWS * v * I)^-1 sum_u s_u, where v is the
  mean per-axis variance of the pooled centred detail, trace(sum_u S_u) / (axes * rows);
- the user's direction w_u = (S_u + lambda_u I)^-1 (s_u + lambda_u w_g), lambda_u = p_u (1 - p_u) / tau^2:
  the posterior mean of a ridge regression of click on detail under w_u ~ N(w_g, tau^2 I), with
  p_u the user's smoothed click rate (clicks + 1) / (rows + 2) over those rows (the click's noise).
  The strength is not fixed but estimated from the data (empirical Bayes), per setup and fold:
  tau^2 is how far the users' per-axis regressions s_uj / S_u,jj spread around w_g beyond their own
  noise, the mean of (s_uj / S_u,jj - w_gj)^2 - p_u (1 - p_u) / S_u,jj weighted by S_u,jj / p_u (1 - p_u)
  (at least 1e-12: no spread gives every user w_g). A user without rows gets w_g.

Columns, for the row's photo with detail r:
- visual_taste_score: r . w_u;
- visual_taste_global: r . w_g;
- visual_taste_margin: r . (mean detail of the user's clicked rows - mean detail of the user's
  unclicked rows), null where the user has no clicked or no unclicked row it may see.

A photo of model_rows or label_history without a reduced vector is refused, naming the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa

from kuai_assets.features.fold_statistics import (
    BackgroundParquetWriter,
    PhotoClusters,
    fetch,
    float32_column,
    setups,
)
from kuai_assets.features.id_index import IdIndex
from kuai_assets.features.spec import TableModel

GLOBAL_PRIOR_ROWS = 1.0  # the pooled direction's own ridge (it has every user's rows)
ROW_CHUNK = 1_000_000  # rows scored, or photos converted to float64, at once (x axes x 8 bytes)
AXES_PER_PRODUCT = 8  # columns of the details converted to float64 at once for the sparse products
USERS_PER_SOLVE = 256  # users whose (slots x axes x axes) systems are held and solved at once

SCHEMA = pa.schema(
    [
        pa.field("setup", pa.string(), nullable=False),
        pa.field("row_id", pa.int64(), nullable=False),
        ("visual_taste_score", pa.float32()),
        ("visual_taste_global", pa.float32()),
        ("visual_taste_margin", pa.float32()),
    ]
)


def photo_detail(con: duckdb.DuckDBPyConnection) -> tuple[IdIndex, np.ndarray]:
    """(index of photo_id, float32 detail per photo): the reduced vector minus its finest cluster's
    mean (the means summed in float64). Every sum over rows made from it is taken in float64."""
    table = con.sql("select * exclude (split) from pca_visual_features order by photo_id").to_arrow_table()
    photo_ids = table.column("photo_id").to_numpy()
    names = sorted(c for c in table.column_names if c.startswith("pc_"))
    if not names:
        raise ValueError("pca_visual_features: no pc_ column")
    vectors = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in names])
    del table
    if not np.isfinite(vectors).all():
        bad = photo_ids[~np.isfinite(vectors).all(axis=1)][:5].tolist()
        raise ValueError(f"pca_visual_features: photo_id(s) {bad} have a non-finite reduced vector")
    clusters = PhotoClusters(con)
    code = clusters.codes(photo_ids)[-1] if clusters.ks else np.full(len(photo_ids), -1, np.int32)
    n_codes = (len(clusters.clusters[-1]) if clusters.ks else 0) + 1
    code = np.where(code < 0, n_codes - 1, code).astype(np.int64)  # the unclustered: one group of their own
    counts = np.bincount(code, minlength=n_codes).astype(np.float64)
    means = np.stack([np.bincount(code, weights=c, minlength=n_codes) for c in vectors.T], axis=1)
    means /= np.maximum(counts, 1.0)[:, None]
    for start in range(0, len(vectors), ROW_CHUNK):  # in place, a chunk at a time: no second copy
        vectors[start: start + ROW_CHUNK] -= means[code[start: start + ROW_CHUNK]]
    return IdIndex(photo_ids), vectors


def user_directions(
    user: np.ndarray, fold: np.ndarray, click: np.ndarray, photo: np.ndarray, detail: np.ndarray,
    n_users: int, n_folds: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fit rows' directions for every (user, slot), slot f < n_folds leaving out fold f and slot
    n_folds taking every fold: (w_u (users, slots, axes), w_g (slots, axes), margin direction
    (users, slots, axes), NaN where the user has no clicked or no unclicked row in the slot).

    The fit rows are given as `user` (dense codes < n_users), `fold` (0..n_folds-1), `click` (0/1)
    and `photo` (positions in `detail`, the (photos, axes) details, float32 or float64).
    """
    from scipy import sparse

    n_rows, (n_photos, axes) = len(user), detail.shape
    slots = n_folds + 1
    key = user.astype(np.int64) * n_folds + fold
    n_keys = n_users * n_folds
    # first moments by (user, fold): sparse (cell x photo) counts times the details, no row gathered
    n = np.bincount(key, minlength=n_keys).astype(np.float64)
    sy = np.bincount(key, weights=click, minlength=n_keys)
    shown = sparse.csr_matrix((np.ones(n_rows), (key, photo)), shape=(n_keys, n_photos))
    clicked_rows = click > 0
    hits = sparse.csr_matrix((click[clicked_rows], (key[clicked_rows], photo[clicked_rows])), shape=(n_keys, n_photos))
    sx, sxy, sxx_diagonal = np.empty((n_keys, axes)), np.empty((n_keys, axes)), np.empty((n_keys, axes))
    for j in range(0, axes, AXES_PER_PRODUCT):  # float64 sums, a few axes' columns converted at a time
        columns = detail[:, j: j + AXES_PER_PRODUCT].astype(np.float64)
        sx[:, j: j + AXES_PER_PRODUCT] = shown @ columns
        sxy[:, j: j + AXES_PER_PRODUCT] = hits @ columns
        sxx_diagonal[:, j: j + AXES_PER_PRODUCT] = shown @ (columns * columns)
    del columns
    # second moments by fold: each photo's detail weighted by how often the fold shows it
    sxx_fold = np.zeros((n_folds, axes, axes))
    for g in range(n_folds):
        times = np.bincount(photo[fold == g], minlength=n_photos).astype(np.float64)
        shown_photos = np.flatnonzero(times)
        for start in range(0, len(shown_photos), ROW_CHUNK):
            at = shown_photos[start: start + ROW_CHUNK]
            part = detail[at].astype(np.float64)
            sxx_fold[g] += (part * times[at, None]).T @ part
    # per user and slot: every fold's sum, less the slot's own fold
    def by_slot(per_fold: np.ndarray) -> np.ndarray:
        per_fold = per_fold.reshape(n_users, n_folds, *per_fold.shape[1:])
        total = per_fold.sum(axis=1, keepdims=True)
        return np.concatenate([total - per_fold, total], axis=1)

    n_s, sy_s, sx_s, sxy_s, sq_s = by_slot(n), by_slot(sy), by_slot(sx), by_slot(sxy), by_slot(sxx_diagonal)
    safe = np.maximum(n_s, 1.0)
    mean_x = sx_s / safe[..., None]
    # centred cross moment per user and slot: sum (r - mean r)(y - mean y) = sxy - sx * sy / n
    s_user = sxy_s - sx_s * (sy_s / safe)[..., None]
    sxx_total = sxx_fold.sum(axis=0)
    sxx_slot = np.concatenate([sxx_total[None] - sxx_fold, sxx_total[None]])
    # pooled: sum over users of their centred second moments = sum of raw moments - sum n mean mean^T
    pooled = sxx_slot - np.einsum("us,usi,usj->sij", n_s, mean_x, mean_x)
    pooled_s = s_user.sum(axis=0)
    rows_s = n_s.sum(axis=0)
    variance = np.where(rows_s > 0, np.trace(pooled, axis1=1, axis2=2) / np.maximum(axes * rows_s, 1), 0.0)
    ridge = np.where(variance > 0, variance, 1.0)  # no rows in the slot: w_g is 0 whatever the ridge
    eye = np.eye(axes)
    w_global = np.linalg.solve(pooled + (GLOBAL_PRIOR_ROWS * ridge)[:, None, None] * eye, pooled_s[..., None])[..., 0]
    # how far the users' directions spread around the pooled one (tau^2 per axis, each slot on its
    # own rows): each user's per-axis regression b = s / S_jj around w_g has expected square
    # tau^2 + noise / S_jj, the noise the click's variance p (1 - p) at the user's smoothed rate p
    rate = (sy_s + 1.0) / (n_s + 2.0)
    noise = rate * (1.0 - rate)  # (users, slots)
    spread = sq_s - sx_s * mean_x  # centred S_jj, (users, slots, axes)
    informative = spread > 1e-12 * np.maximum(sq_s, 1e-300)
    with np.errstate(invalid="ignore", divide="ignore"):
        excess = (s_user / spread - w_global[None]) ** 2 - noise[..., None] / spread
    # weighted by each term's precision (S_jj / noise): unbiased whatever the weights, less noisy
    weight = np.where(informative, spread / noise[..., None], 0.0)
    excess = np.where(informative, excess, 0.0)
    total_weight = weight.sum(axis=(0, 2))
    between = np.where(total_weight > 0, (weight * excess).sum(axis=(0, 2)) / np.maximum(total_weight, 1e-300), 0.0)
    between = np.maximum(between, 1e-12)  # no spread: every user gets the pooled direction
    # the users' own systems: their centred second moments need the rows again, user by user
    order = np.argsort(key, kind="stable")
    bounds = np.searchsorted(key[order], np.arange(n_keys + 1))
    w_user = np.empty((n_users, slots, axes))
    for first in range(0, n_users, USERS_PER_SOLVE):
        last = min(first + USERS_PER_SOLVE, n_users)
        sxx = np.zeros((last - first, n_folds, axes, axes))
        lo, hi = bounds[first * n_folds], bounds[last * n_folds]
        if hi > lo:
            rows = order[lo:hi]
            r = detail[photo[rows]].astype(np.float64)
            local = bounds[first * n_folds: last * n_folds + 1] - lo
            for cell in np.flatnonzero(np.diff(local)):
                part = r[local[cell]: local[cell + 1]]
                sxx[cell // n_folds, cell % n_folds] = part.T @ part
        total = sxx.sum(axis=1, keepdims=True)
        sxx = np.concatenate([total - sxx, total], axis=1)
        block = slice(first, last)
        centred = sxx - n_s[block, :, None, None] * np.einsum("usi,usj->usij", mean_x[block], mean_x[block])
        # the posterior mean under w_u ~ N(w_g, tau^2 I) and click noise p (1 - p): ridge noise / tau^2
        ridge_user = noise[block] / between[None]  # (users, slots)
        right = s_user[block] + ridge_user[..., None] * w_global[None]
        w_user[block] = np.linalg.solve(centred + ridge_user[..., None, None] * eye, right[..., None])[..., 0]
    clicked = sy_s
    unclicked = n_s - sy_s
    with np.errstate(invalid="ignore", divide="ignore"):
        margin = sxy_s / clicked[..., None] - (sx_s - sxy_s) / unclicked[..., None]
    margin[(clicked == 0) | (unclicked == 0)] = np.nan
    return w_user, w_global, margin, between


def compute_visual_taste(
    con: duckdb.DuckDBPyConnection, out: Path, log: Callable[[str], None] = lambda m: None
) -> int:
    # the products are small (axes x axes): one BLAS thread does them as fast on a quiet machine and
    # tens of times faster on a busy one, where two spinning threads wait for each other
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _compute(con, out, log)


def _compute(con: duckdb.DuckDBPyConnection, out: Path, log: Callable[[str], None]) -> int:
    index, detail = photo_detail(con)
    written = 0
    with BackgroundParquetWriter(out, SCHEMA, compression="zstd") as writer:
        for setup, folds in setups(con):
            n_folds = max(max(folds) + 1, 1)
            history = fetch(con, "select fold, user_id, photo_id, click from label_history where setup = ?", [setup])
            rows = fetch(con, "select row_id, fold, user_id, photo_id from model_rows where setup = ?", [setup])
            users = np.unique(np.concatenate([history["user_id"], rows["user_id"]]))
            user_index = IdIndex(users)
            photo = index.positions(history["photo_id"], "label_history: photo_id(s) with no reduced visual vector")
            if len(history["fold"]) and (history["fold"].min() < 0 or history["fold"].max() >= n_folds):
                raise ValueError(f"label_history: setup {setup} has fit rows outside folds 0..{n_folds - 1}")
            w_user, w_global, margin, between = user_directions(
                user_index.positions(history["user_id"], "label_history: unknown user_id(s)"),
                history["fold"].astype(np.int64), history["click"].astype(np.float64), photo, detail,
                len(users), n_folds,
            )
            del history, photo
            row_photo = index.positions(rows["photo_id"], "model_rows: photo_id(s) with no reduced visual vector")
            row_user = user_index.positions(rows["user_id"], "model_rows: unknown user_id(s)")
            slot = np.where(rows["fold"] < 0, n_folds, rows["fold"]).astype(np.int64)
            for start in range(0, len(slot), ROW_CHUNK):
                part = slice(start, start + ROW_CHUNK)
                r, u, s = detail[row_photo[part]], row_user[part], slot[part]
                count = len(s)
                writer.write_table(
                    pa.table(
                        {
                            "setup": pa.repeat(pa.scalar(setup, pa.string()), count),
                            "row_id": pa.array(rows["row_id"][part], pa.int64()),
                            "visual_taste_score": float32_column(np.einsum("nd,nd->n", r, w_user[u, s])),
                            "visual_taste_global": float32_column(np.einsum("nd,nd->n", r, w_global[s])),
                            "visual_taste_margin": float32_column(np.einsum("nd,nd->n", r, margin[u, s])),
                        },
                        schema=SCHEMA,
                    )
                )
                written += count
            log(f"visual_taste: {setup}: spread of the users' directions per axis {between.tolist()}")
            log(f"visual_taste: {setup} done ({len(users):,} users, {written:,} rows so far)")
    return written


GROUP = TableModel(
    name="visual_taste",
    layer="features",
    description=(
        "Each user's own taste in what a cover looks like beyond its finest visual cluster: a ridge "
        "regression of click on the photo's detail (reduced vector minus its cluster's mean), per user, "
        "shrunk toward the pooled direction, scored on the row's photo; the pooled direction's score; "
        "and the detail's projection on the user's clicked-minus-unclicked mean. Label statistics, out of fold."
    ),
    grain=("setup", "row_id"),
    upstream=("label_history", "model_rows", "pca_visual_features", "video_clusters"),
    continuous=("visual_taste_score", "visual_taste_global", "visual_taste_margin"),
    compute=compute_visual_taste,
    driver_only=(
        "a ridge regression per user and fold; its distributed form would be a grouped map by user "
        "(Spark applyInPandas), not yet written"
    ),
)
