"""session_context: how the row's photo looks next to what the same user was shown in the minutes
around it, before it and after it, read from the impression log (no labels).

A feed that follows what the user is after right now fills those minutes with covers alike, so a
photo like its neighbours is one the feed chose for the moment; and a feed that reacts to a click
shows, in the minutes after it, covers like the clicked one, so a photo like what came after it
is one the user probably clicked. A feed blind to both gives cosines that say nothing, and the
model learns to ignore them. Per row and window: the cosine between the photo's reduced visual
vector and the sum of the unit vectors of the user's other impressions in the row's own log
(train rows from the train log, test rows from the test log, which is given in full at
prediction time). The windows (WINDOWS): 2 and 10 minutes either side of the row's time (the
row itself left out; rows at the same time, one screen, included), and 2 and 10 minutes
strictly before and strictly after it. A window with no other impression, a sum of zero or a
photo whose vector is zero or missing gives a null.

Its definition, what Spark runs, is dbt_like_sql/features/session_context.sql (window sums, one
per component and window). This is the fast path DuckDB runs, with no loop over users or rows:

- the log is read in (split, user_id, time, row_id) order, and cut into chunks of whole
  (split, user) timelines of at most ROWS_PER_CHUNK rows (a longer timeline is a chunk alone);
- in a chunk, each row's unit vector (float64) and their running sum P (a zero row first); rows
  are keyed (the timeline's number in the chunk << 41) | (time - the chunk's earliest time), so a
  window's rows are one range [lo, hi) of the sorted keys (np.searchsorted), clamped to the row's
  timeline, and their sum is P[hi] - P[lo] (less the row's own vector when the window holds it);
- the table is written in row_id order.

Memory: per chunk about 2 KB a row at 64 components (the vectors, their running sum, one window's
sums and a gathered copy), about 400 MB at the default chunk; plus the photos' unit vectors (8
bytes a component) and some 100 bytes a row of the whole log for its ids and results.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kuai_assets.features.id_index import IdIndex
from kuai_assets.features.spec import TableModel


@dataclass(frozen=True)
class Window:
    """The impressions of the row's timeline whose time t' satisfies, for the row's time t:
    `around`: |t' - t| <= ms, the row itself left out; `before`: t - ms <= t' < t;
    `after`: t < t' <= t + ms."""

    name: str
    side: str  # around | before | after
    ms: int

    @property
    def column(self) -> str:
        return f"session_cosine_{self.name}"


MINUTE_MS = 60_000
WINDOWS = (
    Window("2min", "around", 2 * MINUTE_MS),
    Window("10min", "around", 10 * MINUTE_MS),
    *(Window(f"{side}_{minutes}min", side, minutes * MINUTE_MS) for side in ("before", "after") for minutes in (2, 10)),
)
ROWS_PER_CHUNK = 200_000  # at most this many rows per chunk of whole timelines (a longer timeline is a chunk alone)
TIME_BITS = 41  # times from the chunk's earliest fit in 41 bits (70 years in ms)
MIN_SUM_LENGTH = 1e-9  # a window whose vectors sum to less is treated as empty
COLUMNS = tuple(w.column for w in WINDOWS)


def unit_vectors(con: duckdb.DuckDBPyConnection) -> tuple[IdIndex, np.ndarray]:
    """Each photo's reduced vector at unit length (float64; a zero vector stays zero), and the
    photo_id index of their rows."""
    table = con.sql("select * exclude (split) from pca_visual_features order by photo_id").to_arrow_table()
    names = [c for c in table.column_names if c.startswith("pc_")]
    vectors = np.column_stack([table.column(c).to_numpy().astype(np.float64) for c in names])
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return IdIndex(table.column("photo_id").to_numpy()), vectors


def chunk_bounds(timeline_starts: np.ndarray, rows: int, rows_per_chunk: int) -> list[tuple[int, int]]:
    """[start, end) ranges of at most rows_per_chunk rows that never split a timeline (a timeline
    longer than that is a chunk of its own)."""
    bounds, start = [], 0
    while start < rows:
        if start + rows_per_chunk >= rows:
            end = rows
        else:
            end = int(timeline_starts[np.searchsorted(timeline_starts, start + rows_per_chunk, side="right") - 1])
            if end <= start:  # the timeline at start is longer than a chunk
                after = np.searchsorted(timeline_starts, start, side="right")
                end = int(timeline_starts[after]) if after < len(timeline_starts) else rows
        bounds.append((start, end))
        start = end
    return bounds


def session_cosines(
    timeline: np.ndarray, time: np.ndarray, vectors: np.ndarray, present: np.ndarray
) -> dict[str, np.ndarray]:
    """The columns for rows sorted by (timeline, time), with their unit vectors (zero where the
    photo has none) and whether each has one of unit length."""
    key = ((timeline - timeline[0]).astype(np.int64) << TIME_BITS) | (time - time.min())
    first = np.searchsorted(timeline, timeline, side="left")
    end = np.searchsorted(timeline, timeline, side="right")
    running = np.zeros((len(key) + 1, vectors.shape[1]))
    np.cumsum(vectors, axis=0, out=running[1:])
    at_time_first = np.searchsorted(key, key, side="left")  # the first row at the row's time
    at_time_end = np.searchsorted(key, key, side="right")  # after the last row at the row's time
    out = {}
    for window in WINDOWS:
        if window.side == "after":
            lo = at_time_end
        else:
            lo = np.maximum(np.searchsorted(key, key - window.ms, side="left"), first)
        if window.side == "before":
            hi = at_time_first
        else:
            hi = np.minimum(np.searchsorted(key, key + window.ms, side="right"), end)
        others = running[hi]
        others -= running[lo]
        if window.side == "around":
            others -= vectors
            rows_in_window = hi - lo - 1
        else:
            rows_in_window = hi - lo
        length = np.linalg.norm(others, axis=1)
        dot = np.einsum("ij,ij->i", others, vectors)
        keep = (rows_in_window > 0) & (length > MIN_SUM_LENGTH) & present
        out[window.column] = np.where(keep, dot / np.where(keep, length, 1.0), np.nan)
    return out


def compute_session_context(
    con: duckdb.DuckDBPyConnection, out: Path, log: Callable[[str], None] = lambda m: None
) -> int:
    index, unit = unit_vectors(con)
    log_rows = con.sql(
        "select row_id, user_id, time, photo_id, split = 'test' as is_test from raw_interactions "
        "order by split, user_id, time, row_id"
    ).fetchnumpy()
    rows = len(log_rows["row_id"])
    user, is_test = log_rows["user_id"], log_rows["is_test"]
    changes = np.flatnonzero((user[1:] != user[:-1]) | (is_test[1:] != is_test[:-1])) + 1
    timeline_starts = np.concatenate([[0], changes]).astype(np.int64)
    timeline = np.zeros(rows, dtype=np.int64)
    timeline[changes] = 1
    np.cumsum(timeline, out=timeline)
    position, found = index.lookup(log_rows["photo_id"])
    results = {c: np.empty(rows, dtype=np.float32) for c in COLUMNS}
    for start, end in chunk_bounds(timeline_starts, rows, ROWS_PER_CHUNK):
        vectors = np.where(found[start:end, None], unit[position[start:end]], 0.0)
        present = np.linalg.norm(vectors, axis=1) > 0.5
        part = session_cosines(timeline[start:end], log_rows["time"][start:end].astype(np.int64), vectors, present)
        for c in COLUMNS:
            results[c][start:end] = part[c]
    order = np.argsort(log_rows["row_id"], kind="stable")
    table = pa.table(
        {"row_id": pa.array(log_rows["row_id"][order])}
        | {c: pa.array(results[c][order], mask=np.isnan(results[c][order])) for c in COLUMNS}
    )
    pq.write_table(table, out)
    log(f"session_context: {rows:,} rows in {len(timeline_starts):,} timelines")
    return rows


GROUP = TableModel(
    name="session_context",
    layer="features",
    description="Session context: the row's photo against what its user was shown in the minutes around it "
    "(the definition and its full description: dbt_like_sql/features/session_context.sql).",
    grain=("row_id",),
    upstream=("pca_visual_features", "raw_interactions"),
    continuous=COLUMNS,
    uses_scored_window_log=True,
    compute=compute_session_context,
)
