"""The same SQL definitions on DuckDB and on Spark give the same tables; bad engine settings are named.

Spark runs `local[2]` in this process's JVM and needs Java 17+: without it these tests fail with
the reason (they are never skipped). The raw and visual tables are those of the session's
materialized tiny graph (conftest.materialized); every SQL table model then runs on each engine in
its own work dir (on Spark the whole chain runs on Spark: model_rows and label_history too).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest

from kuai_assets.engines import Engine, EngineError
from kuai_assets.features.catalog import SOURCE_TABLES, load_catalog
from kuai_assets.features.runner import materialize_table_model
from kuai_assets.storage import WorkDir
from kuai_assets_tests.conftest import TEST_SPARK, make_resources


def sql_models_in_order() -> list[str]:
    catalog = load_catalog()
    features = sorted(n for n, m in catalog.items() if m.is_feature_group and m.sql is not None)
    return ["model_rows", "label_history", *features]


def link_sources(source: Path, work: Path) -> WorkDir:
    (work / "tables").mkdir(parents=True)
    for name in SOURCE_TABLES:
        os.link(source / "tables" / f"{name}.parquet", work / "tables" / f"{name}.parquet")
    return WorkDir(work)


@pytest.fixture(scope="module")
def both_engines(materialized, tmp_path_factory, spark):
    """Every SQL table model materialized by DuckDB and by Spark from the materialized graph's source
    tables: {engine: (WorkDir, seconds)}."""
    root = tmp_path_factory.mktemp("engines")
    catalog = load_catalog()
    out = {}
    for name, engine in (("duckdb", Engine()), ("spark", TEST_SPARK)):
        work = link_sources(materialized["work"], root / name)
        started = time.time()
        for model in sql_models_in_order():
            result = materialize_table_model(catalog[model], work, engine=engine)
            assert result.engine == ("duckdb" if name == "duckdb" else "spark local[2]")
            # DuckDB runs a group's numpy fast path where it has one, Spark always the SQL
            fast = name == "duckdb" and catalog[model].has_fast_path
            assert result.definition == ("python" if fast else "sql")
        out[name] = (work, time.time() - started)
    print(f"\nDuckDB {out['duckdb'][1]:.1f} s, Spark local[2] {out['spark'][1]:.1f} s (the session's JVM already up)")
    return out


def assert_same_table(a: Path, b: Path, grain: list[str], tolerance: float = 1e-6) -> None:
    """Same columns and types, same rows by grain, floats within `tolerance` (absolute, or relative
    above 1), the same nulls, everything else equal."""
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert [(f.name, str(f.type)) for f in ta.schema] == [(f.name, str(f.type)) for f in tb.schema]
    fa = ta.to_pandas().sort_values(grain).reset_index(drop=True)
    fb = tb.to_pandas().sort_values(grain).reset_index(drop=True)
    assert len(fa) == len(fb) > 0
    assert (fa[grain].to_numpy() == fb[grain].to_numpy()).all(), "the keys differ"
    for column in fa.columns:
        x, y = fa[column], fb[column]
        assert (x.isna().to_numpy() == y.isna().to_numpy()).all(), f"{column}: nulls differ"
        x, y = x[~x.isna()], y[~y.isna()]
        if x.dtype.kind == "f":
            x, y = x.to_numpy(np.float64), y.to_numpy(np.float64)
            worst = (np.abs(x - y) / np.maximum(1.0, np.abs(x))).max(initial=0.0)
            assert worst <= tolerance, f"{column}: differs by {worst:.3g}"
        else:
            assert (x.to_numpy() == y.to_numpy()).all(), f"{column} differs"


@pytest.mark.parametrize("name", sql_models_in_order())
def test_spark_gives_the_duckdb_table(both_engines, name):
    """For a group with a numpy fast path, DuckDB ran the fast path and Spark the SQL."""
    grain = list(load_catalog()[name].grain)
    duck, spark = both_engines["duckdb"][0], both_engines["spark"][0]
    assert_same_table(duck.table_path(name), spark.table_path(name), grain)


def test_the_comparison_can_fail(both_engines, tmp_path):
    """A float moved by more than the tolerance, or one row dropped, is seen."""
    import pyarrow as pa

    path = both_engines["duckdb"][0].table_path("user_behaviour")
    table = pq.read_table(path)
    rates = table.column("user_click_rate").to_numpy().copy()
    rates[7] += 1e-5
    moved = tmp_path / "moved.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("user_click_rate"), "user_click_rate", pa.array(rates)), moved)
    grain = ["setup", "fold", "user_id"]
    with pytest.raises(AssertionError, match="user_click_rate: differs by"):
        assert_same_table(path, moved, grain)
    dropped = tmp_path / "dropped.parquet"
    pq.write_table(table.slice(1), dropped)
    with pytest.raises(AssertionError):
        assert_same_table(path, dropped, grain)


def test_bad_engine_settings_are_named_before_any_work():
    with pytest.raises(EngineError, match="engine kind 'sparkle' is not one of duckdb, spark"):
        Engine("sparkle").check()
    with pytest.raises(EngineError, match=r"spark_url 'spark://x:7077' is neither `local\[N\]`.*nor a Spark Connect URL"):
        Engine("spark", "spark://x:7077").check()
    with pytest.raises(EngineError, match=r"Spark Connect server sc://127.0.0.1:1 is unreachable: 127.0.0.1:1: "):
        Engine("spark", "sc://127.0.0.1:1").check()
    # a host that never answers (TEST-NET-1): refused within the timeout, not after minutes
    started = time.time()
    with pytest.raises(EngineError, match=r"Spark Connect server sc://192.0.2.1:15002 is unreachable"):
        Engine("spark", "sc://192.0.2.1:15002").check(timeout=2.0)
    assert time.time() - started < 4.0


def test_spark_without_java_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineError, match="Spark local.N. needs Java 17 or later and there is no `java` on PATH"):
        Engine("spark", "local[2]").check()


def test_the_asset_records_its_engine_and_refuses_a_bad_one(both_engines, tiny_data):
    from kuai_assets.defs.engine import EngineResource
    from kuai_assets.defs.features import table_model_asset

    work = both_engines["spark"][0]
    asset = table_model_asset(load_catalog()["face_stats"])
    before = work.table_path("face_stats").stat().st_mtime_ns
    resources = make_resources(tiny_data, work.root)
    resources["engine"] = EngineResource(kind="spark", spark_url="sc://127.0.0.1:1")
    result = dg.materialize([asset], resources=resources, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "Spark Connect server sc://127.0.0.1:1 is unreachable" in str(failure.message)
    assert work.table_path("face_stats").stat().st_mtime_ns == before  # nothing was touched

    resources["engine"] = EngineResource(kind="spark", spark_url="local[2]")
    result = dg.materialize([asset], resources=resources)
    metadata = result.asset_materializations_for_node("face_stats")[0].metadata
    assert metadata["engine"].value == "spark local[2]" and metadata["definition"].value == "sql"


def test_a_python_group_without_sql_is_refused_on_spark(both_engines):
    """Unless it says why it has no distributed definition (driver_only), as only
    impression_embedding, user_visual_group_affinity and visual_taste do."""
    import dataclasses

    from kuai_assets.features.spec import CatalogError

    catalog = load_catalog()
    without_sql = sorted(m.name for m in catalog.values() if m.sql is None)
    assert without_sql == ["impression_embedding", "user_visual_group_affinity", "visual_taste"]
    assert all(catalog[name].driver_only for name in without_sql)
    python_only = dataclasses.replace(catalog["impression_embedding"], driver_only=None)
    with pytest.raises(CatalogError, match="impression_embedding is a Python feature group with no SQL definition"):
        materialize_table_model(python_only, both_engines["spark"][0], engine=TEST_SPARK)


def test_a_driver_only_group_runs_its_python_on_the_spark_driver(both_engines, tmp_path):
    from kuai_assets.features.runner import DRIVER_DEFINITION

    group = load_catalog()["impression_embedding"]
    messages: list[str] = []
    spark = materialize_table_model(group, both_engines["spark"][0], engine=TEST_SPARK, log=messages.append)
    assert DRIVER_DEFINITION == "python (driver, not distributed)"
    assert (spark.engine, spark.definition) == ("spark local[2]", DRIVER_DEFINITION)
    assert any("no distributed definition" in m and "on the Spark driver" in m for m in messages), messages
    duck = materialize_table_model(group, both_engines["duckdb"][0])
    assert duck.definition == "python"
    assert_same_table(
        both_engines["duckdb"][0].table_path(group.name), both_engines["spark"][0].table_path(group.name), list(group.grain)
    )


FAST_PATHS = sorted(m.name for m in load_catalog().values() if m.has_fast_path)


@pytest.mark.parametrize("name", FAST_PATHS)
def test_the_sql_definition_gives_the_fast_path_table(both_engines, tmp_path, name):
    """The SQL file run by DuckDB gives the numpy fast path's table."""
    import dataclasses

    catalog = load_catalog()
    duck = both_engines["duckdb"][0]
    work = WorkDir(tmp_path)
    work.tables.mkdir()
    for upstream in catalog[name].upstream:
        os.link(duck.table_path(upstream), work.table_path(upstream))
    result = materialize_table_model(dataclasses.replace(catalog[name], compute=None), work)
    assert result.definition == "sql"
    assert_same_table(duck.table_path(name), work.table_path(name), list(catalog[name].grain))


def test_groups_with_a_fast_path():
    assert FAST_PATHS == [
        "impression_context", "published_baseline", "session_context", "user_cluster_affinity", "user_word_affinity",
        "visual_similarity",
    ]


def test_a_sql_definition_and_its_fast_path_must_agree(tmp_path):
    import shutil

    from kuai_assets.features.catalog import REPO_ROOT
    from kuai_assets.features.spec import CatalogError

    root = shutil.copytree(REPO_ROOT / "dbt_like_sql", tmp_path / "sql")
    path = root / "features" / "user_word_affinity.sql"
    path.write_text(path.read_text().replace("-- grain: setup, row_id", "-- grain: row_id"))
    with pytest.raises(
        CatalogError,
        match=rf"^{path} and kuai_assets.groups.user_word_affinity disagree on grain: the SQL declares \('row_id',\), "
        r"the Python group \('setup', 'row_id'\)$",
    ):
        load_catalog(root)


def write_vector_tables(work: WorkDir, dimensions: int, seed: int = 5) -> None:
    """A hand-made model_rows, label_history and pca_visual_features with `dimensions` components:
    two setups, three folds and scored rows, a photo whose vector is zero, and a user whose clicks
    all fall in fold 0 (so fold 0's clicked centroid is empty out of fold)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    work.tables.mkdir(parents=True, exist_ok=True)
    photos = np.arange(100, 140)
    values = rng.normal(size=(len(photos), dimensions)).astype(np.float32)
    values[3] = 0.0
    pca = {"photo_id": photos, "split": np.where(photos % 2 == 0, "train", "test")}
    pca.update({f"pc_{d:02d}": values[:, d] for d in range(dimensions)})
    pq.write_table(pa.table(pca), work.table_path("pca_visual_features"))
    rows, history = [], []
    row_id = 0
    for setup in ("a", "b"):
        for user in range(1, 9):
            for _ in range(30):
                fold = int(rng.integers(-1, 3))
                photo = int(rng.choice(photos))
                click = int(rng.random() < 0.3)
                if user == 8:  # clicks only in fold 0
                    click = int(fold == 0)
                rows.append((setup, fold, row_id, user, photo, "fit" if fold >= 0 else "score"))
                if fold >= 0:
                    history.append((setup, fold, row_id, user, photo, click))
                row_id += 1
    names = ["setup", "fold", "row_id", "user_id", "photo_id", "role"]
    pq.write_table(pa.table(dict(zip(names, map(list, zip(*rows))))), work.table_path("model_rows"))
    names = ["setup", "fold", "row_id", "user_id", "photo_id", "click"]
    pq.write_table(pa.table(dict(zip(names, map(list, zip(*history))))), work.table_path("label_history"))


@pytest.mark.parametrize("dimensions", [3, 16])
def test_visual_similarity_sql_reads_every_component_the_pca_kept(tmp_path, dimensions):
    """The SQL definition lists the PCA's columns as the table has them (`columns(...)`), so it
    gives the numpy fast path's table at any number of components, empty centroids included."""
    import dataclasses

    group = load_catalog()["visual_similarity"]
    assert group.template is not None and "pc_0 " in group.sql  # the stand-in while loading
    fast, sql = WorkDir(tmp_path / "fast"), WorkDir(tmp_path / "sql")
    for work in (fast, sql):
        write_vector_tables(work, dimensions)
    assert materialize_table_model(group, fast).definition == "python"
    assert materialize_table_model(dataclasses.replace(group, compute=None), sql).definition == "sql"
    assert_same_table(fast.table_path(group.name), sql.table_path(group.name), ["setup", "row_id"])
    table = pq.read_table(sql.table_path(group.name)).to_pandas()
    assert table["visual_similarity_clicked"].isna().any() and table["visual_similarity_clicked"].notna().any()


def test_a_column_family_that_is_not_there_is_named(tmp_path):
    import dataclasses

    import pyarrow as pa

    from kuai_assets.features.spec import CatalogError

    work = WorkDir(tmp_path)
    write_vector_tables(work, 2)
    pq.write_table(pa.table({"photo_id": [1], "split": ["train"], "component_0": [0.5]}), work.table_path("pca_visual_features"))
    group = dataclasses.replace(load_catalog()["visual_similarity"], compute=None)
    with pytest.raises(
        CatalogError,
        match=r"visual_similarity.sql: columns\('pca_visual_features', 'pc_'\): pca_visual_features has no column "
        r"starting with 'pc_' \(it has: photo_id, split, component_0\)",
    ):
        materialize_table_model(group, work)


def spark_plan_nodes(node):
    """A Spark physical plan's nodes (JVM objects), depth first, through AQE's wrapper."""
    if node.nodeName() == "AdaptiveSparkPlan":
        yield from spark_plan_nodes(node.executedPlan())
        return
    yield node
    children = node.children()
    for i in range(children.size()):
        yield from spark_plan_nodes(children.apply(i))


def output_names(node) -> set[str]:
    output = node.output()
    return {output.apply(i).name() for i in range(output.size())}


def test_visual_similarity_broadcasts_the_centroids_on_spark(spark, tmp_path):
    """The `cosine` CTE's hint reaches Spark: the rows (64 components a photo at the demo size)
    join their user's centroids in a BroadcastHashJoin that builds the centroid table, from the
    first physical plan, not in a SortMergeJoin that shuffles the wide rows. Spark's automatic
    broadcast is off here, as it is in effect at scale (its size estimate of the centroid side is
    astronomically large there), and the tiny tables would otherwise be broadcast by size alone."""
    import re

    from kuai_assets.engines.portability import to_spark_sql
    from kuai_assets.features.runner import rendered_sql, resolve_variables

    group = load_catalog()["visual_similarity"]
    work = WorkDir(tmp_path)
    write_vector_tables(work, 4)
    con = work.connect(group.upstream)
    try:
        sql = rendered_sql(group, con)  # as the runner builds it
    finally:
        con.close()
    spark_sql = to_spark_sql(sql, resolve_variables(group, None), str(group.path))
    for name in group.upstream:
        spark.read.parquet(str(work.table_path(name))).createOrReplaceTempView(name)
    threshold = spark.conf.get("spark.sql.autoBroadcastJoinThreshold")
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    try:
        nodes = list(spark_plan_nodes(spark.sql(spark_sql)._jdf.queryExecution().executedPlan()))
    finally:
        spark.conf.set("spark.sql.autoBroadcastJoinThreshold", threshold)
        for name in group.upstream:
            spark.catalog.dropTempView(name)
    joins = [n for n in nodes if n.nodeName().endswith("Join") or n.nodeName() == "CartesianProduct"]
    # the rows (they have row_id) with the centroids (they have length)
    cosine = [
        j for j in joins
        if {"row_id", "length"} <= output_names(j.left()) | output_names(j.right())
        and not {"row_id", "length"} <= output_names(j.left())
        and not {"row_id", "length"} <= output_names(j.right())
    ]
    assert [j.nodeName() for j in cosine] == ["BroadcastHashJoin"], [j.toString() for j in cosine]
    join = cosine[0]
    build = join.right() if join.buildSide().toString() == "BuildRight" else join.left()
    assert "length" in output_names(build) and "row_id" not in output_names(build), join.toString()
    keys = join.leftKeys()
    assert sorted(re.sub(r"#\d+.*", "", keys.apply(i).toString()) for i in range(keys.size())) == ["fold", "setup", "user_id"]


@pytest.mark.parametrize("arriving", [True, False], ids=["photos_arrive_over_time", "catalogue_from_the_start"])
def test_model_rows_holds_out_fold_0_alike_on_spark(spark, tmp_path, arriving):
    """The validation's fold-0 fallback (a catalogue there from the first hour) is the same on both engines."""
    from kuai_assets_tests.test_model_rows import interactions

    model = load_catalog()["model_rows"]
    tables = {}
    for name, engine in (("duckdb", Engine()), ("spark", TEST_SPARK)):
        work = WorkDir(tmp_path / name)
        interactions(work, arriving)
        materialize_table_model(model, work, engine=engine)
        tables[name] = work.table_path("model_rows")
    assert_same_table(tables["duckdb"], tables["spark"], list(model.grain))
    held_out = pq.read_table(tables["spark"]).to_pandas().query("setup == 'validation' and role == 'fit'")
    assert (0 in set(held_out["fold"])) == arriving
