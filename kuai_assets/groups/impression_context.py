"""impression_context: each row's place in the impression log itself (the signals that separated
the top teams), computed within each split's own log: train rows from the train log, test rows
from the test log, which is given in full at prediction time.

A batch is the rows of one (split, user_id, time): works shown to one user at the same time form
one screen. Per row: the batch's size and the row's 1-based place in it (rows in row_id order);
the seconds since the user's previous batch and until the next (null for the first / last
batch, flagged by is_first_batch / is_last_batch); the user's impressions in the 1 and 10
minutes before ([t - 60 s, t - 1 ms]) and after ([t + 1 ms, t + 60 s]), before the batch and
still to come in the log, and all of them per hour of the split's log (its last time minus its
first, at least one hour); the photo's impressions in the log, per hour of its exposure (last
shown minus first shown, plus one hour) and the hours since it was first shown (photo_id alone
names the log: train and test photos are disjoint).

The algorithm, with no loop over users or rows:

- per photo, over the whole log: its rows (np.bincount over photo codes), first and last time
  (np.minimum.at / np.maximum.at); photos coded through a table by photo_id;
- then one split at a time: the split's rows are streamed in row_id order; users are numbered
  densely and each row keyed by (user << bits) | (time - the split's first time), one int64;
- one stable argsort of the keys orders the rows by (user, time, row_id) (ties keep row_id order,
  and the log is nearly in that order already, which the sort exploits); the runs of equal keys
  are the batches, a row's place in its run is its position in the batch;
- over the batches (8.8 million at preliminary scale, not 24 million rows), sorted by key:
  C = the exclusive cumulative sum of batch sizes. Each user's batches are one range [first,
  end); before = C[b] - C[first], remaining = C[end] - C[b + 1]. A time window is a range of
  the same sorted keys: np.searchsorted(key, key - 60000) (clamped to the user's first batch)
  gives the first batch at or after t - 60 s, so the impressions in the previous minute are
  C[b] - C[that]; the next minute likewise with key + 60000 on the right (clamped to the
  user's end);
- the split's rows are written in row_id order, one Parquet row group per ROWS_PER_GROUP rows,
  each column gathered from the batch-level and photo-level arrays.

Everything is computed in int64 / float64 with the SQL's operations in the SQL's order (x /
1000.0, x / 3600000.0, ...) and cast to float32 last, as DuckDB's `::float` does, so the table
is identical, bit for bit, to the one of its SQL definition
(dbt_like_sql/features/impression_context.sql: batch lists and six window frames), which the Spark
engine runs. Memory: the larger split's rows cost about 20 bytes each while written (row_id, photo
code, batch, position), about 32 at the sort, and each batch about 60; Parquet encoding runs on a
second thread. BENCHMARKS.md has both paths' time and memory at each scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa

from kuai_assets.features.spec import TableModel
from kuai_assets.features.fold_statistics import FETCH_BATCH_ROWS, BackgroundParquetWriter, distinct_sorted, fetch
from kuai_assets.features.id_index import IdIndex

HOUR_MS = 3_600_000
WINDOWS = (("1min", 60_000), ("10min", 600_000))
SPLITS = ("train", "test")
ROWS_PER_GROUP = 1_048_576  # rows per write, one Parquet row group each
# dictionary-encoded: the flags and the small counts of the batch (a little smaller, hardly
# slower); dictionaries on the other columns made the write about a third slower and no smaller
DICTIONARY_COLUMNS = ["batch_size", "position_in_batch", "is_first_batch", "is_last_batch"]

CONTINUOUS = (
    "batch_size",
    "position_in_batch",
    "seconds_since_previous_batch",
    "seconds_until_next_batch",
    "impressions_previous_1min",
    "impressions_previous_10min",
    "impressions_next_1min",
    "impressions_next_10min",
    "impressions_before_in_log",
    "impressions_remaining_in_log",
    "user_impressions_per_hour",
    "photo_impressions_in_log",
    "photo_impressions_per_hour",
    "hours_since_photo_first_shown",
)
DISCRETE = ("is_first_batch", "is_last_batch")
SCHEMA = pa.schema(
    [("row_id", pa.int64())] + [(name, pa.float32()) for name in CONTINUOUS] + [(name, pa.int32()) for name in DISCRETE]
)


class PhotoExposure:
    """Each photo's rows, first and last time over the whole log (all splits), and a photo code
    (0 .. photos - 1, in photo_id order) for any photo_id of the log.

    Counted in numpy: DuckDB's hash aggregate into millions of photos took longer and kept its
    memory after the query. Photos are coded through a table by photo_id (int32, one read per
    lookup) wherever the ids are below four per row of the log (released ids are: at most 16
    bytes per row); only sparse ids (hashes, say) fall back to a binary search, which at 60
    million random lookups takes tens of seconds.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection):
        rows = fetch(con, "select photo_id, time from raw_interactions")
        photo_id, time = rows.pop("photo_id"), rows.pop("time")
        self.table: np.ndarray | None = None
        if len(photo_id) and photo_id.min() >= 0 and photo_id.max() < 4 * len(photo_id) + 1_000_000:
            present = np.zeros(int(photo_id.max()) + 1, bool)
            present[photo_id] = True
            n_photos = int(np.count_nonzero(present))
            self.table = np.full(len(present), -1, np.int32)
            self.table[present] = np.arange(n_photos, dtype=np.int32)
            del present
        else:
            self.index = IdIndex(distinct_sorted(photo_id))
            n_photos = len(self.index.sorted_ids)
        photo = self.codes(photo_id)
        del photo_id
        shown = np.bincount(photo, minlength=n_photos)
        self.first = np.full(n_photos, np.iinfo(np.int64).max)
        np.minimum.at(self.first, photo, time)
        last = np.full(n_photos, np.iinfo(np.int64).min)
        np.maximum.at(last, photo, time)
        del photo, time
        self.impressions = shown.astype(np.float32)
        self.per_hour = (shown / ((last - self.first) / float(HOUR_MS) + 1.0)).astype(np.float32)

    def codes(self, photo_id: np.ndarray) -> np.ndarray:
        """The photos' codes (int32); ValueError for a photo_id not in the log."""
        error = "raw_interactions: photo_id(s) not in its own log"
        if self.table is None:
            return self.index.positions(photo_id, error).astype(np.int32)
        if len(photo_id) and (photo_id.min() < 0 or photo_id.max() >= len(self.table)):
            outside = (photo_id < 0) | (photo_id >= len(self.table))
            raise ValueError(f"{error}: {photo_id[outside][:5].tolist()}")
        code = self.table[photo_id]
        if len(code) and code.min() < 0:
            raise ValueError(f"{error}: {photo_id[code < 0][:5].tolist()}")
        return code


def _split_rows(
    con: duckdb.DuckDBPyConnection, split: str, n_rows: int, first_time: int, last_time: int, photos: PhotoExposure
) -> tuple[dict[str, np.ndarray], int]:
    """The split's rows in row_id order: row_id, key = (user code << shift) | (time - first_time)
    (int64) and the photo's code (int32); and the shift.

    Streamed batch by batch into arrays of the split's size, so the split's raw columns are never
    all held at once, nor the converted ones twice.
    """
    users = fetch(
        con, "select distinct user_id from raw_interactions where split = ? order by user_id", [split]
    )["user_id"]
    users = IdIndex(users)
    shift = (last_time - first_time).bit_length()
    if (len(users.sorted_ids) - 1).bit_length() + shift > 62:
        raise ValueError(
            f"raw_interactions: {len(users.sorted_ids):,} users and times spanning {last_time - first_time:,} ms "
            f"in split {split!r} do not fit one int64 key"
        )
    if n_rows >= 2**31:  # batches and positions are int32
        raise ValueError(f"raw_interactions: split {split!r} has {n_rows:,} rows, more than 2**31 - 1")
    rows = {"row_id": np.empty(n_rows, np.int64), "key": np.empty(n_rows, np.int64), "photo": np.empty(n_rows, np.int32)}
    query = "select row_id, user_id, photo_id, time from raw_interactions where split = ?"
    reader = con.sql(query, params=[split]).to_arrow_reader(FETCH_BATCH_ROWS)
    start = 0
    for batch in reader:
        for name, column in zip(batch.schema.names, batch.columns):
            if column.null_count:
                raise ValueError(f"raw_interactions: {name} has null(s) in split {split!r}")
        stop = start + batch.num_rows
        if stop > n_rows:
            raise ValueError(f"raw_interactions: split {split!r} has more rows than counted ({n_rows:,})")
        rows["row_id"][start:stop] = batch.column(0).to_numpy()
        key = rows["key"][start:stop]
        key[:] = users.positions(batch.column(1).to_numpy(), "raw_interactions: user_id(s) not among its split's users")
        key <<= shift
        key |= batch.column(3).to_numpy() - first_time
        rows["photo"][start:stop] = photos.codes(batch.column(2).to_numpy())
        start = stop
    del reader
    if start != n_rows:
        raise ValueError(f"raw_interactions: split {split!r} has {start:,} rows, not the {n_rows:,} counted")
    row_id = rows["row_id"]
    if not (row_id[1:] > row_id[:-1]).all():  # the log is stored in row_id order; else sort it
        order = np.argsort(row_id, kind="stable")
        for name in list(rows):
            rows[name] = rows[name][order]
        del order
    return rows, shift


class Batches:
    """One split's batches, sorted by (user, time), and each row's batch and position in it."""

    def __init__(self, key: np.ndarray, shift: int, first_time: int):
        """key: the rows' keys in row_id order (consumed: the caller keeps no reference)."""
        n = len(key)
        order = np.argsort(key, kind="stable")  # (user, time, row_id): ties keep row_id order
        order = order.astype(np.int32)  # half the memory for the rest (a split has < 2**31 rows)
        key = key[order]
        new = np.empty(n, bool)
        new[:1] = True
        np.not_equal(key[1:], key[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        self.key = key[starts]  # sorted: each user's batches are a run, in time order
        del key
        batch = np.cumsum(new, dtype=np.int32)
        batch -= 1
        del new
        position = np.arange(1, n + 1, dtype=np.int32)
        position -= starts.astype(np.int32)[batch]
        # back to row_id order
        self.batch = np.empty(n, np.int32)
        self.batch[order] = batch
        del batch
        self.position = np.empty(n, np.int32)
        self.position[order] = position
        del position, order
        self.size = np.diff(np.append(starts, n))
        self.shift, self.first_time = shift, first_time
        self.n = len(starts)

    @property
    def time(self) -> np.ndarray:
        return (self.key & ((1 << self.shift) - 1)) + self.first_time

    @property
    def user(self) -> np.ndarray:
        return self.key >> self.shift


class BatchColumns:
    """The output columns that are the same for every row of a batch, per batch: float32, and
    is_first / is_last (bool: the int32 columns, and the nulls of the two gaps)."""

    def __init__(self, batches: Batches, split_hours: float):
        nb = batches.n
        # each batch's user as a range [first, end) of batches
        user = batches.user
        new_user = np.empty(nb, bool)
        new_user[:1] = True
        np.not_equal(user[1:], user[:-1], out=new_user[1:])
        del user
        user_starts = np.flatnonzero(new_user).astype(np.int32)
        run = np.cumsum(new_user, dtype=np.int32)
        run -= 1
        del new_user
        first = user_starts[run]
        end = np.append(user_starts[1:], np.int32(nb))[run]
        del run, user_starts
        index = np.arange(nb, dtype=np.int32)
        self.is_first, self.is_last = first == index, end == index + 1
        del index
        # cumulative[b]: the impressions in batches before b (over all users); the batch's
        # own impressions are cumulative[b] .. cumulative[b + 1]
        cumulative = np.zeros(nb + 1, np.int64)
        np.cumsum(batches.size, out=cumulative[1:])
        before, after = cumulative[:-1], cumulative[1:]

        columns: dict[str, np.ndarray] = {"batch_size": batches.size.astype(np.float32)}
        time = batches.time
        gap = np.diff(time)  # gap[b - 1] = time[b] - time[b - 1]
        self.time = time
        since = np.zeros(nb, np.float32)
        since[1:] = gap / 1000.0
        until = np.zeros(nb, np.float32)
        until[:-1] = gap / 1000.0
        del gap
        columns["seconds_since_previous_batch"] = since  # null where is_first
        columns["seconds_until_next_batch"] = until  # null where is_last
        key = batches.key
        for name, width in WINDOWS:
            # the user's batches with time in [t - width, t - 1]: from the first at or after
            # t - width (not before the user's first batch) up to this one
            start = np.searchsorted(key, key - width, "left")
            np.maximum(start, first, out=start)
            columns[f"impressions_previous_{name}"] = (before - cumulative[start]).astype(np.float32)
            del start
        for name, width in WINDOWS:
            # [t + 1, t + width]: after this batch up to the last at or before t + width
            stop = np.searchsorted(key, key + width, "right")
            np.minimum(stop, end, out=stop)
            columns[f"impressions_next_{name}"] = (cumulative[stop] - after).astype(np.float32)
            del stop
        columns["impressions_before_in_log"] = (before - cumulative[first]).astype(np.float32)
        columns["impressions_remaining_in_log"] = (cumulative[end] - after).astype(np.float32)
        columns["user_impressions_per_hour"] = ((cumulative[end] - cumulative[first]) / split_hours).astype(np.float32)
        self.columns = columns


def _write_split(
    con: duckdb.DuckDBPyConnection, writer: BackgroundParquetWriter, split: str, n_rows: int, first_time: int,
    last_time: int, photos: PhotoExposure,
) -> tuple[int, int]:
    """Write one split's rows in row_id order; return (rows, batches). Its arrays are freed on return."""
    rows, shift = _split_rows(con, split, n_rows, first_time, last_time, photos)
    row_id, photo = rows.pop("row_id"), rows.pop("photo")
    batches = Batches(rows.pop("key"), shift, first_time)
    split_hours = max((last_time - first_time) / float(HOUR_MS), 1.0)
    per_batch = BatchColumns(batches, split_hours)
    n_batches, batch_of_row, position = batches.n, batches.batch, batches.position
    del batches
    batch_time, is_first, is_last = per_batch.time, per_batch.is_first, per_batch.is_last
    for start in range(0, len(row_id), ROWS_PER_GROUP):
        stop = min(start + ROWS_PER_GROUP, len(row_id))
        b, p = batch_of_row[start:stop], photo[start:stop]
        values = {name: column[b] for name, column in per_batch.columns.items()}
        values["position_in_batch"] = position[start:stop].astype(np.float32)
        values["photo_impressions_in_log"] = photos.impressions[p]
        values["photo_impressions_per_hour"] = photos.per_hour[p]
        values["hours_since_photo_first_shown"] = ((batch_time[b] - photos.first[p]) / float(HOUR_MS)).astype(np.float32)
        first, last = is_first[b], is_last[b]
        values["is_first_batch"], values["is_last_batch"] = first.astype(np.int32), last.astype(np.int32)
        nulls = {"seconds_since_previous_batch": first, "seconds_until_next_batch": last}
        writer.write_table(
            pa.table(
                [pa.array(row_id[start:stop])]
                + [pa.array(values.pop(name), mask=nulls.get(name)) for name in CONTINUOUS + DISCRETE],
                schema=SCHEMA,
            )
        )
    return len(row_id), n_batches


def compute_impression_context(
    con: duckdb.DuckDBPyConnection, out: Path, log: Callable[[str], None] = lambda m: None
) -> int:
    # each split's rows and time span (split_hours and the time offsets in the keys)
    spans = {
        split: (n, first, last)
        for split, n, first, last in con.execute(
            "select split, count(*), min(time), max(time) from raw_interactions group by split"
        ).fetchall()
    }
    unknown = sorted(str(s) for s in spans if s not in SPLITS)
    if unknown:
        raise ValueError(f"raw_interactions: split(s) {unknown} are neither {' nor '.join(SPLITS)}")
    photos = PhotoExposure(con)  # also refuses null photo_ids and times
    written = 0
    with BackgroundParquetWriter(out, SCHEMA, compression="zstd", use_dictionary=DICTIONARY_COLUMNS) as writer:
        for split in SPLITS:
            if split in spans:
                n_rows, n_batches = _write_split(con, writer, split, *map(int, spans[split]), photos)
                written += n_rows
                log(f"impression_context: {split} done ({n_rows:,} rows in {n_batches:,} batches)")
    return written


GROUP = TableModel(
    name="impression_context",
    layer="features",
    description=(
        "Impression context, read from the impression log itself (the signals that separated the top "
        "teams): the batch the row was shown in (works shown to one user at the same time form one "
        "screen), where it sat in the batch, the user's impressions in the minutes before and after, "
        "the time since the previous batch and until the next, the impressions still to come, and the "
        "photo's exposure in the log. Computed within each window's own log: train rows from the train "
        "log, test rows from the test log, which is given in full at prediction time."
    ),
    grain=("row_id",),
    upstream=("raw_interactions",),
    continuous=CONTINUOUS,
    discrete=DISCRETE,
    uses_scored_window_log=True,
    compute=compute_impression_context,
)
