"""training_matrix rebuilt after an edit: the groups whose piece key is unchanged are copied from
the previous matrix, the others joined again, and the result is byte for byte what a build from
nothing gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from kuai_assets.features.catalog import feature_groups, load_catalog
from kuai_assets.features.matrix import MATRIX, PIECES_KEY, build_training_matrix, read_features
from kuai_assets.storage import WorkDir, sql_string


def _copy_tables(source: Path, target: Path, with_matrix: bool = True) -> WorkDir:
    shutil.copytree(source / "tables", target / "tables")
    if not with_matrix:
        (target / "tables" / f"{MATRIX}.parquet").unlink()
    return WorkDir(target)


def _rewrite(work: WorkDir, table: str, select: str) -> None:
    """Replace `table` by `select` over its current content (read as `t`)."""
    path = work.table_path(table)
    tmp = path.with_name(path.name + ".new")
    con = duckdb.connect()
    try:
        con.execute(f"copy ({select.format(t=f'read_parquet({sql_string(path)})')}) to {sql_string(tmp)} (format parquet)")
    finally:
        con.close()
    tmp.replace(path)


@pytest.fixture(scope="module")
def groups():
    return feature_groups(load_catalog())


def test_a_rebuild_over_the_same_tables_joins_nothing_and_writes_the_same_bytes(materialized, tmp_path, groups):
    source = Path(materialized["work"])
    assert PIECES_KEY in pq.read_schema(source / "tables" / f"{MATRIX}.parquet").metadata
    work = _copy_tables(source, tmp_path / "w")
    logged: list[str] = []
    result = build_training_matrix(work, groups, logged.append)
    assert result["kept_groups"] == [g.name for g in groups]
    assert not [m for m in logged if "joined" in m]
    assert [m for m in logged if "kept" in m] == [
        f"training_matrix: kept the columns of {len(groups)} of {len(groups)} groups from the previous matrix, their "
        f"tables and rows unchanged: {', '.join(g.name for g in groups)}"]
    assert work.table_path(MATRIX).read_bytes() == (source / "tables" / f"{MATRIX}.parquet").read_bytes()


def test_after_one_group_changes_only_it_is_joined_and_the_matrix_is_what_a_full_build_gives(materialized, tmp_path, groups):
    source = Path(materialized["work"])
    edited = "time_and_duration"
    feature = next(f for f in read_features(source / "tables" / f"{MATRIX}.parquet")
                   if f.group == edited and f.kind == "continuous")
    before = pq.read_table(source / "tables" / f"{MATRIX}.parquet", columns=[feature.name]).column(0).to_numpy(zero_copy_only=False)

    incremental = _copy_tables(source, tmp_path / "incremental")
    _rewrite(incremental, edited, f"select * replace ({feature.source} * 2 + 1 as {feature.source}) from {{t}}")
    logged: list[str] = []
    result = build_training_matrix(incremental, groups, logged.append)
    assert result["kept_groups"] == [g.name for g in groups if g.name != edited]
    assert [m for m in logged if "joined" in m] == [
        f"training_matrix: joined {edited} ({[g.name for g in groups].index(edited) + 1} of {len(groups)})"
    ]

    full = _copy_tables(incremental.root, tmp_path / "full", with_matrix=False)
    assert build_training_matrix(full, groups)["kept_groups"] == []
    assert incremental.table_path(MATRIX).read_bytes() == full.table_path(MATRIX).read_bytes()
    after = pq.read_table(incremental.table_path(MATRIX), columns=[feature.name]).column(0).to_numpy(zero_copy_only=False)
    assert (after != before).any()  # the edit reached the matrix


def test_other_rows_or_an_unreadable_previous_matrix_mean_every_group_is_joined(materialized, tmp_path, groups):
    source = Path(materialized["work"])
    # a row sample: other rows than the previous matrix holds
    sampled = _copy_tables(source, tmp_path / "sampled")
    fit_rows = pq.read_table(sampled.table_path("model_rows"), columns=["role"]).column(0).to_pylist().count("fit")
    assert build_training_matrix(sampled, groups, max_fit_rows_per_setup=fit_rows // 4)["kept_groups"] == []
    # model_rows rewritten with one user's rows moved to another user: the same row ids, other join keys
    moved = _copy_tables(source, tmp_path / "moved")
    _rewrite(moved, "model_rows", "select * replace (case when user_id = (select min(user_id) from {t}) "
                                  "then user_id + 1 else user_id end as user_id) from {t}")
    assert build_training_matrix(moved, groups)["kept_groups"] == []
    # a previous matrix cut short: not readable as Parquet
    broken = _copy_tables(source, tmp_path / "broken")
    data = broken.table_path(MATRIX).read_bytes()
    broken.table_path(MATRIX).write_bytes(data[: len(data) // 2])
    assert build_training_matrix(broken, groups)["kept_groups"] == []
    assert broken.table_path(MATRIX).read_bytes() == data
