"""Label statistics never see the label of the row they describe (issue: honest validation).

The probe recomputes every feature group with the labels of the validation rows, and separately
of one fold, shuffled among themselves; those rows' features must not move, while other rows'
features must (so the probe can fail). A deliberately leaky group proves it does; a group cannot
claim to be label-free (label use is derived), and a group cannot read labels from
raw_interactions at all.
"""

import pytest

from kuai_assets.features.catalog import load_sql_model
from kuai_assets.features.leakage import probe_label_leakage
from kuai_assets.storage import WorkDir

LEAKY_SQL = """-- A leak on purpose: the user's click rate over every fit row of the setup, its own fold's included.
-- grain: setup, fold, user_id
-- continuous: leaky_click_rate
select r.setup, r.fold, r.user_id, avg(h.click)::float as leaky_click_rate
from (select distinct setup, fold, user_id from model_rows) as r
join label_history as h on h.setup = r.setup and h.user_id = r.user_id
group by all
"""

RAW_LABELS_SQL = """-- Reads the clicks straight from the log: refused, whatever it declares.
-- grain: setup, row_id
-- continuous: own_click
select r.setup, r.row_id, i.click::float as own_click
from model_rows as r
join raw_interactions as i using (row_id)
"""


def test_label_groups_do_not_leak(materialized, tmp_path):
    results = probe_label_leakage(WorkDir(materialized["work"]), tmp_path / "probe", users=20)
    assert len(results) == 2
    for result in results:
        assert result.rows_checked > 100, result
        assert result.max_change_protected <= 1e-5, result
        assert result.changed_elsewhere > 0, f"the shuffle moved nothing, so the probe proves nothing: {result}"


def test_probe_catches_a_leaky_group(materialized, tmp_path):
    (tmp_path / "features").mkdir()
    path = tmp_path / "features" / "leaky_user_rate.sql"
    path.write_text(LEAKY_SQL)
    leaky = load_sql_model(path)
    results = probe_label_leakage(WorkDir(materialized["work"]), tmp_path / "probe", groups=[leaky], users=20)
    leaked = [r for r in results if r.max_change_protected > 1e-3]
    # the validation rows' own labels never reach label_history; the fold's do, and are caught
    assert [r.scenario for r in leaked] == ["fold 0 labels shuffled"], results
    assert leaked[0].worst_feature == "leaky_click_rate"


def test_a_group_cannot_read_labels_from_the_log(materialized, tmp_path):
    from kuai_assets.features.catalog import CatalogError
    from kuai_assets.features.runner import materialize_table_model

    (tmp_path / "features").mkdir()
    path = tmp_path / "features" / "own_click.sql"
    path.write_text(RAW_LABELS_SQL)
    model = load_sql_model(path)
    work = WorkDir(tmp_path / "work")
    work.tables.mkdir(parents=True)
    for name in ("model_rows", "raw_interactions"):
        (work.tables / f"{name}.parquet").hardlink_to(WorkDir(materialized["work"]).table_path(name))
    with pytest.raises(CatalogError, match=r"own_click.sql: .*raw_interactions.* has no label column .*click.*label_history"):
        materialize_table_model(model, work)
    assert not work.table_path("own_click").exists()


def test_verdicts_keep_each_groups_last_passing_keys(tmp_path):
    from kuai_assets.features.leakage import KEPT_VERDICTS, read_verdicts, record_verdicts

    work = WorkDir(tmp_path / "work")
    assert read_verdicts(work) == {}
    for i in range(KEPT_VERDICTS + 2):
        record_verdicts(work, {"a": f"k{i}", "b": "same"})
    verdicts = read_verdicts(work)
    assert verdicts["a"] == [f"k{i}" for i in reversed(range(2, KEPT_VERDICTS + 2))]  # newest first, capped
    assert verdicts["b"] == ["same"]
    record_verdicts(work, {"b": "other"})  # a group no longer probed is dropped
    assert read_verdicts(work) == {"b": ["other", "same"]}
