"""impression_context on a hand-made log: every window boundary, batches and positions in
row_id order, a single-row user, a user in both splits, a photo shown once, exact values."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kuai_assets.groups.impression_context import compute_impression_context

T0 = 10_000_000  # the focal batch of user 1 (train)
# user 3's first batch in test; its train row (the train log's last) 10 s before. The train log
# then spans 2**24 - 1000 ms: a key's time takes 24 bits, and a window reaching back from user
# 5's batch 5 ms after the log's start lands among user 3's keys (and forward from user 3's
# last batch among user 5's): the windows must stop at the user's own batches
TT = T0 - 600_001 + 2**24 - 1_000 + 10_000
HOUR = 3_600_000.0

# (row_id, split, user_id, photo_id, time)
ROWS = [
    # user 1, train: batches just outside / on each boundary of the focal batch at T0
    (0, "train", 1, 50, T0 - 600_001),
    (1, "train", 1, 11, T0 - 600_000),
    (2, "train", 1, 12, T0 - 600_000),
    (3, "train", 1, 13, T0 - 60_001),
    (20, "train", 1, 14, T0 - 60_000),
    (4, "train", 1, 15, T0 - 60_000),
    (12, "train", 1, 16, T0 - 60_000),
    (5, "train", 1, 17, T0 - 1),
    (31, "train", 1, 50, T0),
    (7, "train", 1, 99, T0),  # photo 99: shown once
    (8, "train", 1, 18, T0 + 1),
    (9, "train", 1, 19, T0 + 60_000),
    (10, "train", 1, 20, T0 + 60_001),
    (11, "train", 1, 21, T0 + 60_001),
    (13, "train", 1, 22, T0 + 600_000),
    (14, "train", 1, 50, T0 + 600_001),
    # user 2, train: one row, at the same time as user 1's focal batch (another batch)
    (15, "train", 2, 23, T0),
    # user 3: one train row 10 s before its first test batch (not in the test windows)
    (16, "train", 3, 24, TT - 10_000),
    # user 5, train: one row 5 ms after the train log's first
    (22, "train", 5, 25, T0 - 600_001 + 5),
    (17, "test", 3, 60, TT),
    (18, "test", 3, 61, TT),
    (19, "test", 3, 60, TT + 30_000),
    # user 4, test: one row; the test log spans under an hour, so its hours count as 1
    (21, "test", 4, 62, TT + 1_000_000),
]
TRAIN_HOURS = (TT - 10_000 - (T0 - 600_001)) / HOUR
TEST_HOURS = 1.0
COLUMNS = [
    "row_id", "batch_size", "position_in_batch", "seconds_since_previous_batch", "seconds_until_next_batch",
    "impressions_previous_1min", "impressions_previous_10min", "impressions_next_1min", "impressions_next_10min",
    "impressions_before_in_log", "impressions_remaining_in_log", "user_impressions_per_hour",
    "photo_impressions_in_log", "photo_impressions_per_hour", "hours_since_photo_first_shown",
    "is_first_batch", "is_last_batch",
]
PHOTO_50_PER_HOUR = 3 / (1_200_002 / HOUR + 1.0)


def expected_row(batch_size, position, since, until, previous, following, before, remaining, user_per_hour,
                 photo_rows, photo_per_hour, photo_hours, first, last):
    """One row's values as the table stores them: float32 (None: null) and int32 flags."""
    values = [batch_size, position, since, until, *previous, *following, before, remaining, user_per_hour,
              photo_rows, photo_per_hour, photo_hours]
    return [None if v is None else float(np.float32(v)) for v in values] + [first, last]


EXPECTED = {
    # the focal batch: rows 7 and 31, in row_id order
    7: expected_row(2, 1, 0.001, 0.001, (4, 7), (2, 5), 8, 6, 16 / TRAIN_HOURS, 1, 1.0, 0.0, 0, 0),
    31: expected_row(2, 2, 0.001, 0.001, (4, 7), (2, 5), 8, 6, 16 / TRAIN_HOURS, 3, PHOTO_50_PER_HOUR,
                     600_001 / HOUR, 0, 0),
    # the batch on the 1-minute boundary: three rows, positions by row_id (4, 12, 20)
    4: expected_row(3, 1, 0.001, 59.999, (1, 4), (3, 7), 4, 9, 16 / TRAIN_HOURS, 1, 1.0, 0.0, 0, 0),
    12: expected_row(3, 2, 0.001, 59.999, (1, 4), (3, 7), 4, 9, 16 / TRAIN_HOURS, 1, 1.0, 0.0, 0, 0),
    20: expected_row(3, 3, 0.001, 59.999, (1, 4), (3, 7), 4, 9, 16 / TRAIN_HOURS, 1, 1.0, 0.0, 0, 0),
    # the user's first and last batches
    0: expected_row(1, 1, None, 0.001, (0, 0), (2, 7), 0, 15, 16 / TRAIN_HOURS, 3, PHOTO_50_PER_HOUR, 0.0, 1, 0),
    14: expected_row(1, 1, 0.001, None, (1, 5), (0, 0), 15, 0, 16 / TRAIN_HOURS, 3, PHOTO_50_PER_HOUR,
                     1_200_002 / HOUR, 0, 1),
    # a single-row user
    15: expected_row(1, 1, None, None, (0, 0), (0, 0), 0, 0, 1 / TRAIN_HOURS, 1, 1.0, 0.0, 1, 1),
    # a user in both splits: each split's log on its own
    16: expected_row(1, 1, None, None, (0, 0), (0, 0), 0, 0, 1 / TRAIN_HOURS, 1, 1.0, 0.0, 1, 1),
    22: expected_row(1, 1, None, None, (0, 0), (0, 0), 0, 0, 1 / TRAIN_HOURS, 1, 1.0, 0.0, 1, 1),
    17: expected_row(2, 1, None, 30.0, (0, 0), (1, 1), 0, 1, 3 / TEST_HOURS, 2, 2 / (30_000 / HOUR + 1.0), 0.0, 1, 0),
    18: expected_row(2, 2, None, 30.0, (0, 0), (1, 1), 0, 1, 3 / TEST_HOURS, 1, 1.0, 0.0, 1, 0),
    19: expected_row(1, 1, 30.0, None, (2, 2), (0, 0), 2, 0, 3 / TEST_HOURS, 2, 2 / (30_000 / HOUR + 1.0),
                     30_000 / HOUR, 0, 1),
    21: expected_row(1, 1, None, None, (0, 0), (0, 0), 0, 0, 1 / TEST_HOURS, 1, 1.0, 0.0, 1, 1),
}


def run(tmp_path, rows, id_offset: int = 0) -> pa.Table:
    """impression_context of the rows; user_ids and photo_ids shifted by id_offset (2**40: ids too
    sparse for a lookup table, coded by binary search instead)."""
    rows = [(r, split, user + id_offset, photo + id_offset, t) for r, split, user, photo, t in rows]
    con = duckdb.connect()
    raw = pa.table(
        {name: [r[i] for r in rows] for i, name in enumerate(["row_id", "split", "user_id", "photo_id", "time"])},
        schema=pa.schema([("row_id", pa.int64()), ("split", pa.string()), ("user_id", pa.int64()),
                          ("photo_id", pa.int64()), ("time", pa.int64())]),
    )
    con.register("raw", raw)
    con.execute("create table raw_interactions as select * from raw")
    out = tmp_path / "impression_context.parquet"
    assert compute_impression_context(con, out) == len(rows)
    return pq.read_table(out)


@pytest.mark.parametrize("order, id_offset", [("row_id", 0), ("shuffled", 0), ("row_id", 2**40)])
def test_impression_context_by_hand(tmp_path, order, id_offset):
    rows = sorted(ROWS) if order == "row_id" else [ROWS[i] for i in np.random.default_rng(3).permutation(len(ROWS))]
    table = run(tmp_path, rows, id_offset)
    assert table.column_names == COLUMNS
    assert [str(t) for t in table.schema.types] == ["int64"] + ["float"] * 14 + ["int32"] * 2
    # written split by split (train, then test), each in row_id order
    assert table.column("row_id").to_pylist() == sorted(r[0] for r in ROWS if r[1] == "train") + sorted(
        r[0] for r in ROWS if r[1] == "test"
    )
    by_row = {r["row_id"]: [r[c] for c in COLUMNS[1:]] for r in table.to_pylist()}
    for row_id, expected in EXPECTED.items():
        assert by_row[row_id] == expected, (row_id, list(zip(COLUMNS[1:], by_row[row_id], expected)))
    # the other rows of user 1 (train): batch sizes and the user's total
    assert [by_row[r][0] for r in (1, 2, 3, 5, 8, 9, 10, 11, 13)] == [2, 2, 1, 1, 1, 1, 2, 2, 1]
    assert {by_row[r][8] + by_row[r][0] + by_row[r][9] for r in (1, 3, 5, 8, 9, 10, 13)} == {16.0}


def test_impression_context_refuses_an_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="neither train nor test"):
        run(tmp_path, ROWS + [(40, "validation", 1, 70, T0)])
