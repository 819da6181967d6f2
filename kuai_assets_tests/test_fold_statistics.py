"""Out-of-fold sums by dense counting, against a direct loop; and the edges of the numpy groups."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from kuai_assets.features import fold_statistics
from kuai_assets.features.fold_statistics import FoldSums, distinct_sorted
from kuai_assets.features.published_baseline import _means


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

    from kuai_assets.features.cluster_affinity import USER_CLUSTER_AFFINITY
    from kuai_assets.features.python_groups import VISUAL_SIMILARITY

    before = USER_CLUSTER_AFFINITY.code_version
    visual_before = VISUAL_SIMILARITY.code_version
    real = inspect.getsource

    def edited(obj):
        text = real(obj)
        return text + "\n# edited\n" if getattr(obj, "__name__", "") == fold_statistics.__name__ else text

    monkeypatch.setattr(inspect, "getsource", edited)
    assert USER_CLUSTER_AFFINITY.code_version != before  # fold_statistics.py changed
    assert VISUAL_SIMILARITY.code_version != visual_before  # it uses float32_column from there too
