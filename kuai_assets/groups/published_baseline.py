"""published_baseline: the published top-10 recipe's features, for the `baseline` model.

Per row: the user's mean click and playing_time and history rows; the mean click and
playing_time of the photo's cluster and of the user on that cluster, at the coarsest and the
finest k (100 and 500 by default), the pair falling back to the user's mean when the user has no
history on it; the hour and the duration. Label statistics, out of fold: a fit row's statistics
leave out its own fold, a scored row's (fold -1) use every fit row of its setup. Off in the full
model. Counted densely per chunk of users (see fold_statistics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa

from kuai_assets.features.spec import TableModel
from kuai_assets.features.fold_statistics import (
    BackgroundParquetWriter,
    FoldSums,
    PhotoClusters,
    UserChunks,
    fetch,
    fit_rows,
    float32_column,
    setups,
)
from kuai_assets.features.id_index import IdIndex

HOUR_MS = 3_600_000
FEATURES = (
    "baseline_user_click",
    "baseline_user_playing_time",
    "baseline_user_rows",
    "baseline_cluster_click_coarse",
    "baseline_cluster_playing_time_coarse",
    "baseline_cluster_click_fine",
    "baseline_cluster_playing_time_fine",
    "baseline_user_cluster_click_coarse",
    "baseline_user_cluster_playing_time_coarse",
    "baseline_user_cluster_click_fine",
    "baseline_user_cluster_playing_time_fine",
    "baseline_hour",
    "baseline_duration_time",
)
SCHEMA = pa.schema([("setup", pa.string()), ("row_id", pa.int64())] + [(name, pa.float32()) for name in FEATURES])


def _means(sums: FoldSums, fold: np.ndarray, cell: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, ...]:
    """(rows, mean click, mean playing_time) out of fold; NaN where unknown, means NaN on no rows."""
    if sums.n_cells == 0:  # nobody to learn from (a setup without fit rows)
        nothing = np.full(len(cell), np.nan)
        return nothing, nothing, nothing
    cell = np.where(known, cell, 0)
    known = known & sums.seen(cell)
    seen = sums.out_of_fold(fold, cell)
    n = np.where(known, seen["n"], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        click = np.where(n > 0, seen["clicks"] / n, np.nan)
        playing = np.where(n > 0, seen["playing"] / n, np.nan)
    return n, click, playing


class Durations:
    """duration_time of every interaction by row_id: a lookup, not a join per setup (at 60M rows
    DuckDB's join of model_rows to raw_interactions cost about 12 s per setup)."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        table = fetch(con, "select row_id, duration_time from raw_interactions")
        row_id, duration = table.pop("row_id"), table.pop("duration_time").astype(np.float64)
        self.index = None
        if not len(row_id) or (row_id.min() >= 0 and row_id.max() < 4 * len(row_id) + 1_000_000):
            # dense row_ids, as raw_interactions numbers them: one slot per id, NaN where none
            self.by_row_id = np.full(int(row_id.max()) + 1 if len(row_id) else 0, np.nan)
            self.by_row_id[row_id] = duration
        else:
            order = np.argsort(row_id)
            self.index, self.by_row_id = IdIndex(row_id[order]), duration[order]

    def of(self, row_id: np.ndarray) -> np.ndarray:
        error = "model_rows: row_id(s) not in raw_interactions"
        if self.index is not None:
            return self.by_row_id[self.index.positions(row_id, error)]
        inside = (row_id >= 0) & (row_id < len(self.by_row_id))
        duration = self.by_row_id[np.where(inside, row_id, 0)] if len(self.by_row_id) else np.full(len(row_id), np.nan)
        missing = ~inside | np.isnan(duration)
        if missing.any():
            raise ValueError(f"{error}: {row_id[missing][:5].tolist()}")
        return duration


def _coalesce(value: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(value), fallback, value)


def _write_setup(
    con: duckdb.DuckDBPyConnection, writer: BackgroundParquetWriter, setup: str, folds: list[int],
    photo_clusters: PhotoClusters, levels: dict[str, int], n_clusters: dict[str, int], durations: Durations,
) -> tuple[int, int]:
    """Write one setup's rows; return (rows written, chunks of users). Its arrays are freed on return."""
    written = 0
    n_folds = max(max(folds) + 1, 1)
    history = fit_rows(con, setup, photo_clusters, "playing_time")
    users, user_index, user, fold = history.users, history.user_index, history.user, history.fold
    values = {"clicks": history.click, "playing": history.playing}
    cluster = {name: history.cluster[level] for name, level in levels.items()}
    del history
    per_user = FoldSums(fold, user, n_folds, len(users), **values)
    per_cluster = {}
    for name in levels:
        has = cluster[name] >= 0
        per_cluster[name] = FoldSums(
            fold[has], cluster[name][has], n_folds, n_clusters[name], **{v: a[has] for v, a in values.items()}
        )

    rows = fetch(con, "select row_id, fold, user_id, photo_id, time from model_rows where setup = ?", [setup])
    rows["duration_time"] = durations.of(rows["row_id"])
    row_user, row_user_known = user_index.lookup(rows.pop("user_id"))
    row_user = row_user.astype(np.int32)
    row_fold = rows.pop("fold").astype(np.int32)
    codes = photo_clusters.codes(rows.pop("photo_id"))
    row_cluster = {name: codes[level] for name, level in levels.items()}
    del codes

    # rows of users with history, one chunk of users at a time (their (user, cluster)
    # sums counted for that chunk alone); then the rows of users without history
    chunks = UserChunks(len(users), n_folds * max(n_clusters.values()))
    history_of_chunk = chunks.positions(user)[:-1]
    rows_of_chunk = chunks.positions(row_user, row_user_known)
    for (start, stop), in_chunk, selected in zip(
        chunks.ranges + [(None, None)], history_of_chunk + [None], rows_of_chunk
    ):
        if not len(selected):
            continue
        r_fold, r_user, r_known = row_fold[selected], row_user[selected], row_user_known[selected]
        user_n, user_click, user_playing = _means(per_user, r_fold, r_user, r_known)
        columns = {
            "baseline_user_click": user_click,
            "baseline_user_playing_time": user_playing,
            "baseline_user_rows": user_n,
        }
        for name in levels:
            code = row_cluster[name][selected]
            has = code >= 0
            _, click, playing = _means(per_cluster[name], r_fold, code, has)
            columns[f"baseline_cluster_click_{name}"] = click
            columns[f"baseline_cluster_playing_time_{name}"] = playing
            if in_chunk is None:
                pair_click = pair_playing = np.full(len(selected), np.nan)
            else:
                h_has = in_chunk[cluster[name][in_chunk] >= 0]
                per_pair = FoldSums(
                    fold[h_has], (user[h_has] - start) * n_clusters[name] + cluster[name][h_has], n_folds,
                    (stop - start) * n_clusters[name], **{v: a[h_has] for v, a in values.items()},
                )
                _, pair_click, pair_playing = _means(
                    per_pair, r_fold, (r_user - start) * n_clusters[name] + code, has
                )
            # an unseen (user, cluster) pair falls back to the user's mean
            columns[f"baseline_user_cluster_click_{name}"] = np.where(
                has, _coalesce(pair_click, user_click), np.nan
            )
            columns[f"baseline_user_cluster_playing_time_{name}"] = np.where(
                has, _coalesce(pair_playing, user_playing), np.nan
            )
        time = rows["time"][selected]
        hours = np.where(time >= 0, time // HOUR_MS, -(-time // HOUR_MS))  # truncated, as in SQL
        columns["baseline_hour"] = np.fmod(hours, 24).astype(np.float64)
        columns["baseline_duration_time"] = rows["duration_time"][selected].astype(np.float64)
        writer.write_table(
            pa.table(
                [pa.repeat(pa.scalar(setup, pa.string()), len(selected)), pa.array(rows["row_id"][selected])]
                + [float32_column(columns.pop(name)) for name in FEATURES],
                schema=SCHEMA,
            )
        )
        written += len(selected)
    return written, len(chunks)


def compute_published_baseline(
    con: duckdb.DuckDBPyConnection, out: Path, log: Callable[[str], None] = lambda m: None
) -> int:
    photo_clusters = PhotoClusters(con)
    if not photo_clusters.ks:
        raise ValueError("video_clusters is empty: published_baseline needs the photos' clusters")
    levels = {"coarse": 0, "fine": len(photo_clusters.ks) - 1}  # the smallest and the largest k
    n_clusters = {name: len(photo_clusters.clusters[level]) for name, level in levels.items()}
    durations = Durations(con)
    written = 0
    with BackgroundParquetWriter(out, SCHEMA, compression="zstd", use_dictionary=["setup"]) as writer:
        for setup, folds in setups(con):
            n_rows, n_chunks = _write_setup(con, writer, setup, folds, photo_clusters, levels, n_clusters, durations)
            written += n_rows
            log(f"published_baseline: {setup} done ({n_chunks} chunk(s) of users), {written:,} rows so far")
    return written


GROUP = TableModel(
    name="published_baseline",
    layer="features",
    description=(
        "The published top-10 recipe's features, for the `baseline` model: the user's mean click and "
        "playing_time and history rows; the mean click and playing_time of the photo's cluster and of "
        "the user on it at the coarsest and finest k (falling back to the user's mean for an unseen "
        "pair); hour and duration. Label statistics, out of fold. Off in the full model."
    ),
    grain=("setup", "row_id"),
    upstream=("label_history", "model_rows", "raw_interactions", "video_clusters"),
    continuous=FEATURES,
    enabled_by_default=False,
    compute=compute_published_baseline,
)
