"""Label statistics never see the label of the row they describe (issue: honest validation).

The probe recomputes every label-using feature group with the labels of the validation rows,
and separately of one fold, shuffled among themselves; those rows' features must not move, while
other rows' features must (so the probe can fail). A deliberately leaky group proves it does.
"""

import pytest

from kuai_assets.features.catalog import load_sql_model
from kuai_assets.features.leakage import probe_label_leakage
from kuai_assets.storage import WorkDir

LEAKY_SQL = """-- A leak on purpose: the user's click rate over every row, its own included.
-- grain: setup, fold, user_id
-- uses_labels: true
-- continuous: leaky_click_rate
select r.setup, r.fold, r.user_id, avg(i.click)::float as leaky_click_rate
from model_rows as r
join raw_interactions as i using (row_id)
where i.split = 'train'
group by all
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
    assert all(r.max_change_protected > 1e-3 for r in results), results
    assert {r.worst_feature for r in results} == {"leaky_click_rate"}
