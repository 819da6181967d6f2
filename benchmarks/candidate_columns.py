"""Try candidate columns out of graph: the model as `model` trains it, with and without them.

    python -m benchmarks.candidate_columns --work W --data D --candidate knn_visual
    python -m benchmarks.candidate_columns --work W --data D --candidate visual_taste_full_prior --replace visual_taste

W is a workspace whose graph has run through `training_matrix` (`kuai run`, or
`bench quality --without ...`), D its dataset with `ground_truth/test_ground_truth.txt`. The
candidate's columns are computed from the workspace's tables (one row per setup and row_id of
model_rows; every label statistic out of fold, as a feature group's), joined to a copy of the
training matrix as one more group (`<W>/bench/candidate_matrix.parquet`, or under --out; the workspace's own
tables are never modified), and LightGBM is trained exactly as `model` trains it
(kuai_assets.ml.gbdt.train_gbdt: the default groups and parameters, validation, refit, test
scores) on the default groups, then on the default groups and the candidate. Both are scored on
the test rows. With `--replace GROUP` the second model trains on the default groups without GROUP
and with the candidate instead: a variant of an existing group measured in its place. The figures
print and go to `<W>/bench/candidate_<name>.json`.

A candidate that gains on validation and test, across worlds and the independent stories, is
worth a feature group (kuai_assets/groups/, with its reference test and the leak probe); one that
does not is recorded in BENCHMARKS.md with this command, so the study can be run again.

Candidates:

- knn_visual: the user's nearest neighbours in reduced-visual space (the unit pca_visual_features
  vector; cosine). Of the fit rows the row may see (other folds; a scored row: every fit row of its
  setup): knn_click_top and knn_noclick_top, the mean cosine of the 5 nearest clicked and the 5
  nearest unclicked photos; knn_rate, the click share of the 20 nearest; knn_weighted_rate, the
  same weighted by exp(cosine / 0.1). A user's tastes as points rather than one centroid
  (visual_similarity) or one linear direction (visual_taste).
- visual_taste_full_prior: visual_taste (kuai_assets/groups/visual_taste.py) with each user's
  direction shrunk toward the pooled one under a full between-user covariance T, w_u ~ N(w_g, T),
  instead of tau^2 I: T estimated per setup and slot by EM (VT_EM_ITERATIONS steps from the group's
  own tau^2 I), so that the axes along which users really differ keep their own strength and the
  others are pooled. The same three columns, the score from the new directions (global and margin
  are visual_taste's). Meant with `--replace visual_taste`. Holds every user's per-fold second
  moments (users x folds x axes^2 float64: 80 MB at 500 users and 64 axes, 330 MB at 2,000).
- visual_neighbour_rate: how everyone responded to the photos that look most like the row's photo
  (a cover's look is shared by its author's other works, and so, often, is their appeal). Among
  the photos with fit rows the row may see (other folds; folds are by photo, so a fit row never
  sees its own photo, as a test row never does), its NEIGHBOURS nearest by cosine of the unit
  reduced vector: neighbour_click_rate, their clicks over impressions shrunk toward the
  population's rate (50 pseudo-impressions); neighbour_click_lift, their clicks less what their
  viewers' own click rates predict (each viewer's rate over the same rows, shrunk toward the
  population with 10 pseudo-impressions), over impressions + 50; neighbour_weighted_rate, their
  smoothed rates (5 pseudo-impressions) weighted by exp(cosine / 0.1); neighbour_similarity, their
  mean cosine (how crowded the photo's part of the space is). A photo-level, label-aware
  counterpart of the clusters' rates (cluster_stats) without a cluster's borders.
- user_cluster_factors: each user's excess clicks per cluster (clicks less impressions x the
  user's own rate, shrunk toward the population's with 10 pseudo-impressions), as a user x cluster
  matrix at every k of video_clusters, denoised by a truncated SVD at Gavish and Donoho's hard
  threshold: clusters that the same users like pool each other's evidence, whatever they look
  like (collaborative, where user_visual_group_affinity pools clusters that look alike). Two
  columns per k: the denoised cell of the row's user and cluster on the z scale (excess over
  sqrt(impressions + 5)) and on the rate scale (excess over impressions + 5). The matrix of a slot
  holds the fit rows it may see (other folds; a scored row: all of its setup's).
- within_cluster_tastes: each user's taste in what a cover shows beyond its content, measured
  within the user's clusters so that it is not the user's taste in the content itself (faces,
  words and durations differ by kind of content: a user who likes a cooking cluster whose covers
  carry words is not thereby fond of words). For every attribute a released file gives (has_face,
  the faces' male share and best appearance on covers with faces, has_text, ln(1 + duration),
  and the photo's ln(impressions) over every log, train and test, label-free), the user's slope
  of click on the attribute inside each user x cluster cell at the coarsest k (a fixed-effects
  regression: click and attribute centred on the cell's means), pooled over the user's cells and
  shrunk toward the population's slope by WITHIN_PRIOR rows' worth of the population's
  within-cell variance. Columns: each slope (within_slope_<a>), and within_taste_score, the sum
  over attributes of (user's slope - population's slope) x (row's attribute - its mean): the
  user's personal tilt for this photo. Slots as user_cluster_factors' (other folds; a scored row:
  every fit row of its setup). Variants: within_cluster_tastes_of_covers without the impressions
  attribute (the five the cover files give: what became the feature group
  user_taste_within_clusters, whose SQL gives the same columns), within_taste_score (the score
  alone) and within_fine_cluster_tastes (cells at the finest k). On a workspace whose graph
  already holds that group, compare a variant in its place: `--replace user_taste_within_clusters`.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kuai_assets.features.fold_statistics import fetch, setups
from kuai_assets.features.id_index import IdIndex
from kuai_assets.features.matrix import FEATURES_KEY, MATRIX, Feature, read_features
from kuai_assets.groups.visual_similarity import _pca_matrix as unit_pca_vectors
from kuai_assets.storage import sql_string

KNN_NAMES = ("knn_click_top", "knn_noclick_top", "knn_rate", "knn_weighted_rate")
KNN_TOP_BY_LABEL, KNN_NEIGHBOURS, KNN_TEMPERATURE = 5, 20, 0.1


def _mean_of_top(similarity: np.ndarray, k: int) -> np.ndarray:
    """Per row, the mean of its k largest finite values (fewer if it has fewer; NaN if none)."""
    if similarity.shape[1] == 0:
        return np.full(similarity.shape[0], np.nan, np.float32)
    k = min(k, similarity.shape[1])
    top = -np.partition(-similarity, k - 1, axis=1)[:, :k]
    top = np.where(np.isfinite(top), top, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row that may see none: NaN
        return np.nanmean(top, axis=1).astype(np.float32)


def knn_visual(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The knn_visual columns (module docstring) for every row of model_rows: setup, row_id, then
    KNN_NAMES. Reads model_rows, label_history and pca_visual_features; a fit row of fold f reads
    only label_history rows of its setup outside fold f, a scored row (fold -1) all of its setup's."""
    photo_ids, vectors = unit_pca_vectors(con)  # sorted by photo_id
    pieces = []
    for (setup,) in con.sql("select distinct setup from model_rows order by setup").fetchall():
        rows = con.execute("select row_id, user_id, photo_id, fold from model_rows where setup = ? order by user_id, row_id",
                           [setup]).fetchnumpy()
        seen = con.execute("select user_id, photo_id, fold, click from label_history where setup = ? order by user_id",
                           [setup]).fetchnumpy()
        users = np.unique(rows["user_id"])
        row_bounds = np.append(np.searchsorted(rows["user_id"], users), len(rows["user_id"]))
        seen_lo = np.searchsorted(seen["user_id"], users)
        seen_hi = np.searchsorted(seen["user_id"], users, side="right")
        row_vectors = vectors[np.searchsorted(photo_ids, rows["photo_id"])]
        seen_vectors = vectors[np.searchsorted(photo_ids, seen["photo_id"])]
        columns = {name: np.full(len(rows["row_id"]), np.nan, np.float32) for name in KNN_NAMES}
        for i in range(len(users)):
            a, b, c, d = row_bounds[i], row_bounds[i + 1], seen_lo[i], seen_hi[i]
            if d <= c:
                continue
            fold, seen_fold = rows["fold"][a:b], seen["fold"][c:d]
            clicked = seen["click"][c:d].astype(bool)
            similarity = row_vectors[a:b] @ seen_vectors[c:d].T
            hidden = (fold[:, None] == seen_fold[None, :]) & (fold[:, None] >= 0)  # the row's own fold
            similarity[hidden] = -np.inf
            columns["knn_click_top"][a:b] = _mean_of_top(similarity[:, clicked], KNN_TOP_BY_LABEL)
            columns["knn_noclick_top"][a:b] = _mean_of_top(similarity[:, ~clicked], KNN_TOP_BY_LABEL)
            k = min(KNN_NEIGHBOURS, similarity.shape[1])
            nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
            near = np.take_along_axis(similarity, nearest, axis=1)
            visible = np.isfinite(near)
            near_click = clicked[nearest] & visible
            weight = np.where(visible, np.exp(np.where(visible, near, 0.0) / KNN_TEMPERATURE), 0.0)
            count = visible.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                columns["knn_rate"][a:b] = np.where(count > 0, near_click.sum(axis=1) / count, np.nan)
                columns["knn_weighted_rate"][a:b] = np.where(
                    count > 0, (weight * near_click).sum(axis=1) / weight.sum(axis=1), np.nan)
        pieces.append(pa.table({"setup": pa.array([setup] * len(rows["row_id"]), pa.string()),
                                "row_id": rows["row_id"], **columns}))
    return pa.concat_tables(pieces)


@dataclass
class SetupRows:
    """One setup's fit rows (label_history) and rows to compute (model_rows), with dense user codes."""

    setup: str
    n_folds: int
    history: dict[str, np.ndarray]  # fold, user_id, photo_id, click
    rows: dict[str, np.ndarray]  # row_id, fold, user_id, photo_id
    users: IdIndex  # every user of either
    user: np.ndarray  # the fit rows' user codes
    fold: np.ndarray  # the fit rows' folds (int64)
    click: np.ndarray  # the fit rows' clicks (float64)


def each_setup(con: duckdb.DuckDBPyConnection) -> Iterator[SetupRows]:
    """Every setup of model_rows, one after the other (only one setup's rows held at a time)."""
    for setup, folds in setups(con):
        history = fetch(con, "select fold, user_id, photo_id, click from label_history where setup = ?", [setup])
        rows = fetch(con, "select row_id, fold, user_id, photo_id from model_rows where setup = ?", [setup])
        users = IdIndex(np.unique(np.concatenate([history["user_id"], rows["user_id"]])))
        yield SetupRows(setup, max(max(folds) + 1, 1), history, rows, users,
                        users.positions(history["user_id"], "label_history: unknown user_id(s)"),
                        history["fold"].astype(np.int64), history["click"].astype(np.float64))


VT_FULL_NAMES = ("visual_taste_full_score", "visual_taste_full_global", "visual_taste_full_margin")
VT_EM_ITERATIONS = 50


def full_prior_directions(raw_sxx: np.ndarray, n: np.ndarray, sx: np.ndarray, sy: np.ndarray, s_user: np.ndarray,
                          w_global: np.ndarray, tau2: float, iterations: int = VT_EM_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """One slot: each user's direction under w_u ~ N(w_g, T) with T fitted by EM.

    raw_sxx (users, axes, axes) the uncentred second moments of the user's details in the slot, n,
    sx, sy their rows, detail sums and clicks, s_user (users, axes) the centred cross moments,
    w_global the pooled direction, tau2 visual_taste's isotropic strength (T's starting point).
    Each user's click noise is p (1 - p) at the smoothed rate (clicks + 1) / (rows + 2), as in
    visual_taste. EM: the posterior of w_u given T has precision S_u / noise + T^-1; T is then the
    mean over users with rows of (m_u - w_g)(m_u - w_g)^T + the posterior covariance.
    Returns (directions (users, axes); users without rows get w_g, T's eigenvalues, largest first).
    """
    axes = raw_sxx.shape[1]
    safe = np.maximum(n, 1.0)
    mean_x = sx / safe[:, None]
    centred = raw_sxx - n[:, None, None] * np.einsum("ui,uj->uij", mean_x, mean_x)
    rate = (sy + 1.0) / (n + 2.0)
    noise = rate * (1.0 - rate)
    has = n > 0
    eye = np.eye(axes)
    covariance = tau2 * eye

    def posterior(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        precision_prior = np.linalg.inv(covariance + 1e-12 * eye)
        system = centred + noise[:, None, None] * precision_prior[None]
        inverse = np.linalg.inv(system)
        right = s_user + noise[:, None] * (precision_prior @ w_global)[None]
        return np.einsum("uij,uj->ui", inverse, right), noise[:, None, None] * inverse

    for _ in range(iterations):
        mean, spread = posterior(covariance)
        away = mean[has] - w_global
        covariance = (away.T @ away + spread[has].sum(axis=0)) / max(has.sum(), 1)
    mean, _ = posterior(covariance)
    mean[~has] = w_global
    return mean, np.linalg.eigvalsh(covariance)[::-1]


def visual_taste_full_prior(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The visual_taste_full_prior columns (module docstring) for every row of model_rows."""
    from kuai_assets.groups.visual_taste import photo_detail, user_directions

    index, detail = photo_detail(con)
    axes = detail.shape[1]
    pieces = []
    for part in each_setup(con):
        setup, n_folds, rows, users = part.setup, part.n_folds, part.rows, part.users
        user, fold, click, n_users = part.user, part.fold, part.click, len(part.users.sorted_ids)
        photo = index.positions(part.history["photo_id"], "label_history: photo_id(s) with no reduced visual vector")
        _, w_global, margin, between = user_directions(user, fold, click, photo, detail, n_users, n_folds)
        # per (user, fold): rows, clicks, detail sums, click-weighted sums, uncentred second moments
        key = user.astype(np.int64) * n_folds + fold
        order = np.argsort(key, kind="stable")
        bounds = np.searchsorted(key[order], np.arange(n_users * n_folds + 1))
        count = np.diff(bounds).astype(np.float64).reshape(n_users, n_folds)
        clicks = np.bincount(key, weights=click, minlength=n_users * n_folds).reshape(n_users, n_folds)
        sums = np.zeros((n_users * n_folds, axes))
        hits = np.zeros((n_users * n_folds, axes))
        second = np.zeros((n_users * n_folds, axes, axes))
        for cell in np.flatnonzero(np.diff(bounds)):
            at = order[bounds[cell]: bounds[cell + 1]]
            cell_detail = detail[photo[at]].astype(np.float64)
            sums[cell], hits[cell] = cell_detail.sum(axis=0), click[at] @ cell_detail
            second[cell] = cell_detail.T @ cell_detail
        sums, hits = sums.reshape(n_users, n_folds, axes), hits.reshape(n_users, n_folds, axes)
        second = second.reshape(n_users, n_folds, axes, axes)
        w_user = np.empty((n_users, n_folds + 1, axes))
        for slot in range(n_folds + 1):
            keep = np.arange(n_folds) != slot  # slot n_folds keeps every fold
            n, sy = count[:, keep].sum(axis=1), clicks[:, keep].sum(axis=1)
            sx, sxy = sums[:, keep].sum(axis=1), hits[:, keep].sum(axis=1)
            s_user = sxy - sx * (sy / np.maximum(n, 1.0))[:, None]
            w_user[:, slot], _ = full_prior_directions(second[:, keep].sum(axis=1), n, sx, sy, s_user,
                                                       w_global[slot], float(between[slot]))
        row_photo = index.positions(rows["photo_id"], "model_rows: photo_id(s) with no reduced visual vector")
        row_user = users.positions(rows["user_id"], "model_rows: unknown user_id(s)")
        slot = np.where(rows["fold"] < 0, n_folds, rows["fold"]).astype(np.int64)
        r = detail[row_photo].astype(np.float64)
        pieces.append(pa.table({
            "setup": pa.array([setup] * len(slot), pa.string()),
            "row_id": pa.array(rows["row_id"], pa.int64()),
            VT_FULL_NAMES[0]: np.einsum("nd,nd->n", r, w_user[row_user, slot]).astype(np.float32),
            VT_FULL_NAMES[1]: np.einsum("nd,nd->n", r, w_global[slot]).astype(np.float32),
            VT_FULL_NAMES[2]: np.einsum("nd,nd->n", r, margin[row_user, slot]).astype(np.float32),
        }))
    return pa.concat_tables(pieces)


NEIGHBOUR_NAMES = ("neighbour_click_rate", "neighbour_click_lift", "neighbour_weighted_rate", "neighbour_similarity")
NEIGHBOURS, NEIGHBOURS_SEARCHED, NEIGHBOUR_TEMPERATURE = 20, 40, 0.1
QUERY_CHUNK = 4096  # query photos whose similarities to every candidate photo are held at once


def nearest_photos(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `queries` (unit vectors), the positions in `base` of its k most similar rows by
    cosine, most similar first, and those cosines (brute force, a chunk of queries at a time)."""
    k = min(k, len(base))
    positions = np.empty((len(queries), k), np.int64)
    cosines = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), QUERY_CHUNK):
        similarity = queries[start: start + QUERY_CHUNK] @ base.T
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(similarity, top, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        positions[start: start + QUERY_CHUNK] = np.take_along_axis(top, order, axis=1)
        cosines[start: start + QUERY_CHUNK] = np.take_along_axis(values, order, axis=1)
    return positions, cosines


def visual_neighbour_rate(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The visual_neighbour_rate columns (module docstring) for every row of model_rows."""
    photo_ids, vectors = unit_pca_vectors(con)
    index = IdIndex(photo_ids)
    pieces = []
    for part in each_setup(con):
        setup, n_folds, history, rows = part.setup, part.n_folds, part.history, part.rows
        user, fold, click, n_users = part.user, part.fold, part.click, len(part.users.sorted_ids)
        # the photos with fit rows (each in one fold: folds are by photo), their impressions and clicks
        base_ids, base_of_row = np.unique(history["photo_id"], return_inverse=True)
        base_fold = np.zeros(len(base_ids), np.int64)
        base_fold[base_of_row] = fold
        shown = np.bincount(base_of_row, minlength=len(base_ids)).astype(np.float64)
        clicks = np.bincount(base_of_row, weights=click, minlength=len(base_ids))
        base_vectors = vectors[index.positions(base_ids, "label_history: photo_id(s) with no reduced visual vector")]
        query_ids, query_of_row = np.unique(rows["photo_id"], return_inverse=True)
        query_vectors = vectors[index.positions(query_ids, "model_rows: photo_id(s) with no reduced visual vector")]
        neighbour, cosine = nearest_photos(query_vectors, base_vectors, NEIGHBOURS_SEARCHED)
        # per user and fold: impressions and clicks, for each slot's viewer rates
        key = user * n_folds + fold
        user_shown = np.bincount(key, minlength=n_users * n_folds).reshape(n_users, n_folds).astype(np.float64)
        user_clicks = np.bincount(key, weights=click, minlength=n_users * n_folds).reshape(n_users, n_folds)
        row_slot = np.where(rows["fold"] < 0, n_folds, rows["fold"]).astype(np.int64)
        columns = {name: np.full(len(row_slot), np.nan, np.float32) for name in NEIGHBOUR_NAMES}
        for slot in range(n_folds + 1):
            at = np.flatnonzero(row_slot == slot)
            if not len(at):
                continue
            keep_fold = np.arange(n_folds) != slot
            population = clicks[base_fold != slot].sum() / max(shown[base_fold != slot].sum(), 1.0)
            viewer_rate = (user_clicks[:, keep_fold].sum(1) + 10 * population) / (user_shown[:, keep_fold].sum(1) + 10)
            seen = fold != slot
            expected = np.bincount(base_of_row[seen], weights=viewer_rate[user[seen]], minlength=len(base_ids))
            queries = np.unique(query_of_row[at])
            near, near_cosine = neighbour[queries], cosine[queries]
            visible = base_fold[near] != slot
            kept = visible & (np.cumsum(visible, axis=1) <= NEIGHBOURS)
            impressions = (shown[near] * kept).sum(1)
            hits = (clicks[near] * kept).sum(1)
            lift = ((clicks[near] - expected[near]) * kept).sum(1)
            weight = np.exp(near_cosine.astype(np.float64) / NEIGHBOUR_TEMPERATURE) * kept
            smoothed = (clicks[near] + 5 * population) / (shown[near] + 5)
            with np.errstate(invalid="ignore", divide="ignore"):
                values = {
                    "neighbour_click_rate": (hits + 50 * population) / (impressions + 50),
                    "neighbour_click_lift": lift / (impressions + 50),
                    "neighbour_weighted_rate": np.where(kept.any(1), (weight * smoothed).sum(1) / weight.sum(1), np.nan),
                    "neighbour_similarity": np.where(kept.any(1), (near_cosine * kept).sum(1) / kept.sum(1), np.nan),
                }
            where = np.searchsorted(queries, query_of_row[at])
            for name in NEIGHBOUR_NAMES:
                columns[name][at] = values[name][where]
        pieces.append(pa.table({"setup": pa.array([setup] * len(row_slot), pa.string()),
                                "row_id": pa.array(rows["row_id"], pa.int64()), **columns}))
    return pa.concat_tables(pieces)


FACTOR_NAMES = ("cluster_factor_z_k{k}", "cluster_factor_rate_k{k}")
FACTOR_USER_PRIOR, FACTOR_CELL_PRIOR = 10.0, 5.0


def hard_threshold_rank(singular: np.ndarray, shape: tuple[int, int]) -> int:
    """How many singular values stand above the noise: Gavish and Donoho's (2014) optimal hard
    threshold for a matrix of unknown noise level, omega(beta) times the median singular value."""
    if not len(singular):
        return 0
    beta = min(shape) / max(shape)
    omega = 0.56 * beta ** 3 - 0.95 * beta ** 2 + 1.82 * beta + 1.43
    return int((singular > omega * np.median(singular)).sum())


def low_rank(matrix: np.ndarray) -> tuple[np.ndarray, int]:
    """The matrix's truncated SVD at the hard-threshold rank, and that rank."""
    u, singular, vt = np.linalg.svd(matrix, full_matrices=False)
    rank = hard_threshold_rank(singular, matrix.shape)
    return (u[:, :rank] * singular[:rank]) @ vt[:rank], rank


def user_cluster_factors(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The user_cluster_factors columns (module docstring) for every row of model_rows."""
    clusters = fetch(con, "select k, photo_id, cluster from video_clusters order by k, photo_id")
    ks = [int(k) for k in np.unique(clusters["k"])]
    names = tuple(n.format(k=k) for k in ks for n in FACTOR_NAMES)
    pieces = []
    for part in each_setup(con):
        rows, n_folds, n_users = part.rows, part.n_folds, len(part.users.sorted_ids)
        row_user = part.users.positions(rows["user_id"], "model_rows: unknown user_id(s)")
        row_slot = np.where(rows["fold"] < 0, n_folds, rows["fold"]).astype(np.int64)
        columns = {}
        for k in ks:
            at_k = clusters["k"] == k
            index = IdIndex(clusters["photo_id"][at_k])
            cluster_of = clusters["cluster"][at_k].astype(np.int64)
            n_clusters = int(cluster_of.max()) + 1
            seen_cluster = cluster_of[index.positions(part.history["photo_id"], f"label_history: photo_id(s) with no k={k} cluster")]
            row_cluster = cluster_of[index.positions(rows["photo_id"], f"model_rows: photo_id(s) with no k={k} cluster")]
            cell = part.user.astype(np.int64) * n_clusters + seen_cluster
            z_column = np.full(len(row_slot), np.nan, np.float32)
            rate_column = np.full(len(row_slot), np.nan, np.float32)
            for slot in range(n_folds + 1):
                at = np.flatnonzero(row_slot == slot)
                if not len(at):
                    continue
                visible = part.fold != slot
                shown = np.bincount(cell[visible], minlength=n_users * n_clusters).reshape(n_users, n_clusters)
                clicks = np.bincount(cell[visible], weights=part.click[visible],
                                     minlength=n_users * n_clusters).reshape(n_users, n_clusters)
                population = clicks.sum() / max(shown.sum(), 1.0)
                user_rate = (clicks.sum(1) + FACTOR_USER_PRIOR * population) / (shown.sum(1) + FACTOR_USER_PRIOR)
                excess = clicks - shown * user_rate[:, None]
                z_hat, _ = low_rank(excess / np.sqrt(shown + FACTOR_CELL_PRIOR))
                rate_hat, _ = low_rank(excess / (shown + FACTOR_CELL_PRIOR))
                z_column[at] = z_hat[row_user[at], row_cluster[at]]
                rate_column[at] = rate_hat[row_user[at], row_cluster[at]]
            columns[FACTOR_NAMES[0].format(k=k)] = z_column
            columns[FACTOR_NAMES[1].format(k=k)] = rate_column
        pieces.append(pa.table({"setup": pa.array([part.setup] * len(row_slot), pa.string()),
                                "row_id": pa.array(rows["row_id"], pa.int64()),
                                **{name: columns[name] for name in names}}))
    return pa.concat_tables(pieces)


WITHIN_ATTRIBUTES = ("has_face", "male_share", "appearance", "has_text", "log_duration", "log_impressions")
WITHIN_PRIOR = 30.0


def photo_attributes(con: duckdb.DuckDBPyConnection) -> dict[str, np.ndarray]:
    """Per photo of any log (sorted photo_id): each WITHIN_ATTRIBUTES value and whether it is
    defined (male_share and appearance only on covers with faces). Label-free."""
    table = fetch(con, """
        with shown as (
            select photo_id, count(*) as impressions, max(duration_time) as duration_time
            from raw_interactions group by photo_id
        ),
        faces as (
            select photo_id, avg(gender) as male_share, max(appearance) as appearance
            from raw_faces group by photo_id
        ),
        words as (select photo_id, max(n_words) as n_words from raw_text group by photo_id)
        select s.photo_id, s.impressions, s.duration_time, f.photo_id is not null as has_face,
               coalesce(f.male_share, 0) as male_share, coalesce(f.appearance, 0) as appearance,
               coalesce(w.n_words, 0) as n_words
        from shown as s left join faces as f using (photo_id) left join words as w using (photo_id)
        order by s.photo_id""")
    face = table["has_face"].astype(bool)
    values = {
        "has_face": face.astype(np.float64),
        "male_share": table["male_share"].astype(np.float64),
        "appearance": table["appearance"].astype(np.float64),
        "has_text": (table["n_words"] > 0).astype(np.float64),
        "log_duration": np.log1p(table["duration_time"].astype(np.float64)),
        "log_impressions": np.log(table["impressions"].astype(np.float64)),
    }
    defined = {a: (face if a in ("male_share", "appearance") else np.ones(len(face), bool)) for a in WITHIN_ATTRIBUTES}
    return {"photo_id": table["photo_id"], **values, **{f"{a}_defined": defined[a] for a in WITHIN_ATTRIBUTES}}


def within_cell_moments(cell: np.ndarray, owner: np.ndarray, n_owners: int, x: np.ndarray, y: np.ndarray,
                        weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per owner, the within-cell cross and square sums, sum over its cells of sum (x - mean_cell x)
    (y - mean_cell y) and sum (x - mean_cell x)^2, over the rows of weight 1 (cell: dense codes,
    owner: each cell's owner)."""
    n_cells = len(owner)
    n = np.bincount(cell, weights=weight, minlength=n_cells)
    sx = np.bincount(cell, weights=weight * x, minlength=n_cells)
    sy = np.bincount(cell, weights=weight * y, minlength=n_cells)
    sxy = np.bincount(cell, weights=weight * x * y, minlength=n_cells)
    sxx = np.bincount(cell, weights=weight * x * x, minlength=n_cells)
    safe = np.maximum(n, 1.0)
    cxy = sxy - sx * sy / safe
    cxx = np.maximum(sxx - sx * sx / safe, 0.0)
    return (np.bincount(owner, weights=cxy, minlength=n_owners), np.bincount(owner, weights=cxx, minlength=n_owners))


def within_cluster_tastes(con: duckdb.DuckDBPyConnection, level: str = "min",
                          attributes_used: tuple[str, ...] = WITHIN_ATTRIBUTES) -> pa.Table:
    """The within_cluster_tastes columns (module docstring) for every row of model_rows; cells at
    the coarsest k (level "min") or the finest ("max"), over `attributes_used`."""
    attributes = photo_attributes(con)
    photos = IdIndex(attributes["photo_id"])
    clusters = fetch(con, "select photo_id, cluster from video_clusters "
                          f"where k = (select {level}(k) from video_clusters) order by photo_id")
    cluster_index = IdIndex(clusters["photo_id"])
    cluster_of = clusters["cluster"].astype(np.int64)
    n_clusters = int(cluster_of.max()) + 1
    names = tuple(f"within_slope_{a}" for a in attributes_used) + ("within_taste_score",)
    pieces = []
    for part in each_setup(con):
        rows, n_folds, n_users = part.rows, part.n_folds, len(part.users.sorted_ids)
        row_user = part.users.positions(rows["user_id"], "model_rows: unknown user_id(s)")
        row_slot = np.where(rows["fold"] < 0, n_folds, rows["fold"]).astype(np.int64)
        seen_photo = photos.positions(part.history["photo_id"], "label_history: photo_id(s) not in raw_interactions")
        row_photo = photos.positions(rows["photo_id"], "model_rows: photo_id(s) not in raw_interactions")
        seen_cluster = cluster_of[cluster_index.positions(part.history["photo_id"], "label_history: photo_id(s) with no cluster")]
        cells, cell = np.unique(part.user.astype(np.int64) * n_clusters + seen_cluster, return_inverse=True)
        owner = cells // n_clusters
        columns = {name: np.full(len(row_slot), np.nan, np.float32) for name in names}
        columns["within_taste_score"][:] = 0.0
        for slot in range(n_folds + 1):
            at = np.flatnonzero(row_slot == slot)
            if not len(at):
                continue
            visible = (part.fold != slot).astype(np.float64)
            for a in attributes_used:
                x_all = attributes[a]
                on = attributes[f"{a}_defined"]
                weight = visible * on[seen_photo]
                x = x_all[seen_photo]
                cxy, cxx = within_cell_moments(cell, owner, n_users, x, part.click, weight)
                total_xx = cxx.sum()
                if total_xx <= 0:
                    continue
                population_slope = cxy.sum() / total_xx
                prior = WITHIN_PRIOR * total_xx / max(weight.sum(), 1.0)  # rows' worth of the within variance
                slope = (cxy + prior * population_slope) / (cxx + prior)
                columns[f"within_slope_{a}"][at] = slope[row_user[at]]
                mean = float((x * weight).sum() / max(weight.sum(), 1.0))
                tilt = (slope[row_user[at]] - population_slope) * (x_all[row_photo[at]] - mean)
                columns["within_taste_score"][at] += np.where(on[row_photo[at]], tilt, 0.0).astype(np.float32)
        pieces.append(pa.table({"setup": pa.array([part.setup] * len(row_slot), pa.string()),
                                "row_id": pa.array(rows["row_id"], pa.int64()),
                                **{name: columns[name] for name in names}}))
    return pa.concat_tables(pieces)


# each candidate's function and its column names (None: the columns it returns, which depend on the data)
CANDIDATES: dict[str, tuple[Callable[[duckdb.DuckDBPyConnection], pa.Table], tuple[str, ...] | None]] = {
    "knn_visual": (knn_visual, KNN_NAMES),
    "visual_taste_full_prior": (visual_taste_full_prior, VT_FULL_NAMES),
    "visual_neighbour_rate": (visual_neighbour_rate, NEIGHBOUR_NAMES),
    "user_cluster_factors": (user_cluster_factors, None),
    "within_cluster_tastes": (within_cluster_tastes, None),
    "within_fine_cluster_tastes": (lambda con: within_cluster_tastes(con, "max"), None),
    "within_taste_score": (within_cluster_tastes, ("within_taste_score",)),
    "within_cluster_tastes_of_covers": (lambda con: within_cluster_tastes(con, "min", WITHIN_ATTRIBUTES[:-1]), None),
}
INPUTS = ("model_rows", "label_history", "pca_visual_features", "video_clusters", "raw_interactions", "raw_faces",
          "raw_text")


def workspace_connection(tables: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name in INPUTS:
        path = tables / f"{name}.parquet"
        if not path.is_file():
            raise SystemExit(f"candidate_columns: {path} is missing; materialize the graph through training_matrix first")
        con.sql(f"create view {name} as select * from read_parquet({sql_string(path)})")
    return con


def candidate_matrix(matrix: Path, columns: pa.Table, group: str, names: tuple[str, ...], out: Path) -> None:
    """The training matrix with `columns` (setup, row_id, names) left-joined as feature group
    `group` (label statistics), in the matrix's row order, its declarations extended."""
    con = duckdb.connect()
    try:
        con.register("candidate", columns)
        table = con.sql(f"select m.*, {', '.join(f'c.{n}' for n in names)} from read_parquet({sql_string(matrix)}) m "
                        f"left join candidate c using (setup, row_id) order by m.setup, m.role, m.row_id").to_arrow_table()
    finally:
        con.close()
    features = read_features(matrix) + [
        Feature(name=n, group=group, kind="continuous", source=n, uses_labels=True) for n in names]
    metadata = dict(pq.read_schema(matrix).metadata or {})
    metadata[FEATURES_KEY] = json.dumps([f.__dict__ for f in features]).encode()
    pq.write_table(table.replace_schema_metadata(metadata), out, compression="zstd")


def default_groups_of(matrix: Path) -> list[str]:
    """The default feature groups (in their order) that the training matrix holds."""
    from kuai_assets.defs.model import default_feature_groups

    present = {f.group for f in read_features(matrix)}
    return [g for g in default_feature_groups() if g in present]


def train_and_score(matrix: Path, groups: list[str], truth: Path, scratch: Path, training=None) -> dict:
    """LightGBM as `model` trains it on `groups` (with `training`, a GbdtTraining; default: the
    model's defaults); its validation and test AUC. The test predictions go to `scratch`."""
    from kuai_assets.ml.evaluation import score_predictions
    from kuai_assets.ml.gbdt import GbdtTraining, train_gbdt

    result = train_gbdt(matrix, groups, training if training is not None else GbdtTraining())
    pq.write_table(pa.table({"user_id": result.test.user_id, "photo_id": result.test.photo_id,
                             "p_click": result.test_prediction}), scratch)
    score = score_predictions(truth, predictions=scratch)
    return {"valid_auc": round(result.validation.auc, 4), "test_auc": round(score.auc, 4),
            "oracle_auc": round(score.oracle_auc, 4), "best_iteration": result.validation.best_iteration}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.candidate_columns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a workspace materialized through training_matrix")
    parser.add_argument("--data", type=Path, required=True, help="its dataset, with ground_truth/test_ground_truth.txt")
    parser.add_argument("--candidate", choices=sorted(CANDIDATES), default="knn_visual")
    parser.add_argument("--replace", default=None, metavar="GROUP",
                        help="train the second model without this default group (the candidate in its place)")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default <work>/bench)")
    args = parser.parse_args(argv)
    from kuai_assets.defs.model import default_feature_groups

    truth = args.data / "ground_truth" / "test_ground_truth.txt"
    if not truth.is_file():
        raise SystemExit(f"candidate_columns: {truth} is missing: the test rows cannot be scored")
    if args.replace is not None and args.replace not in default_feature_groups():
        raise SystemExit(f"candidate_columns: --replace {args.replace}: not a default feature group "
                         f"({', '.join(default_feature_groups())})")
    tables, scratch = args.work / "tables", args.out or args.work / "bench"
    scratch.mkdir(parents=True, exist_ok=True)
    compute, names = CANDIDATES[args.candidate]
    started = time.time()
    con = workspace_connection(tables)
    columns = compute(con)
    con.close()
    names = names or tuple(c for c in columns.column_names if c not in ("setup", "row_id"))
    seconds = round(time.time() - started, 1)
    print(f"[candidate_columns] {args.candidate}: {len(names)} columns for {columns.num_rows:,} rows in {seconds} s",
          flush=True)
    matrix = scratch / "candidate_matrix.parquet"
    candidate_matrix(tables / f"{MATRIX}.parquet", columns, args.candidate, names, matrix)
    groups = default_groups_of(matrix)
    if args.replace is not None and args.replace not in groups:
        raise SystemExit(f"candidate_columns: --replace {args.replace}: the workspace's training matrix has no such group")
    without = train_and_score(matrix, groups, truth, scratch / "predictions.parquet")
    print(f"[candidate_columns] without: {without}", flush=True)
    second = [g for g in groups if g != args.replace] + [args.candidate]
    with_candidate = train_and_score(matrix, second, truth, scratch / "predictions.parquet")
    label = f"{args.candidate} in place of {args.replace}" if args.replace else f"with {args.candidate}"
    print(f"[candidate_columns] {label}: {with_candidate}", flush=True)
    figures = {"work": str(args.work), "candidate": args.candidate, "replaced": args.replace, "seconds": seconds,
               "without": {**without, "groups": groups}, "with": {**with_candidate, "groups": second}}
    (scratch / f"candidate_{args.candidate}.json").write_text(json.dumps(figures, indent=2))
    print(f"| {args.work.name} | {without['valid_auc']:.4f} / {without['test_auc']:.4f} | "
          f"{with_candidate['valid_auc']:.4f} / {with_candidate['test_auc']:.4f} | "
          f"{with_candidate['test_auc'] - without['test_auc']:+.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
