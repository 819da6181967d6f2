"""Feature groups are declared in their SQL files; lineage is read off the SQL itself."""

import pytest

from kuai_assets.features.catalog import (
    CatalogError,
    feature_groups,
    load_catalog,
    load_sql_model,
    parse_header,
    referenced_tables,
)


def test_every_feature_group_declares_grain_and_kinds():
    groups = feature_groups()
    assert len(groups) >= 10
    for group in groups:
        assert group.grain and (group.continuous or group.discrete) and group.description, group.name
    # derived from the lineage: every group reading label_history, and none other
    assert {g.name for g in groups if g.uses_labels} == {g.name for g in groups if "label_history" in g.upstream}
    assert {g.name for g in groups if g.uses_labels} >= {"user_behaviour", "user_cluster_affinity", "cluster_stats"}
    assert not {g.name for g in groups if g.uses_labels} & {"time_and_duration", "impression_context", "face_stats"}
    assert sorted(g.name for g in groups if g.uses_scored_window_log) == [
        "impression_context", "impression_embedding", "session_context", "user_cluster_exposure"]
    assert [g.name for g in groups if not g.enabled_by_default] == ["published_baseline"]


def test_lineage_comes_from_the_sql_and_skips_ctes():
    sql = """
        with a as (select * from raw_interactions), b as (select 1 as x from a)
        select * from b join label_history h using (x)
        where h.photo_id in (select photo_id from video_clusters)
    """
    assert referenced_tables(sql, "test") == ("label_history", "raw_interactions", "video_clusters")


def test_catalog_lineage_matches_files():
    catalog = load_catalog()
    assert catalog["user_cluster_affinity"].upstream == ("label_history", "model_rows", "video_clusters")
    assert catalog["model_rows"].upstream == ("raw_interactions",)
    assert [v.name for v in catalog["model_rows"].variables] == ["validation_hours", "folds", "validation_min_test_share"]


def write(tmp_path, layer, name, text):
    folder = tmp_path / layer
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.sql"
    path.write_text(text)
    return path


def test_header_errors_are_named(tmp_path):
    with pytest.raises(CatalogError, match="grain"):
        load_sql_model(write(tmp_path, "features", "g1", "-- continuous: a\nselect 1 as a"))
    with pytest.raises(CatalogError, match="declare continuous"):
        load_sql_model(write(tmp_path, "features", "g2", "-- grain: photo_id\nselect 1 as photo_id"))
    with pytest.raises(CatalogError, match="true or false"):
        parse_header("-- uses_scored_window_log: maybe\nselect 1", "x")
    with pytest.raises(CatalogError, match="uses_labels. is no longer declared: it is derived"):
        parse_header("-- uses_labels: false\nselect 1", "x")
    with pytest.raises(CatalogError, match="plain lowercase"):
        parse_header("-- grain: photo_id; drop table x\nselect 1", "x")
    with pytest.raises(CatalogError, match="does not parse"):
        load_sql_model(write(tmp_path, "features", "g3", "-- grain: photo_id\n-- continuous: a\nselect from where"))


def test_result_columns_must_match_the_declaration(tmp_path):
    model = load_sql_model(
        write(tmp_path, "features", "g", "-- grain: photo_id\n-- continuous: a, pc_*\n-- discrete: d\nselect 1")
    )
    assert model.check_columns(["photo_id", "a", "pc_00", "pc_01", "d"]) == [
        ("a", "continuous"),
        ("pc_00", "continuous"),
        ("pc_01", "continuous"),
        ("d", "discrete"),
    ]
    with pytest.raises(CatalogError, match="neither grain nor declared"):
        model.check_columns(["photo_id", "a", "d", "surprise"])
    with pytest.raises(CatalogError, match="not in the result"):
        model.check_columns(["photo_id", "d"])
    with pytest.raises(CatalogError, match="grain column"):
        model.check_columns(["a", "d"])


def test_label_use_is_derived_through_the_lineage():
    catalog = load_catalog()
    assert catalog["label_history"].uses_labels  # names raw_interactions.click itself
    assert not catalog["model_rows"].uses_labels  # reads raw_interactions, no label column
    assert catalog["user_behaviour"].uses_labels  # through label_history


PLUGIN = """
from kuai_assets.features.spec import TableModel


def compute(con, out, log):
    con.execute(f"copy (select setup, row_id, (row_id % 7)::double as row_id_mod_7 from model_rows) to '{out}' (format parquet)")


GROUP = TableModel(
    name="row_id_mod_7",
    layer="features",
    description="A plug-in written for the test: one file, nothing registered.",
    grain=("setup", "row_id"),
    upstream=("model_rows",),
    continuous=("row_id_mod_7",),
    compute=compute,
)
"""


def test_a_python_group_is_one_file(tmp_path, monkeypatch):
    """Dropping one module into the groups package puts a group, and its asset, in the graph."""
    import kuai_assets.groups

    (tmp_path / "row_id_mod_7.py").write_text(PLUGIN)
    monkeypatch.setattr(kuai_assets.groups, "__path__", [*kuai_assets.groups.__path__, str(tmp_path)])
    catalog = load_catalog()
    assert catalog["row_id_mod_7"].is_feature_group and not catalog["row_id_mod_7"].uses_labels
    from kuai_assets.defs.features import table_model_assets

    keys = {key.path[-1] for asset in table_model_assets() for key in asset.keys}
    assert "row_id_mod_7" in keys


def test_a_group_module_must_define_its_group(tmp_path, monkeypatch):
    import kuai_assets.groups

    (tmp_path / "no_group_here.py").write_text("X = 1\n")
    monkeypatch.setattr(kuai_assets.groups, "__path__", [*kuai_assets.groups.__path__, str(tmp_path)])
    with pytest.raises(CatalogError, match="no_group_here.py: a feature group module must define GROUP"):
        load_catalog()


def test_shared_sql_is_written_once_as_macros(tmp_path):
    """The out-of-fold sums live in one macro file; the models that call it render it, and
    editing the macro changes every caller's code version (and nothing else's)."""
    import shutil

    from kuai_assets.features.catalog import _load_sql_models, sql_root

    callers = {"user_behaviour", "cluster_stats", "user_face_preference", "user_attribute_taste", "word_click_rates",
               "user_face_match", "user_taste_within_clusters"}
    catalog = load_catalog()
    for name in callers:
        assert "{{" not in catalog[name].sql and "f.fold <> p.fold" in catalog[name].sql, name
        assert "model_rows" in catalog[name].upstream, name  # the macro's own table is in the lineage
    assert "macros" not in {m.layer for m in catalog.values()}

    copy = tmp_path / "sql"
    shutil.copytree(sql_root(), copy)
    macro = copy / "macros" / "out_of_fold.sql"
    macro.write_text(macro.read_text().replace("group by all", "group by all -- edited"))
    edited = {m.name: m for m in _load_sql_models(str(copy))}
    for model in _load_sql_models(str(sql_root())):  # the SQL files alone (no Python fast path)
        changed = edited[model.name].code_version != model.code_version
        assert changed == (model.name in callers), model.name


def test_a_macro_error_names_the_file(tmp_path):
    with pytest.raises(CatalogError, match=r"g4.sql: the SQL's macros do not render: .*no_such_macro"):
        load_sql_model(write(tmp_path, "features", "g4", "-- grain: photo_id\n-- continuous: a\nselect {{ no_such_macro() }}"))
