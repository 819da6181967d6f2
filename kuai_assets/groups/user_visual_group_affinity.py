"""user_visual_group_affinity: the user's click rate on coarse visual groups, the finest KMeans
clusters merged by average linkage at the cuts the fit rows choose, out of fold.

Why: a user's rate on a fine cluster rests on few rows; pooled over every cluster of the same
visual mode it rests on many. KMeans at a fixed k splits a mode into several clusters wherever
the mode is large; merging the finest clusters' centres bottom-up follows the modes instead.

The groups (label-free; every photo of pca_visual_features counts, whatever its split):
- each finest cluster's centre is the mean reduced vector (every pc_ column) of its photos
  (video_clusters at the largest k; a photo without a cluster there has no group);
- the centres are merged by average linkage (scipy.cluster.hierarchy, Euclidean);
- the candidate cuts are the tree cut into k/2, k/4, ... groups, down to MIN_GROUPS (down to 2
  where that leaves fewer than two cuts; with fewer than 4 finest clusters every value is null,
  and with one candidate it is both cuts).

The cuts (per setup and fold, from fit rows the fold's rows may see): for each candidate cut,
the fit rows outside fold f are scored with their user x group rate computed without their own
fold and without f (as below; a row without a rate by the user's prior), and the two cuts with
the lowest log-loss are kept for fold f's rows, called coarse (fewer groups) and fine. The scored
rows' cuts are chosen over every fit row, each without its own fold. Fold f's clicks never
reach the cuts its rows are given.

For each row of model_rows and each kept cut, over the fit rows the row may see (a fit row of
fold f: its setup's fit rows outside fold f; a scored row, fold -1: all of them):
- user_visual_group_impressions_<cut>: the user's fit rows in the row's photo's group;
- user_visual_group_click_rate_<cut>: (clicks + 10 prior) / (impressions + 10), the prior being
  the user's own rate (clicks + 20 p) / (impressions + 20) with p the population's rate; null
  where the user has no fit row in that group or the photo has no group.
"""

from __future__ import annotations

from pathlib import Path

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
from kuai_assets.features.spec import QUIET, GroupLog, TableModel

POPULATION_WEIGHT = 20  # pseudo-impressions pulling the user's rate toward the population's
USER_WEIGHT = 10  # pseudo-impressions pulling the (user, group) rate toward the user's
MIN_GROUPS = 8  # the coarsest candidate cut
CUTS = ("coarse", "fine")
ROW_CHUNK = 1_000_000

SCHEMA = pa.schema(
    [
        pa.field("setup", pa.string(), nullable=False),
        pa.field("row_id", pa.int64(), nullable=False),
        *[(f"user_visual_group_{stat}_{cut}", pa.float32()) for cut in CUTS for stat in ("impressions", "click_rate")],
    ]
)


def candidate_counts(n_clusters: int) -> list[int]:
    """The candidate numbers of groups: n/2, n/4, ... while at least MIN_GROUPS; where that offers
    fewer than two cuts (a small k), down to 2 groups instead. Empty below 4 clusters: nothing to
    merge."""
    def halves(smallest: int) -> list[int]:
        counts, n = [], n_clusters // 2
        while n >= smallest:
            counts.append(n)
            n //= 2
        return counts

    counts = halves(MIN_GROUPS)
    return counts if len(counts) >= len(CUTS) else halves(2)


def merged_groups(centres: np.ndarray, counts: list[int]) -> dict[int, np.ndarray]:
    """{n: the group (0..n-1) of each centre} for the average-linkage tree of `centres` cut into
    at most n groups (fewer only where merge heights tie)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(centres, method="average", metric="euclidean")
    return {n: fcluster(tree, n, criterion="maxclust").astype(np.int64) - 1 for n in counts}


def photo_groups(con: duckdb.DuckDBPyConnection) -> tuple[IdIndex, dict[int, np.ndarray], int]:
    """(index of photo_id, {n groups: each photo's group, -1 without one}, clusters at the finest k)."""
    clusters = PhotoClusters(con)
    if not clusters.ks:
        raise ValueError("video_clusters: no cluster at any k")
    table = con.sql("select * exclude (split) from pca_visual_features order by photo_id").to_arrow_table()
    photo_ids = table.column("photo_id").to_numpy()
    names = sorted(c for c in table.column_names if c.startswith("pc_"))
    if not names:
        raise ValueError("pca_visual_features: no pc_ column")
    code = clusters.codes(photo_ids)[-1]
    n_clusters = len(clusters.clusters[-1])
    has = code >= 0
    counts = np.bincount(code[has], minlength=n_clusters).astype(np.float64)
    centres = np.empty((n_clusters, len(names)))
    for j, name in enumerate(names):
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        if not np.isfinite(values).all():
            bad = photo_ids[~np.isfinite(values)][:5].tolist()
            raise ValueError(f"pca_visual_features: photo_id(s) {bad} have a non-finite {name}")
        centres[:, j] = np.bincount(code[has], weights=values[has], minlength=n_clusters)
    del table
    if (counts == 0).any():  # a cluster whose photos have no reduced vector: it cannot be placed
        raise ValueError(
            f"video_clusters: cluster(s) {clusters.clusters[-1][counts == 0][:5].tolist()} at k={clusters.ks[-1]} "
            "have no photo in pca_visual_features"
        )
    centres /= counts[:, None]
    groups = merged_groups(centres, candidate_counts(n_clusters)) if candidate_counts(n_clusters) else {}
    return IdIndex(photo_ids), {n: np.where(has, g[np.maximum(code, 0)], -1) for n, g in groups.items()}, n_clusters


class _CutRates:
    """One cut's sums over one setup's fit rows, by fold: the user x group rate and the user's prior
    for any row, leaving out any fold(s) (-1: none)."""

    def __init__(self, user, fold, click, group, n_users: int, n_groups: int, n_folds: int):
        self.n_groups, self.n_folds = n_groups, n_folds
        has = group >= 0
        n_cells = n_users * n_groups
        key = fold[has] * n_cells + user[has] * n_groups + group[has]
        # counts are whole numbers far below 2^24: exact in float32, half the memory
        self.n = np.bincount(key, minlength=n_folds * n_cells).astype(np.float32).reshape(n_folds, n_cells)
        self.clicks = np.bincount(key, weights=click[has], minlength=n_folds * n_cells).astype(np.float32)
        self.clicks = self.clicks.reshape(n_folds, n_cells)
        user_key = fold * n_users + user
        self.user_n = np.bincount(user_key, minlength=n_folds * n_users).reshape(n_folds, n_users).astype(np.float64)
        self.user_clicks = np.bincount(user_key, weights=click, minlength=n_folds * n_users).reshape(n_folds, n_users)
        self.totals = {
            name: table.sum(axis=0, dtype=np.float64)
            for name, table in (("n", self.n), ("clicks", self.clicks), ("user_n", self.user_n), ("user_clicks", self.user_clicks))
        }
        self.population_n, self.population_clicks = self.user_n.sum(axis=1), self.user_clicks.sum(axis=1)

    @staticmethod
    def _without(table: np.ndarray, total: np.ndarray, index: np.ndarray, left_out: tuple[np.ndarray, ...]) -> np.ndarray:
        value = total[index]
        for position, fold in enumerate(left_out):
            fresh = fold >= 0
            for earlier in left_out[:position]:  # a fold named twice is left out once
                fresh &= fold != earlier
            value = value - np.where(fresh, table[np.maximum(fold, 0), index], 0.0)
        return value

    def at(self, user: np.ndarray, group: np.ndarray, *left_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(impressions, smoothed click rate, NaN without impressions; the user's prior) for rows
        (user, group), every fit row of the folds in `left_out` (arrays of folds, -1: none) left out."""
        has = group >= 0
        cell = np.where(has, user * self.n_groups + np.maximum(group, 0), 0)
        n = np.where(has, self._without(self.n, self.totals["n"], cell, left_out), 0.0)
        clicks = self._without(self.clicks, self.totals["clicks"], cell, left_out)
        user_n = self._without(self.user_n, self.totals["user_n"], user, left_out)
        user_clicks = self._without(self.user_clicks, self.totals["user_clicks"], user, left_out)
        everyone = np.zeros(len(user), dtype=np.int64)
        population_n = self._without(self.population_n[:, None], self.population_n.sum(keepdims=True), everyone, left_out)
        population_clicks = self._without(
            self.population_clicks[:, None], self.population_clicks.sum(keepdims=True), everyone, left_out
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            prior = (user_clicks + POPULATION_WEIGHT * population_clicks / population_n) / (user_n + POPULATION_WEIGHT)
            rate = np.where(n > 0, (clicks + USER_WEIGHT * prior) / (n + USER_WEIGHT), np.nan)
        return n, rate, prior


def log_loss(click: np.ndarray, rate: np.ndarray) -> float:
    """Mean binary log-loss of the probabilities `rate` (clipped to [1e-6, 1 - 1e-6]) over the rows
    where it is defined (+inf where none is)."""
    defined = np.isfinite(rate)
    if not defined.any():
        return float("inf")
    p, y = np.clip(rate[defined], 1e-6, 1 - 1e-6), click[defined]
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def choose_cuts(
    cuts: dict[int, _CutRates], user: np.ndarray, fold: np.ndarray, click: np.ndarray, groups: dict[int, np.ndarray],
    n_folds: int,
) -> tuple[list[tuple[int, ...]], list[dict[int, float]]]:
    """The kept cuts (coarse first) and every candidate's log-loss, per slot: slot f < n_folds for
    the rows of fold f, slot n_folds for the scored rows.

    Slot f is chosen on the fit rows outside fold f alone, each scored without its own fold and
    without fold f: fold f's clicks never reach the choice its own rows are given (the leak probe
    shuffles a fold's labels and expects its rows' features unchanged). The scored rows' slot
    reads every fit row, each scored without its own fold.
    """
    kept, losses = [], []
    for slot in range(n_folds + 1):
        rows = fold != slot
        slot_fold = np.full(int(rows.sum()), slot if slot < n_folds else -1, dtype=np.int64)
        loss = {}
        for n_groups, cut in cuts.items():
            _, rate, prior = cut.at(user[rows], groups[n_groups][rows], fold[rows], slot_fold)
            # a row without a group rate is scored by what stands in for it: the user's prior
            loss[n_groups] = log_loss(click[rows], np.where(np.isfinite(rate), rate, prior))
        best = sorted(sorted(loss, key=lambda n: (loss[n], n))[: len(CUTS)])
        kept.append(tuple(best + best[-1:] * (len(CUTS) - len(best))))  # one candidate: it is both
        losses.append(loss)
    return kept, losses


def compute_user_visual_group_affinity(con: duckdb.DuckDBPyConnection, out: Path, log: GroupLog = QUIET) -> int:
    index, groups, n_clusters = photo_groups(con)
    if not groups:
        log(f"user_visual_group_affinity: {n_clusters} finest clusters are too few to merge: every value is null")
        return _write_nulls(con, out)
    log(f"user_visual_group_affinity: {n_clusters} finest clusters, candidate cuts {sorted(groups)} groups")
    written = 0
    with BackgroundParquetWriter(out, SCHEMA, compression="zstd") as writer:
        for setup, folds in setups(con):
            n_folds = max(max(folds) + 1, 1)
            history = fetch(con, "select fold, user_id, photo_id, click from label_history where setup = ?", [setup])
            rows = fetch(con, "select row_id, fold, user_id, photo_id from model_rows where setup = ?", [setup])
            if len(history["fold"]) and (history["fold"].min() < 0 or history["fold"].max() >= n_folds):
                raise ValueError(f"label_history: setup {setup} has fit rows outside folds 0..{n_folds - 1}")
            user_index = IdIndex(np.unique(np.concatenate([history["user_id"], rows["user_id"]])))
            n_users = len(user_index.sorted_ids)
            user = user_index.positions(history["user_id"], "label_history: unknown user_id(s)")
            fold = history["fold"].astype(np.int64)
            click = history["click"].astype(np.float64)
            photo = index.positions(history["photo_id"], "label_history: photo_id(s) with no reduced visual vector")
            of_history = {n: of_photo[photo] for n, of_photo in groups.items()}
            cuts = {n: _CutRates(user, fold, click, of_history[n], n_users, n, n_folds) for n in groups}
            kept, losses = choose_cuts(cuts, user, fold, click, of_history, n_folds)
            del history, user, fold, click, photo, of_history
            for slot, (chosen, loss) in enumerate(zip(kept, losses)):
                log.debug(
                    f"user_visual_group_affinity: {setup}, "
                    + (f"fold {slot}" if slot < n_folds else "scored rows")
                    + ": out-of-fold log-loss by cut "
                    + ", ".join(f"{n} groups {loss[n]:.5f}" for n in sorted(loss))
                    + f"; kept {chosen[0]} (coarse) and {chosen[1]} (fine)"
                )
            row_user = user_index.positions(rows["user_id"], "model_rows: unknown user_id(s)")
            row_photo = index.positions(rows["photo_id"], "model_rows: photo_id(s) with no reduced visual vector")
            row_fold = rows["fold"].astype(np.int64)
            row_slot = np.where(row_fold < 0, n_folds, row_fold)
            for start in range(0, len(row_fold), ROW_CHUNK):
                part = slice(start, start + ROW_CHUNK)
                u, f, s, p = row_user[part], row_fold[part], row_slot[part], row_photo[part]
                columns = {
                    "setup": pa.repeat(pa.scalar(setup, pa.string()), len(f)),
                    "row_id": pa.array(rows["row_id"][part], pa.int64()),
                }
                for position, cut in enumerate(CUTS):
                    impressions, click_rate = np.full(len(f), np.nan), np.full(len(f), np.nan)
                    chosen = np.array([k[position] for k in kept])[s]
                    for n_groups in np.unique(chosen):
                        at = chosen == n_groups
                        n, rate, _ = cuts[n_groups].at(u[at], groups[n_groups][p[at]], f[at])
                        impressions[at], click_rate[at] = n, rate
                    columns[f"user_visual_group_impressions_{cut}"] = float32_column(impressions)
                    columns[f"user_visual_group_click_rate_{cut}"] = float32_column(click_rate)
                writer.write_table(pa.table(columns, schema=SCHEMA))
                written += len(f)
            log(f"user_visual_group_affinity: {setup} done ({n_users:,} users, {written:,} rows so far)")
    return written


def _write_nulls(con: duckdb.DuckDBPyConnection, out: Path) -> int:
    written = 0
    with BackgroundParquetWriter(out, SCHEMA, compression="zstd") as writer:
        for setup, _ in setups(con):
            row_id = fetch(con, "select row_id from model_rows where setup = ?", [setup])["row_id"]
            columns = {"setup": pa.repeat(pa.scalar(setup, pa.string()), len(row_id)), "row_id": pa.array(row_id, pa.int64())}
            for name in SCHEMA.names[2:]:
                columns[name] = pa.nulls(len(row_id), pa.float32())
            writer.write_table(pa.table(columns, schema=SCHEMA))
            written += len(row_id)
    return written


GROUP = TableModel(
    name="user_visual_group_affinity",
    layer="features",
    description=(
        "The user's click rate on coarse visual groups: the finest KMeans clusters' centres merged by "
        "average linkage, cut where the fit rows' out-of-fold log-loss is lowest (two cuts kept, "
        "coarse and fine), smoothed toward the user's own rate (10 pseudo-impressions). Pools a user's "
        "rate over every cluster of one visual mode. Label statistics, out of fold."
    ),
    grain=("setup", "row_id"),
    upstream=("label_history", "model_rows", "pca_visual_features", "video_clusters"),
    continuous=tuple(f"user_visual_group_{stat}_{cut}" for cut in CUTS for stat in ("impressions", "click_rate")),
    compute=compute_user_visual_group_affinity,
    driver_only=(
        "the merge of the finest centres and the choice of cuts are small (hundreds of centres); the "
        "rates are a grouped count a SQL definition could carry over a written photo-to-group table, "
        "not yet written"
    ),
)
