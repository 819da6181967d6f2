"""Each target row's history: the user's labelled fit rows of the same setup, strictly earlier.

The rule, one for every target (fit or scored, either setup): a row of user u at time t attends
over u's rows in `label_history` of its setup with time < t, the most recent `length` of them.
So a fit row never sees itself, nor the other impressions of its own batch (same time), nor
anything later; a validation scored row sees only validation fit rows (all before the cut); a
test row sees the train rows. History is read from `label_history` alone, never from
`raw_interactions`: a scored row's label cannot reach anyone's history.

Layout: the setup's fit rows sorted by (user, time, row_id) in flat arrays; a target's history
is the slice [start, end) of them (end found by one vectorised binary search over the
(user, time) key), gathered per batch as a left-padded (batch, length) index with a mask.

`check_histories` re-derives what the history must be from `model_rows` (not from the builder)
on a sample of targets and raises HistoryLeakError on any difference; the attention model runs
it before training.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np

from kuai_assets.storage import WorkDir

HISTORY_TABLES = ["model_rows", "label_history"]  # what the histories and their leak check read
TIME_BITS = 40  # a key is (user index << 40) | (time - first time): 35 years of milliseconds


class HistoryLeakError(RuntimeError):
    """A target's history holds a row it may not see, or misses one it should see."""


def history_rows(con: duckdb.DuckDBPyConnection, setup: str) -> dict[str, np.ndarray]:
    """The setup's labelled fit rows (from `label_history`), sorted by (user_id, time, row_id)."""
    return con.execute(
        "select row_id, user_id, photo_id, time, click from label_history where setup = ? "
        "order by user_id, time, row_id",
        [setup],
    ).fetchnumpy()


@dataclass
class SetupHistory:
    """One setup's fit rows, sorted by (user_id, time, row_id), and the searches over them."""

    setup: str
    length: int  # the most recent `length` rows are a target's history
    row_id: np.ndarray
    user_id: np.ndarray
    photo_id: np.ndarray
    time: np.ndarray
    click: np.ndarray  # int8
    users: np.ndarray  # sorted distinct user_id
    user_start: np.ndarray  # first index of each user in the sorted rows
    first_time: int
    key: np.ndarray  # (user index << TIME_BITS) | (time - first_time), sorted
    click_cumsum: np.ndarray  # clicks of rows [0, i) at position i

    def __len__(self) -> int:
        return len(self.row_id)

    def _keys(self, user_id: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        user_id = np.asarray(user_id, dtype=np.int64)
        position = np.searchsorted(self.users, user_id)
        known = position < len(self.users)
        known[known] = self.users[position[known]] == user_id[known]
        offset = np.clip(np.asarray(time, dtype=np.int64) - self.first_time, 0, (1 << TIME_BITS) - 1)
        return (position.astype(np.int64) << TIME_BITS) | offset, known

    def bounds(self, user_id: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For targets (user_id, time): [start, end) of their history in the sorted rows.

        end is the first row of the user at or after `time`; start = max(user's first row,
        end - length). A user without fit rows gets an empty history (start = end = 0).
        """
        key, known = self._keys(user_id, time)
        end = _history_end(self.key, key)
        position = np.searchsorted(self.users, np.asarray(user_id, dtype=np.int64))
        first = self.user_start[np.minimum(position, len(self.users) - 1)] if len(self.users) else np.zeros_like(end)
        start = np.maximum(first, end - self.length)
        end = np.where(known, end, 0)
        start = np.where(known, start, 0)
        return start.astype(np.int64), end.astype(np.int64)

    def earlier(self, user_id: np.ndarray, time: np.ndarray) -> np.ndarray:
        """(targets, 2) float32: how many of the user's fit rows are earlier than the target, and how
        many of those were clicked (all of them, not only the last `length`)."""
        key, known = self._keys(user_id, time)
        end = _history_end(self.key, key)
        position = np.searchsorted(self.users, np.asarray(user_id, dtype=np.int64))
        first = self.user_start[np.minimum(position, len(self.users) - 1)] if len(self.users) else np.zeros_like(end)
        count = np.where(known, end - first, 0)
        clicks = np.where(known, self.click_cumsum[end] - self.click_cumsum[first], 0)
        return np.stack([count, clicks], axis=1).astype(np.float32)

    def gather(self, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(batch, length) indices into the sorted rows, oldest first and left-padded, and the mask
        of real items (padding points at row 0 with mask False)."""
        index = end[:, None] - self.length + np.arange(self.length)[None, :]
        mask = index >= start[:, None]
        return np.where(mask, index, 0), mask


def _history_end(sorted_key: np.ndarray, target_key: np.ndarray) -> np.ndarray:
    """Index of the first row whose (user, time) key is >= the target's: rows strictly earlier."""
    return np.searchsorted(sorted_key, target_key, side="left")


def build_history(work: WorkDir, setup: str, length: int) -> SetupHistory:
    """The history arrays of one setup, read from `label_history`."""
    if length < 1:
        raise ValueError(f"history length must be at least 1, got {length}")
    con = work.connect(["label_history"])
    try:
        rows = history_rows(con, setup)
    finally:
        con.close()
    return history_from_rows(setup, length, rows)


def history_from_rows(setup: str, length: int, rows: dict[str, np.ndarray]) -> SetupHistory:
    user_id = np.asarray(rows["user_id"], dtype=np.int64)
    time = np.asarray(rows["time"], dtype=np.int64)
    row_id = np.asarray(rows["row_id"], dtype=np.int64)
    order = np.lexsort((row_id, time, user_id))  # already sorted by the query; kept for safety
    user_id, time, row_id = user_id[order], time[order], row_id[order]
    photo_id = np.asarray(rows["photo_id"], dtype=np.int64)[order]
    click = np.asarray(rows["click"]).astype(np.int8)[order]
    users, user_start = np.unique(user_id, return_index=True)
    first_time = int(time.min()) if len(time) else 0
    history = SetupHistory(
        setup, length, row_id, user_id, photo_id, time, click, users, user_start.astype(np.int64), first_time,
        np.empty(0, dtype=np.int64), np.concatenate([[0], np.cumsum(click, dtype=np.int64)]),
    )
    history.key, _ = history._keys(user_id, time)
    return history


# -- the leak check --------------------------------------------------------------------------------


@dataclass
class HistoryCheck:
    setup: str
    role: str
    targets_checked: int
    history_items_checked: int
    empty_histories: int


def check_histories(
    work: WorkDir, history: SetupHistory, targets_per_role: int = 20_000, seed: int = 0
) -> list[HistoryCheck]:
    """Prove, on a sample of each role's rows of `history.setup`, that every history is honest.

    The truth is read from `model_rows`, not from the builder: for a target row (user u, time t)
    every history item must be a fit row of the same setup (by row_id), of user u, with time < t
    (so never the target itself, never its batch, never a later or a scored row), and the history
    must hold exactly min(length, number of such rows) items, the newest of them included; the
    count of those rows and of their clicks (`SetupHistory.earlier`) must match label_history.
    Raises HistoryLeakError naming the setup, the target row_id and the offending row.
    """
    con = work.connect(HISTORY_TABLES)
    try:
        fit = con.execute(
            "select row_id, user_id, time from model_rows where setup = ? and role = 'fit' order by row_id",
            [history.setup],
        ).fetchnumpy()
        checks = []
        for role in ("fit", "scored"):
            con.execute(
                "create or replace temp table sampled as select row_id, user_id, time from model_rows "
                "where setup = ? and role = ? order by hash(row_id + ?) limit ?",
                [history.setup, role, seed, targets_per_role],
            )
            # what the history must be, computed by a join in DuckDB
            truth = con.execute(
                "select s.row_id, s.user_id, s.time, count(f.row_id) as eligible, max(f.time) as newest, "
                "coalesce(sum(l.click), 0) as clicks "
                "from sampled s left join model_rows f on f.setup = ? and f.role = 'fit' "
                "and f.user_id = s.user_id and f.time < s.time "
                "left join label_history l on l.setup = f.setup and l.row_id = f.row_id "
                "group by all order by s.row_id",
                [history.setup],
            ).fetchnumpy()
            checks.append(_check_role(history, role, truth, fit))
    finally:
        con.close()
    return checks


def _check_role(history: SetupHistory, role: str, truth: dict, fit: dict) -> HistoryCheck:
    target_row, target_user, target_time = truth["row_id"], truth["user_id"], truth["time"]
    eligible = np.asarray(truth["eligible"], dtype=np.int64)
    start, end = history.bounds(target_user, target_time)
    index, mask = history.gather(start, end)
    where = f"setup {history.setup!r}, {role} target row_id"

    item_row = history.row_id[index]
    position = np.searchsorted(fit["row_id"], item_row)
    position = np.minimum(position, max(len(fit["row_id"]) - 1, 0))
    is_fit = (fit["row_id"][position] == item_row) if len(fit["row_id"]) else np.zeros_like(mask)
    bad = mask & ~is_fit
    if bad.any():
        t, j = np.argwhere(bad)[0]
        raise HistoryLeakError(
            f"{where} {target_row[t]}: history row_id {item_row[t, j]} is not a fit row of this setup "
            f"in model_rows ({int(bad.sum())} such items in {int(bad.any(axis=1).sum())} histories)"
        )
    item_user = fit["user_id"][position]
    item_time = fit["time"][position]
    bad = mask & (item_user != target_user[:, None])
    if bad.any():
        t, j = np.argwhere(bad)[0]
        raise HistoryLeakError(
            f"{where} {target_row[t]} (user {target_user[t]}): history row_id {item_row[t, j]} belongs to "
            f"user {item_user[t, j]}"
        )
    bad = mask & (item_time >= target_time[:, None])
    if bad.any():
        t, j = np.argwhere(bad)[0]
        what = "is the target itself" if item_row[t, j] == target_row[t] else "is not earlier than the target"
        raise HistoryLeakError(
            f"{where} {target_row[t]} (time {target_time[t]}): history row_id {item_row[t, j]} "
            f"(time {item_time[t, j]}) {what} ({int(bad.sum())} such items in {int(bad.any(axis=1).sum())} histories)"
        )
    size = mask.sum(axis=1)
    expected = np.minimum(eligible, history.length)
    bad = size != expected
    if bad.any():
        t = np.flatnonzero(bad)[0]
        raise HistoryLeakError(
            f"{where} {target_row[t]}: history holds {size[t]} rows, expected {expected[t]} "
            f"(the user's {eligible[t]} earlier fit rows, at most {history.length})"
        )
    newest = np.where(mask, item_time, np.iinfo(np.int64).min).max(axis=1)
    has = size > 0
    want = np.asarray(truth["newest"])
    bad = has & (newest != np.where(has, want, 0))
    if bad.any():
        t = np.flatnonzero(bad)[0]
        raise HistoryLeakError(
            f"{where} {target_row[t]}: the newest history row is at time {newest[t]}, but the user's newest "
            f"earlier fit row is at {want[t]}"
        )
    earlier = history.earlier(target_user, target_time)
    clicks = np.asarray(truth["clicks"], dtype=np.float64)
    bad = (earlier[:, 0] != eligible) | (earlier[:, 1] != clicks)
    if bad.any():
        t = np.flatnonzero(bad)[0]
        raise HistoryLeakError(
            f"{where} {target_row[t]}: the user's earlier rows and clicks are counted as {earlier[t, 0]:.0f} and "
            f"{earlier[t, 1]:.0f}, but label_history has {eligible[t]} and {clicks[t]:.0f}"
        )
    return HistoryCheck(history.setup, role, len(target_row), int(mask.sum()), int((~has).sum()))
