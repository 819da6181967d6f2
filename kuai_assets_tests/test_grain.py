"""The packed-key grain check agrees with DuckDB's group by, and says which grain value repeats."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kuai_assets.features import grain
from kuai_assets.features.grain import first_duplicate


def duckdb_duplicates(path, keys) -> dict[tuple, int]:
    """Every repeated grain value with its count, by DuckDB's group by (the reference)."""
    found = duckdb.sql(
        f"select {', '.join(keys)}, count(*) from read_parquet('{path}') group by all having count(*) > 1"
    ).fetchall()
    return {tuple(row[:-1]): row[-1] for row in found}


def random_table(rng: np.random.Generator, rows: int, duplicate: bool) -> pa.Table:
    setup = rng.choice(["validation", "submission"], rows)
    fold = rng.integers(-1, 5, rows).astype(np.int32)
    user_id = rng.integers(-3, 10**12, rows)  # sparse ids over a wide range, negatives too
    row_id = rng.permutation(rows * 3)[:rows].astype(np.int64)
    if duplicate:
        i, j = rng.choice(rows, 2, replace=False)
        setup[j], fold[j], user_id[j], row_id[j] = setup[i], fold[i], user_id[i], row_id[i]
    user_mask = rng.random(rows) < 0.1  # nulls in a grain column: two nulls are the same value
    return pa.table(
        {
            "setup": pa.array(setup),
            "fold": pa.array(fold),
            "user_id": pa.array(user_id, mask=user_mask),
            "row_id": pa.array(row_id),
        }
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("duplicate", [False, True])
def test_agrees_with_duckdb_group_by(tmp_path, seed, duplicate):
    rng = np.random.default_rng(seed)
    table = random_table(rng, 5_000, duplicate)
    path = tmp_path / "t.parquet"
    # several row groups, and dictionary pages for some columns only: chunks with their own dictionaries
    pq.write_table(table, path, row_group_size=700, use_dictionary=["setup", "fold"])
    keys = ("setup", "fold", "row_id")
    expected = duckdb_duplicates(path, keys)
    found = first_duplicate(duckdb.connect(), path, keys)
    assert (found is not None) == bool(expected) == duplicate
    if found is not None:
        values, count = found
        assert tuple(values[k] for k in keys) in expected
        assert count == expected[tuple(values[k] for k in keys)]


def test_nulls_repeat_like_duckdb_and_count_all_copies(tmp_path):
    table = pa.table(
        {
            "setup": ["a", "a", "b", "a", "a", None, None],
            "user_id": pa.array([1, None, 1, None, None, 7, 7], pa.int64()),
        }
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    assert duckdb_duplicates(path, ("setup", "user_id")) == {("a", None): 3, (None, 7): 2}
    values, count = first_duplicate(duckdb.connect(), path, ("setup", "user_id"))
    assert (values, count) in [({"setup": "a", "user_id": None}, 3), ({"setup": None, "user_id": 7}, 2)]
    assert first_duplicate(duckdb.connect(), path, ("user_id",)) == ({"user_id": 1}, 2)


def test_a_key_too_wide_to_pack_or_a_float_column_falls_back_to_duckdb(tmp_path, monkeypatch):
    wide = pa.table(
        {
            "a": pa.array([0, 2**62, 5, 0], pa.int64()),
            "b": pa.array([-(2**62), 2**62, 1, -(2**62)], pa.int64()),
        }
    )
    floats = pa.table({"a": pa.array([0.5, 1.5, 0.5]), "b": pa.array([1, 2, 1], pa.int64())})
    unique = pa.table({"a": pa.array([0, 2**62], pa.int64()), "b": pa.array([-(2**62), 2**62], pa.int64())})
    calls = []
    real_column = grain._Column

    def counting_column(column):
        calls.append(column.type)
        return real_column(column)

    monkeypatch.setattr(grain, "_Column", counting_column)
    for name, table, expected in [
        ("wide", wide, ({"a": 0, "b": -(2**62)}, 2)),
        ("floats", floats, ({"a": 0.5, "b": 1}, 2)),
        ("unique", unique, None),
    ]:
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path)
        assert first_duplicate(duckdb.connect(), path, ("a", "b")) == expected, name
    assert all(pa.types.is_integer(t) for t in calls)  # the float table never tried to pack


def test_packs_without_duckdb_when_the_key_fits(tmp_path):
    table = pa.table({"setup": ["x", "y", "x"], "row_id": pa.array([10**12, 10**12, 10**12], pa.int64())})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)

    class NoDuckDB:
        def execute(self, *args):
            raise AssertionError("the packed check should not have asked DuckDB")

    assert first_duplicate(NoDuckDB(), path, ("setup", "row_id")) == ({"setup": "x", "row_id": 10**12}, 2)
    assert first_duplicate(NoDuckDB(), path, ("row_id", "setup")) == ({"row_id": 10**12, "setup": "x"}, 2)
    pq.write_table(table.slice(0, 2), path)
    assert first_duplicate(NoDuckDB(), path, ("setup", "row_id")) is None


def test_a_group_whose_grain_repeats_is_refused_and_not_published(materialized, tmp_path):
    from kuai_assets.features.catalog import CatalogError, load_sql_model
    from kuai_assets.features.runner import materialize_table_model
    from kuai_assets.storage import WorkDir

    source, work = WorkDir(materialized["work"]), WorkDir(tmp_path / "work")
    work.tables.mkdir(parents=True)
    (work.tables / "model_rows.parquet").write_bytes(source.require_table("model_rows").read_bytes())
    (tmp_path / "features").mkdir()
    path = tmp_path / "features" / "rows_per_user.sql"
    # one row per model row, declared as one per (setup, fold, user): users with several rows repeat
    path.write_text(
        "-- grain: setup, fold, user_id\n-- continuous: one\n"
        "select setup, fold, user_id, 1::float as one from model_rows\n"
    )
    with pytest.raises(CatalogError, match=r"rows_per_user\.sql: the grain \(setup, fold, user_id\) is not unique: "
                       r"\{'setup': '\w+', 'fold': -?\d+, 'user_id': \d+\} appears \d+ times"):
        materialize_table_model(load_sql_model(path), work)
    assert not work.has_table("rows_per_user")
    assert list(work.tables.iterdir()) == [work.tables / "model_rows.parquet"]
