"""session_context's fast path on hand-made logs: what its windows hold, and chunking that never
changes the table (the tiny data fits one chunk; test_sql_reference compares it with a brute-force
reference there, test_engines with its SQL definition)."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from kuai_assets.groups import session_context
from kuai_assets.groups.session_context import chunk_bounds, compute_session_context

MINUTE = 60_000


def run(tmp_path, raw: pd.DataFrame, pca: pd.DataFrame) -> pd.DataFrame:
    con = duckdb.connect()
    con.register("raw_interactions", raw)
    con.register("pca_visual_features", pca)
    out = tmp_path / "session_context.parquet"
    compute_session_context(con, out)
    return pd.read_parquet(out).set_index("row_id")


def photos(vectors: dict[int, list[float]]) -> pd.DataFrame:
    table = pd.DataFrame({"photo_id": list(vectors), "split": "train"})
    for d in range(len(next(iter(vectors.values())))):
        table[f"pc_{d:02d}"] = [v[d] for v in vectors.values()]
    return table


def log(rows: list[tuple[int, str, int, int, int]]) -> pd.DataFrame:
    """rows of (row_id, split, user_id, photo_id, time)"""
    return pd.DataFrame(rows, columns=["row_id", "split", "user_id", "photo_id", "time"])


def test_a_window_holds_the_users_other_impressions_of_the_same_split(tmp_path):
    pca = photos({1: [1.0, 0.0], 2: [0.0, 3.0], 3: [1.0, 1.0], 4: [0.0, 0.0]})
    raw = log([
        (10, "train", 7, 1, 0),               # with row 11 (1 min) in both windows, row 12 (5 min) in 10 min
        (11, "train", 7, 2, MINUTE),
        (12, "train", 7, 3, 5 * MINUTE),
        (13, "test", 7, 3, MINUTE),           # another split: alone
        (14, "train", 8, 1, 0),               # another user, same time: alone
        (15, "train", 9, 4, 0),               # a zero vector: null itself, nothing to its neighbour
        (16, "train", 9, 1, 0),
        (17, "train", 9, 99, 0),              # a photo without a vector: the same
    ])
    table = run(tmp_path, raw, pca)
    unit3 = np.array([1.0, 1.0]) / np.sqrt(2)
    assert table.loc[10, "session_cosine_2min"] == pytest.approx(0.0, abs=1e-7)  # [1, 0] against [0, 1]
    assert table.loc[10, "session_cosine_10min"] == pytest.approx(unit3[0] / np.linalg.norm([unit3[0], 1 + unit3[1]]))
    assert table.loc[12, "session_cosine_2min"] != table.loc[12, "session_cosine_2min"]  # NaN: nobody within 2 min
    assert table.loc[12, "session_cosine_10min"] == pytest.approx(unit3 @ np.array([1.0, 1.0]) / np.sqrt(2))
    assert table.loc[[13, 14, 15, 16, 17]].isna().all().all()
    assert list(table.columns) == [
        "session_cosine_2min", "session_cosine_10min",
        "session_cosine_before_2min", "session_cosine_before_10min",
        "session_cosine_after_2min", "session_cosine_after_10min",
    ]


def test_before_and_after_windows_are_strict_and_one_sided(tmp_path):
    pca = photos({1: [1.0, 0.0], 2: [0.0, 1.0], 3: [1.0, 1.0], 4: [-1.0, 0.0]})
    raw = log([
        (20, "train", 7, 1, 10 * MINUTE),
        (21, "train", 7, 2, 10 * MINUTE),      # same time as row 20 (one screen): around it, not before or after
        (22, "train", 7, 3, 11 * MINUTE),      # 1 min after rows 20 and 21
        (23, "train", 7, 4, 8 * MINUTE),       # 2 min before rows 20 and 21: the edge of their 2-minute window
        (24, "train", 7, 2, 20 * MINUTE),      # 10 min after rows 20 and 21 (the edge), 9 after row 22
    ])
    table = run(tmp_path, raw, pca)
    unit3 = np.array([1.0, 1.0]) / np.sqrt(2)
    e1, e2, e4 = np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([-1.0, 0.0])

    def cosine(photo, others):
        return float(photo @ others / np.linalg.norm(others))

    assert table.loc[20, "session_cosine_after_2min"] == pytest.approx(cosine(e1, unit3))
    assert table.loc[20, "session_cosine_after_10min"] == pytest.approx(cosine(e1, unit3 + e2))
    assert table.loc[20, "session_cosine_before_2min"] == pytest.approx(-1.0)  # row 23 alone, not row 21
    assert table.loc[20, "session_cosine_2min"] == pytest.approx(cosine(e1, e2 + unit3 + e4))
    assert np.isnan(table.loc[23, "session_cosine_before_10min"])  # nothing before
    assert table.loc[23, "session_cosine_after_2min"] == pytest.approx(cosine(e4, e1 + e2))  # rows 20, 21 at the edge
    assert np.isnan(table.loc[24, "session_cosine_after_10min"])  # nothing after
    assert np.isnan(table.loc[24, "session_cosine_before_2min"])
    assert table.loc[24, "session_cosine_before_10min"] == pytest.approx(cosine(e2, e1 + e2 + unit3))  # 20, 21 at the edge


def test_chunks_of_whole_timelines_give_the_same_table(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    pca = photos({p: list(rng.normal(size=4)) for p in range(40)})
    rows = [(i, str(rng.choice(["train", "test"])), int(rng.integers(0, 6)), int(rng.integers(0, 40)),
             int(rng.integers(0, 30)) * MINUTE) for i in range(300)]
    whole = run(tmp_path, log(rows), pca)
    monkeypatch.setattr(session_context, "ROWS_PER_CHUNK", 7)
    chunked = run(tmp_path, log(rows), pca)
    pd.testing.assert_frame_equal(whole, chunked)
    assert (whole.notna().mean() > 0.6).all()  # every window holds something for most rows: the comparison is not of nulls


def test_chunk_bounds_never_split_a_timeline():
    starts = np.array([0, 3, 4, 20, 21])  # timelines [0, 3), [3, 4), [4, 20), [20, 21), [21, 25)
    assert chunk_bounds(starts, 25, 5) == [(0, 4), (4, 20), (20, 25)]
    assert chunk_bounds(starts, 25, 100) == [(0, 25)]
