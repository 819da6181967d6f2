"""user_cluster_affinity: the user's click rate on each visual cluster, at every k, out of fold.

This is the bridge to unseen test photos: a new photo lands in clusters the user already has
history on. For each (setup, fold, user, k, cluster) with out-of-fold history: the impressions,
the click rate smoothed toward the user's own rate (10 pseudo-impressions), that rate over the
user's rate (lift), and the mean playing seconds (label_history's playing_seconds, capped).
The user's rate is itself smoothed toward the population's (20 pseudo-impressions). A fold's
statistics leave out its own fit rows; fold -1 (the scored rows) sees all of them.

The grain is the cluster, not the row: training_matrix joins it once per k through the photo's
cluster. Counted densely per chunk of users (see fold_statistics).
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
    fit_rows,
    float32_column,
    setups,
)

POPULATION_WEIGHT = 20  # pseudo-impressions pulling the user's rate toward the population's
USER_WEIGHT = 10  # pseudo-impressions pulling the (user, cluster) rate toward the user's

SCHEMA = pa.schema(
    [
        pa.field("setup", pa.string(), nullable=False),
        pa.field("fold", pa.int32(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("k", pa.int32(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
        ("user_cluster_impressions", pa.float32()),
        ("user_cluster_click_rate", pa.float32()),
        ("user_cluster_click_lift", pa.float32()),
        ("user_cluster_playing_seconds", pa.float32()),
    ]
)


def _write_setup(
    con: duckdb.DuckDBPyConnection, writer: BackgroundParquetWriter, setup: str, folds: list[int],
    photo_clusters: PhotoClusters,
) -> tuple[int, int]:
    """Write one setup's rows; return (rows written, chunks of users). Its arrays are freed on return."""
    written = 0
    n_folds = max(max(folds) + 1, 1)
    history = fit_rows(con, setup, photo_clusters, "playing_seconds")
    users, user, fold = history.users, history.user, history.fold
    click, playing, cluster = history.click, history.playing, history.cluster
    del history

    # the user's prior at each k, per fold of the output: rows (folds), columns (users)
    priors = []
    for code in cluster:
        has = code >= 0
        per_user = FoldSums(fold[has], user[has], n_folds, len(users), clicks=click[has])
        prior = np.full((len(folds), len(users)), np.nan)
        for slot, f in enumerate(folds):
            seen = per_user.out_of_fold(f, np.arange(len(users)))
            impressions = seen["n"].sum()
            population = seen["clicks"].sum() / impressions if impressions > 0 else np.nan
            prior[slot] = (seen["clicks"] + POPULATION_WEIGHT * population) / (seen["n"] + POPULATION_WEIGHT)
        priors.append(prior)

    widest = max((len(c) for c in photo_clusters.clusters), default=1)
    chunks = UserChunks(len(users), n_folds * widest)
    for (start, stop), in_chunk in zip(chunks.ranges, chunks.positions(user)):
        chunk_user, chunk_fold = user[in_chunk] - start, fold[in_chunk]
        chunk_click, chunk_playing = click[in_chunk], playing[in_chunk]
        for level, k in enumerate(photo_clusters.ks):
            n_clusters = len(photo_clusters.clusters[level])
            code = cluster[level][in_chunk]
            has = code >= 0
            sums = FoldSums(
                chunk_fold[has], chunk_user[has] * n_clusters + code[has], n_folds,
                (stop - start) * n_clusters, clicks=chunk_click[has], playing=chunk_playing[has],
            )
            cells = np.flatnonzero(sums.total["n"] > 0)
            for slot, f in enumerate(folds):
                seen = sums.out_of_fold(f, cells)
                kept = seen["n"] > 0
                n, clicks, playing_sum = seen["n"][kept], seen["clicks"][kept], seen["playing"][kept]
                local_user, cluster_code = np.divmod(cells[kept], n_clusters)
                prior = priors[level][slot, start + local_user]
                with np.errstate(invalid="ignore", divide="ignore"):
                    rate = (clicks + USER_WEIGHT * prior) / (n + USER_WEIGHT)
                    lift = rate / prior
                rows = len(n)
                writer.write_table(
                    pa.table(
                        [
                            pa.repeat(pa.scalar(setup, pa.string()), rows),
                            pa.repeat(pa.scalar(f, pa.int32()), rows),
                            pa.array(users[start + local_user]),
                            pa.repeat(pa.scalar(k, pa.int32()), rows),
                            pa.array(photo_clusters.clusters[level][cluster_code].astype(np.int32)),
                            float32_column(n),
                            float32_column(rate),
                            float32_column(lift),
                            float32_column(playing_sum / n),
                        ],
                        schema=SCHEMA,
                    )
                )
                written += rows
    return written, len(chunks)


def compute_user_cluster_affinity(
    con: duckdb.DuckDBPyConnection, out: Path, log: Callable[[str], None] = lambda m: None
) -> int:
    photo_clusters = PhotoClusters(con)
    written = 0
    with BackgroundParquetWriter(out, SCHEMA, compression="zstd", use_dictionary=["setup"]) as writer:
        for setup, folds in setups(con):
            n_rows, n_chunks = _write_setup(con, writer, setup, folds, photo_clusters)
            written += n_rows
            log(f"user_cluster_affinity: {setup} done ({n_chunks} chunk(s) of users), {written:,} rows so far")
    return written


GROUP = TableModel(
    name="user_cluster_affinity",
    layer="features",
    description=(
        "Visual affinity: the user's click rate on each visual cluster (at every k), smoothed toward "
        "the user's own rate (10 pseudo-impressions), with the impressions and playing seconds behind "
        "it: the bridge to unseen test photos. Label statistics, out of fold."
    ),
    grain=("setup", "fold", "user_id", "k", "cluster"),
    upstream=("label_history", "model_rows", "video_clusters"),
    continuous=(
        "user_cluster_impressions",
        "user_cluster_click_rate",
        "user_cluster_click_lift",
        "user_cluster_playing_seconds",
    ),
    compute=compute_user_cluster_affinity,
)
