"""Out-of-fold sums by dense counting, against a direct loop; and the edges of the numpy groups."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from kuai_assets.features import fold_statistics
from kuai_assets.features.fold_statistics import FoldSums, distinct_sorted
from kuai_assets.groups.published_baseline import _means


def test_out_of_fold_sums_match_a_direct_loop():
    rng = np.random.default_rng(3)
    n_folds, n_cells = 4, 7
    fold = rng.integers(0, n_folds, 500)
    cell = rng.integers(0, n_cells, 500)
    click = rng.integers(0, 2, 500).astype(float)
    sums = FoldSums(fold, cell, n_folds, n_cells, clicks=click)
    query_fold = np.array([-1, 0, 1, 2, 3, -1, 3])
    query_cell = np.arange(n_cells)
    seen = sums.out_of_fold(query_fold, query_cell)
    for i, (f, c) in enumerate(zip(query_fold, query_cell)):
        rows = (cell == c) & (fold != f)  # fold -1 leaves nothing out
        assert seen["n"][i] == rows.sum()
        assert seen["clicks"][i] == click[rows].sum()
    # a scalar fold gives the same as that fold for every row
    assert np.array_equal(sums.out_of_fold(2, query_cell)["n"], sums.out_of_fold(np.full(n_cells, 2), query_cell)["n"])


def test_means_are_null_without_history():
    empty = FoldSums(np.array([], np.int32), np.array([], np.int64), 5, 0, clicks=np.array([]), playing=np.array([]))
    n, click, playing = _means(empty, np.array([0, -1]), np.array([0, 0]), np.array([False, False]))
    assert np.isnan(n).all() and np.isnan(click).all() and np.isnan(playing).all()
    # a cell whose only rows are in the row's own fold: 0 rows, no mean
    own = FoldSums(np.array([1, 1]), np.array([0, 0]), 2, 1, clicks=np.array([1.0, 0.0]), playing=np.array([3.0, 5.0]))
    n, click, _ = _means(own, np.array([1, 0, -1]), np.array([0, 0, 0]), np.array([True, True, True]))
    assert n.tolist()[:2] == [0.0, 2.0] and np.isnan(click[0]) and click[1] == 0.5 and click[2] == 0.5


def test_distinct_sorted_dense_and_sparse_ids():
    dense = np.array([5, 3, 3, 9, 0])
    assert distinct_sorted(dense).tolist() == [0, 3, 5, 9]
    sparse = np.array([2**40, 7, 2**40, -3])
    assert distinct_sorted(sparse).tolist() == [-3, 7, 2**40]


def test_background_writer_reports_a_failed_write(tmp_path):
    import pyarrow as pa
    import pytest

    schema = pa.schema([("a", pa.int64())])
    with pytest.raises(Exception):
        with fold_statistics.BackgroundParquetWriter(tmp_path / "t.parquet", schema) as writer:
            writer.write_table(pa.table({"a": [1, 2]}))
            writer.write_table(pa.table({"b": ["not the schema"]}))
    # a good run writes every table
    with fold_statistics.BackgroundParquetWriter(tmp_path / "u.parquet", schema) as writer:
        for i in range(3):
            writer.write_table(pa.table({"a": [i, i]}, schema=schema))
    assert pq.read_table(tmp_path / "u.parquet").column("a").to_pylist() == [0, 0, 1, 1, 2, 2]


def test_a_python_group_version_covers_the_helpers_it_imports(monkeypatch):
    import inspect

    from kuai_assets.groups.user_cluster_affinity import GROUP as USER_CLUSTER_AFFINITY
    from kuai_assets.groups.visual_similarity import GROUP as VISUAL_SIMILARITY

    before = USER_CLUSTER_AFFINITY.code_version
    visual_before = VISUAL_SIMILARITY.code_version
    real = inspect.getsource

    def edited(obj):
        text = real(obj)
        return text + "\n# edited\n" if getattr(obj, "__name__", "") == fold_statistics.__name__ else text

    monkeypatch.setattr(inspect, "getsource", edited)
    assert USER_CLUSTER_AFFINITY.code_version != before  # fold_statistics.py changed
    assert VISUAL_SIMILARITY.code_version != visual_before  # it uses float32_column from there too


def test_user_chunks_partition_rows_like_a_mask_per_range(monkeypatch):
    from kuai_assets.features.fold_statistics import UserChunks, positions_by_part

    rng = np.random.default_rng(5)
    user = rng.integers(0, 23, 1_000).astype(np.int32)
    known = rng.random(1_000) < 0.8
    assert UserChunks(23, 2).ranges == [(0, 23)]  # every user fits in one range
    monkeypatch.setattr(fold_statistics, "CELLS_PER_CHUNK", 10)  # five users of two cells each
    chunks = UserChunks(23, 2)
    assert chunks.ranges == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    parts = chunks.positions(user, known)
    assert len(parts) == len(chunks) + 1
    for (start, stop), positions in zip(chunks.ranges, parts):
        assert positions.tolist() == np.flatnonzero(known & (user >= start) & (user < stop)).tolist()
    assert parts[-1].tolist() == np.flatnonzero(~known).tolist()
    # more parts than a 16-bit key holds
    many = rng.integers(0, 70_000, 5_000)
    split = positions_by_part(many, 70_000)
    assert len(split) == 70_000 and sum(len(p) for p in split) == 5_000
    for p in np.unique(many)[:50]:
        assert split[p].tolist() == np.flatnonzero(many == p).tolist()


def test_durations_by_row_id_dense_and_sparse(tmp_path):
    import duckdb
    import pytest

    from kuai_assets.groups.published_baseline import Durations

    for name, row_id in [("dense", [4, 0, 2, 3]), ("sparse", [2**40, 7, -1, 3])]:
        con = duckdb.connect()
        con.execute("create table raw_interactions (row_id bigint, duration_time bigint)")
        con.executemany("insert into raw_interactions values (?, ?)", [(r, 10 * i + 1) for i, r in enumerate(row_id)])
        durations = Durations(con)
        assert durations.of(np.array(row_id[::-1])).tolist() == [31.0, 21.0, 11.0, 1.0], name
        for absent in ([1], [5], [-7], [2**41]):
            with pytest.raises(ValueError, match=r"model_rows: row_id\(s\) not in raw_interactions: \[" + str(absent[0])):
                durations.of(np.array([row_id[0]] + absent))


def test_sorted_with_order_packed_and_argsort_agree():
    from kuai_assets.groups.user_word_affinity import sorted_with_order

    rng = np.random.default_rng(11)
    for key in (rng.integers(0, 50, 3_000), rng.integers(0, 2**40, 3_000), np.array([], np.int64), np.array([7])):
        expected_order = np.argsort(key, kind="stable")
        for bits in (63, 8):  # 8 bits leaves no room for the positions: the argsort path
            sorted_key, order = sorted_with_order(key.astype(np.int64), bits)
            assert sorted_key.tolist() == key[expected_order].tolist()
            assert order.tolist() == expected_order.tolist()
