"""Label statistics out of fold, by dense counting in numpy.

A label statistic (a user's click rate, a cluster's, a user's on a cluster) is summed over the
fit rows by (fold, cell), where a cell is a user, a cluster or a (user, cluster) pair numbered
densely. A fit row then sees its cell's total minus its own fold's part, and a scored row
(fold -1) the whole total. Each sum is one `np.bincount`: linear in the rows, no sort, no hash
table. The (user, cluster) cells are counted for one chunk of users at a time, which bounds the
arrays whatever the number of users.

Why not SQL on one machine: there the same statistics are hash aggregations into tens of
millions of groups and a hash join per statistic per row, several times slower and spilling at
the final size (BENCHMARKS.md). The SQL definitions stay the portable ones.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kuai_assets.features.id_index import IdIndex
from kuai_assets.storage import check_identifier

FETCH_BATCH_ROWS = 1_000_000
CELLS_PER_CHUNK = 10_000_000  # (fold, user, cluster) cells counted at once: 80 MB per sum


class FoldSums:
    """Sums of values by (fold, cell) over fit rows; read back out of fold."""

    def __init__(self, fold: np.ndarray, cell: np.ndarray, n_folds: int, n_cells: int, **values: np.ndarray):
        key = fold.astype(np.int64) * n_cells + cell
        size = n_folds * n_cells
        self.n_cells, self.n_folds = n_cells, n_folds
        self._outside: dict[str, np.ndarray] | None = None
        # part[name][fold * n_cells + cell]: the cell's sum over one fold's rows
        self.part = {"n": np.bincount(key, minlength=size).astype(np.float64)}
        for name, value in values.items():
            self.part[name] = np.bincount(key, weights=value, minlength=size)
        self.total = {name: part.reshape(n_folds, n_cells).sum(axis=0) for name, part in self.part.items()}

    def seen(self, cell: np.ndarray) -> np.ndarray:
        """Whether the cell has any fit row, in any fold."""
        return self.total["n"][cell] > 0

    def out_of_fold(self, fold: np.ndarray | int, cell: np.ndarray) -> dict[str, np.ndarray]:
        """Each sum at the cell without the row's own fold (all of it for fold -1)."""
        if np.isscalar(fold):
            if fold < 0:
                return {name: total[cell] for name, total in self.total.items()}
            own = fold * self.n_cells + cell
            return {name: total[cell] - self.part[name][own] for name, total in self.total.items()}
        if self._outside is None:
            # outside[name][slot * n_cells + cell]: the cell's sum without fold `slot`, the last
            # slot (fold -1) the whole sum: one read per row and sum, the subtraction done per cell
            self._outside = {
                name: np.concatenate([(total - self.part[name].reshape(self.n_folds, self.n_cells)).ravel(), total])
                for name, total in self.total.items()
            }
        slot = np.where(fold < 0, self.n_folds, fold).astype(np.int64) * self.n_cells + cell
        return {name: outside[slot] for name, outside in self._outside.items()}


class PhotoClusters:
    """Every photo's cluster at each k of video_clusters (by increasing k), numbered densely.

    codes(photo_id)[i] holds each photo's dense cluster code at ks[i] (-1: no cluster at that k);
    clusters[i][code] is the cluster id behind a code.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection):
        table = con.sql("select photo_id, k, cluster from video_clusters").fetchnumpy()
        photo_id, k, cluster = (np.asarray(table[c], dtype=np.int64) for c in ("photo_id", "k", "cluster"))
        del table
        self.index = IdIndex(distinct_sorted(photo_id))
        self.ks = [int(v) for v in np.unique(k)]
        self.clusters, self._codes = [], []
        position = self.index.lookup(photo_id)[0]
        for level in self.ks:
            at = k == level
            per_photo = np.bincount(position[at], minlength=len(self.index.sorted_ids))
            if (per_photo > 1).any():
                repeated = self.index.sorted_ids[np.flatnonzero(per_photo > 1)[0]]
                raise ValueError(f"video_clusters: photo_id {repeated} has more than one cluster at k={level}")
            clusters = distinct_sorted(cluster[at])
            code = np.full(len(self.index.sorted_ids), -1, np.int32)
            code[position[at]] = IdIndex(clusters).lookup(cluster[at])[0]
            self.clusters.append(clusters)
            self._codes.append(code)

    def codes(self, photo_id: np.ndarray) -> list[np.ndarray]:
        pos, found = self.index.lookup(photo_id)
        if found.all():
            return [code[pos] for code in self._codes]
        return [np.where(found, code[pos], np.int32(-1)) for code in self._codes]


def distinct_sorted(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted: by marking them in a table when they are dense small
    integers (ids usually are; linear time), else by sorting."""
    if len(values) and values.min() >= 0 and values.max() < 4 * len(values) + 1_000_000:
        present = np.zeros(int(values.max()) + 1, bool)
        present[values] = True
        return np.flatnonzero(present).astype(values.dtype)
    return np.unique(values)


class BackgroundParquetWriter:
    """A ParquetWriter that encodes and compresses each table on a second thread while the
    caller computes the next one (pyarrow releases the GIL); at most one table waits."""

    def __init__(self, path: Path, schema: pa.Schema, **options):
        self._writer = pq.ParquetWriter(path, schema, **options)
        self._pool = ThreadPoolExecutor(1)
        self._pending: Future | None = None

    def write_table(self, table: pa.Table) -> None:
        self._wait()
        self._pending = self._pool.submit(self._writer.write_table, table)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> "BackgroundParquetWriter":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._wait()
        finally:
            self._pool.shutdown()
            self._writer.close()


def setups(con: duckdb.DuckDBPyConnection) -> list[tuple[str, list[int]]]:
    """Each setup of model_rows with its folds (-1 for the scored rows), sorted."""
    rows = con.execute("select setup, list(distinct fold order by fold) from model_rows group by setup order by setup")
    return [(setup, [int(f) for f in folds]) for setup, folds in rows.fetchall()]


def fetch(con: duckdb.DuckDBPyConnection, query: str, params: list | None = None) -> dict[str, np.ndarray]:
    """A query's columns as numpy arrays (the columns must have no nulls).

    The result is streamed in batches and each column joined on its own, so the rows are held
    about once (fetching all of it at once held the result twice: DuckDB's copy and numpy's).
    """
    reader = con.sql(query, params=params or []).to_arrow_reader(FETCH_BATCH_ROWS)
    parts: dict[str, list[np.ndarray]] = {field.name: [] for field in reader.schema}
    for batch in reader:
        for field, column in zip(reader.schema, batch.columns):
            if column.null_count:
                raise ValueError(f"{field.name} has null(s) where a value is required ({query[:80]}...)")
            parts[field.name].append(column.to_numpy(zero_copy_only=False))
    columns = {}
    for field in reader.schema:
        pieces = parts.pop(field.name)
        columns[field.name] = np.concatenate(pieces) if pieces else np.empty(0, field.type.to_pandas_dtype())
        del pieces
    return columns


@dataclass
class FitRows:
    """One setup's fit rows (label_history), users numbered densely in user_id order."""

    users: np.ndarray  # the distinct user_ids, sorted: user code i is users[i]
    user_index: IdIndex
    user: np.ndarray  # int32 user code per row
    fold: np.ndarray  # int32
    click: np.ndarray  # float64
    playing: np.ndarray  # float64, the label_history column `playing_column`
    cluster: list[np.ndarray]  # the photo's dense cluster code at each k of PhotoClusters.ks


def fit_rows(con: duckdb.DuckDBPyConnection, setup: str, photo_clusters: PhotoClusters, playing_column: str) -> FitRows:
    """One setup's fit rows from label_history; `playing` is its column `playing_column`
    (playing_time as logged, or playing_seconds, capped)."""
    users = con.sql(
        "select distinct user_id from label_history where setup = ? order by user_id", params=[setup]
    ).fetchnumpy()["user_id"]
    users = np.asarray(users, dtype=np.int64)
    user_index = IdIndex(users)
    history = fetch(
        con, f"select fold, user_id, photo_id, click, {check_identifier(playing_column, 'column')} as playing "
        "from label_history where setup = ?", [setup]
    )
    return FitRows(
        users=users,
        user_index=user_index,
        user=user_index.positions(history.pop("user_id"), "label_history: user_id(s) not among its own users").astype(np.int32),
        fold=history.pop("fold").astype(np.int32),
        click=history.pop("click").astype(np.float64),
        playing=history.pop("playing").astype(np.float64),
        cluster=photo_clusters.codes(history.pop("photo_id")),
    )


class UserChunks:
    """Ranges of dense user codes, each with at most CELLS_PER_CHUNK cells (at least one user)."""

    def __init__(self, n_users: int, cells_per_user: int):
        self.width = max(1, CELLS_PER_CHUNK // max(1, cells_per_user))
        self.ranges = [(start, min(start + self.width, n_users)) for start in range(0, n_users, self.width)]

    def __len__(self) -> int:
        return len(self.ranges)

    def positions(self, user: np.ndarray, known: np.ndarray | None = None) -> list[np.ndarray]:
        """Per range, the positions of the rows whose user code falls in it, ascending; one more
        list at the end: the rows whose user is not `known`."""
        part = user // self.width
        if known is not None:
            part = np.where(known, part, len(self.ranges))
        return positions_by_part(part, len(self.ranges) + 1)


def positions_by_part(part: np.ndarray, n_parts: int) -> list[np.ndarray]:
    """For each p < n_parts, the positions i with part[i] == p, ascending: one counting sort
    (a stable radix sort of small keys) instead of a mask over every row per part."""
    keys = part.astype(np.uint16) if n_parts <= 1 << 16 else part
    order = np.argsort(keys, kind="stable")
    if len(order) < 2**31:
        order = order.astype(np.int32)
    ends = np.cumsum(np.bincount(part, minlength=n_parts))
    return np.split(order, ends[:-1])


def float32_column(values: np.ndarray) -> pa.Array:
    """float32 with nulls where the value is not finite (an empty mean, a division by zero)."""
    values = values.astype(np.float32)
    return pa.array(values, mask=~np.isfinite(values))
