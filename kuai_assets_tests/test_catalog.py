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
    assert {g.name for g in groups if g.uses_labels} >= {"user_behaviour", "user_cluster_affinity", "cluster_stats"}
    assert [g.name for g in groups if g.uses_scored_window_log] == ["impression_context"]
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
    assert [v.name for v in catalog["model_rows"].variables] == ["validation_hours", "folds"]


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
        parse_header("-- uses_labels: maybe\nselect 1", "x")
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
