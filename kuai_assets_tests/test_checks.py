"""Every asset check can fail: each is run on a work dir built to break it, and on a good one.

A check that cannot fail guards nothing, so each test first shows the check passing on a sound
table and then failing, with the metadata naming what is wrong, once one thing is broken.
"""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kuai_assets.defs import checks
from kuai_assets.defs.resources import WorkspaceResource
from kuai_assets.features.catalog import SOURCE_TABLES
from kuai_assets.features.leakage import VERDICTS_FILE, plan_probe, read_verdicts, record_verdicts
from kuai_assets.storage import WorkDir
from kuai_assets_tests.conftest import make_resources
from kuai_assets_tests.handmade import write_dataset
from kuai_assets_tests.test_leakage import LEAKY_SQL


def values(result: dg.AssetCheckResult) -> dict:
    return {k: getattr(v, "value", v) for k, v in result.metadata.items()}


def workspace(work, data=None) -> WorkspaceResource:
    """Without data: the work dir's synthetic default (which the resource accepts before a step
    runs, being generated on first use); these checks read only the work dir, so it never is."""
    return WorkspaceResource(data_dir=str(data or Path(work) / "data" / "tiny"), work_dir=str(work))


def write_table(work, name: str, columns: dict) -> None:
    path = WorkDir(work).table_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


# -- raw_interactions ----------------------------------------------------------------------------


def interactions(split, photo_id, click) -> dict:
    n = len(split)
    return {
        "row_id": np.arange(n),
        "split": split,
        "user_id": np.ones(n, dtype=np.int64),
        "photo_id": np.asarray(photo_id, dtype=np.int64),
        "click": pa.array(click, pa.int8()),
    }


def test_train_and_test_photos_disjoint_can_fail(tmp_path):
    write_table(tmp_path, "raw_interactions", interactions(["train", "train", "test"], [1, 2, 3], [1, 0, None]))
    assert checks.train_and_test_photos_disjoint(workspace=workspace(tmp_path)).passed
    write_table(tmp_path, "raw_interactions", interactions(["train", "train", "test"], [1, 2, 2], [1, 0, None]))
    result = checks.train_and_test_photos_disjoint(workspace=workspace(tmp_path))
    assert not result.passed and values(result)["shared_photo_ids"] == 1


@pytest.mark.parametrize(
    "split, click, why",
    [
        (["train"] * 4 + ["test"], [1, 1, 1, 1, None], "every train row clicked"),
        (["train"] * 4 + ["test"], [0, 0, 0, 0, None], "no click at all"),
        (["train"] * 5, [1, 0, 0, 0, 0], "no test rows"),
    ],
)
def test_click_rate_plausible_can_fail(tmp_path, split, click, why):
    write_table(tmp_path, "raw_interactions", interactions(["train"] * 4 + ["test"], range(5), [1, 0, 0, 0, None]))
    assert checks.click_rate_plausible(workspace=workspace(tmp_path)).passed
    write_table(tmp_path, "raw_interactions", interactions(split, range(5), click))
    assert not checks.click_rate_plausible(workspace=workspace(tmp_path)).passed, why


def model_rows_and_labels(tmp_path, validation_scored: int, test: int) -> None:
    """model_rows with 40 validation fit rows (click rate 0.25, fold 1), `validation_scored`
    validation scored rows (click rate 0.5), as many submission fit rows (folds 0 and 1) and `test`
    test rows."""
    roles = (["validation/fit"] * 40 + ["validation/scored"] * validation_scored
             + ["submission/fit"] * (40 + validation_scored) + ["submission/scored"] * test)
    n = len(roles)
    write_table(tmp_path, "model_rows", {
        "setup": [r.split("/")[0] for r in roles], "role": [r.split("/")[1] for r in roles],
        "row_id": np.arange(n), "user_id": np.ones(n, dtype=np.int64), "photo_id": np.arange(n),
        "fold": [(1 if r.startswith("validation") else i % 2) if r.endswith("fit") else -1 for i, r in enumerate(roles)],
    })
    click = ([1, 0, 0, 0] * 10 + [1, 0] * (validation_scored // 2)
             + [1, 0, 0, 0] * 10 + [1, 0] * (validation_scored // 2) + [None] * test)
    write_table(tmp_path, "raw_interactions", interactions(
        ["test" if r == "submission/scored" else "train" for r in roles], range(n), click))


def test_auc_standard_error_follows_hanley_and_mcneil():
    # at an AUC of 0.5 it is exactly the Mann-Whitney statistic's: variance (m + n + 1) / (12 m n)
    assert checks.auc_standard_error(50, 50, 0.5) == pytest.approx((101 / (12 * 50 * 50)) ** 0.5)
    assert checks.auc_standard_error(30, 70, 0.5) == pytest.approx((101 / (12 * 30 * 70)) ** 0.5)
    assert checks.auc_standard_error(1000, 1000) < checks.auc_standard_error(100, 1900)  # few clicks: noisier
    assert checks.auc_standard_error(0, 50) == float("inf")


def test_validation_scores_like_test_warns_when_the_validation_auc_rests_on_few_rows(tmp_path):
    # an AUC of 0.7 read to 0.01 takes about 2,700 rows at half clicks
    model_rows_and_labels(tmp_path, validation_scored=4000, test=20000)
    result = checks.validation_scores_like_test(workspace=workspace(tmp_path))
    assert result.passed and values(result)["validation_auc_standard_error"] < 0.01
    model_rows_and_labels(tmp_path, validation_scored=2000, test=20000)
    result = checks.validation_scores_like_test(workspace=workspace(tmp_path))
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    found = values(result)
    assert found.pop("validation_auc_standard_error") == pytest.approx(checks.auc_standard_error(1000, 1000))
    assert found == {"validation_scored_rows": 2000, "validation_scored_clicks": 1000, "test_rows": 20000,
                     "validation_to_test_rows": 0.1, "validation_scored_click_rate": 0.5,
                     "validation_fit_click_rate": 0.25, "fold_0_held_out": True}
    assert result.description.startswith("the validation scores 2,000 rows (1,000 clicks) against the test's 20,000: "
                                          "its AUC is read to about 0.012, above 0.01")
    model_rows_and_labels(tmp_path, validation_scored=0, test=20000)
    result = checks.validation_scores_like_test(workspace=workspace(tmp_path))
    assert not result.passed and "it has no AUC without both clicked and unclicked rows" in result.description


def test_a_blocking_check_stops_what_comes_after(tmp_path):
    """Files the reader accepts (every click 0 is valid per line) but the check does not: raw_faces never runs."""
    from kuai_assets.defs.raw import raw_faces, raw_interactions

    data = write_dataset(tmp_path / "data", n_users=4, n_train_photos=40, n_test_photos=12, rows_per_user=12, dim=4)
    path = data / "train" / "train_interaction.txt"
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    path.write_text("".join("\t".join(r[:2] + ["0"] + r[3:6] + ["0"] + r[7:]) + "\n" for r in rows))
    result = dg.materialize(
        [raw_interactions, raw_faces, checks.click_rate_plausible],
        resources=make_resources(data, tmp_path / "work"),
        raise_on_error=False,
    )
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["click_rate"].value == 0.0
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert done == {"raw_interactions"}, "raw_faces ran after a failed blocking check"


# -- video_embeddings ----------------------------------------------------------------------------


def test_every_photo_has_a_vector_can_fail(tmp_path):
    write_table(tmp_path, "raw_interactions", interactions(["train", "train", "test"], [1, 2, 3], [1, 0, None]))
    with WorkDir(tmp_path).writing_store("video_embeddings") as store:
        np.save(store / "photo_id.npy", np.array([1, 2, 3, 4], dtype=np.int64))
    result = checks.every_photo_has_a_vector(workspace=workspace(tmp_path))
    assert result.passed and values(result)["vectors_in_store"] == 4

    write_table(tmp_path, "raw_interactions", interactions(["train", "train", "test"], [1, 2, 9], [1, 0, None]))
    result = checks.every_photo_has_a_vector(workspace=workspace(tmp_path))
    assert not result.passed
    assert values(result)["photos_without_vector"] == {"train": 0, "test": 1}
    assert values(result)["examples"] == [9]
    assert "photo_id 9" in result.description


# -- training_matrix: finite values, keys, labels ------------------------------------------------


def matrix(**change) -> dict:
    """A sound 4-row matrix: a validation fit row, a validation scored row, a fit row, a test row."""
    columns = {
        "setup": ["validation", "validation", "submission", "submission"],
        "role": ["fit", "scored", "fit", "scored"],
        "row_id": pa.array([0, 1, 0, 2], pa.int64()),
        "user_id": pa.array([7, 7, 7, 7], pa.int64()),
        "photo_id": pa.array([10, 11, 10, 12], pa.int64()),
        "fold": pa.array([0, -1, 0, -1], pa.int32()),
        "click": pa.array([1, 0, 1, None], pa.int8()),
        "user_click_rate": pa.array([0.5, None, 0.25, 0.3], pa.float32()),  # NULL: missing by design
        "batch_size": pa.array([1.0, 2.0, 3.0, None], pa.float64()),
        "hour": pa.array([1, 2, 3, 4], pa.int32()),
    }
    for name, value in change.items():
        columns[name] = pa.array(value, columns[name].type) if isinstance(columns[name], pa.Array) else value
    return columns


@pytest.mark.parametrize(
    "change, failing",
    [
        ({"user_click_rate": [0.5, float("nan"), 0.25, 0.3]}, "nan_or_infinite_values"),
        ({"batch_size": [1.0, 2.0, float("inf"), None]}, "nan_or_infinite_values"),
        ({"batch_size": [1.0, float("-inf"), 3.0, None]}, "nan_or_infinite_values"),
        ({"user_id": [7, None, 7, 7]}, "rows_with_null_key"),
        ({"fold": [0, -1, None, -1]}, "rows_with_null_key"),
        ({"row_id": [0, 1, 2, 2]}, "duplicate_setup_row_id"),
        ({"click": [1, None, 1, None]}, "fit_or_validation_rows_without_click"),
        ({"click": [1, 0, 1, 1]}, "test_rows_with_a_click_label"),
        ({"click": [1, 0, 3, None]}, "click_not_0_or_1"),
        ({"role": ["fit", "fitted", "fit", "scored"]}, "rows_with_unknown_setup_or_role"),
    ],
)
def test_training_matrix_finite_and_keyed_can_fail(tmp_path, change, failing):
    write_table(tmp_path, "training_matrix", matrix())
    result = checks.training_matrix_finite_and_keyed(workspace=workspace(tmp_path))
    assert result.passed, values(result)
    assert values(result)["float_columns_checked"] == 2
    assert values(result)["null_feature_share (missing by design)"] == pytest.approx(2 / 8)

    write_table(tmp_path, "training_matrix", matrix(**change))
    result = checks.training_matrix_finite_and_keyed(workspace=workspace(tmp_path))
    assert not result.passed
    failing_now = {k for k, v in values(result).items() if k in checks_problems() and v}
    assert failing_now == {failing}
    if failing == "nan_or_infinite_values":
        assert list(values(result)["nan_or_infinite_by_column"].values()) == [1]


def checks_problems() -> set[str]:
    return {
        "rows_with_null_key",
        "rows_with_unknown_setup_or_role",
        "duplicate_setup_row_id",
        "fit_or_validation_rows_without_click",
        "test_rows_with_a_click_label",
        "click_not_0_or_1",
        "nan_or_infinite_values",
    }


# -- training_matrix: label leakage ----------------------------------------------------------------


def test_label_statistics_check_ran_and_passed_in_the_pipeline(materialized):
    (evaluation,) = [
        c for c in materialized["result"].get_asset_check_evaluations() if c.check_name == "label_statistics_out_of_fold"
    ]
    assert evaluation.passed
    scenarios = evaluation.metadata["scenarios"].value
    assert len(scenarios) == 2 and all(s["rows_checked"] > 0 and s["changed_values_elsewhere"] > 0 for s in scenarios)
    assert "user_behaviour" in evaluation.metadata["groups_probed"].value


def test_label_statistics_check_can_fail(materialized, tmp_path, monkeypatch):
    """A planted group that reads clicks in fold, declaring nothing, is found and fails the check."""
    import shutil

    from kuai_assets.features.catalog import sql_root

    sql = tmp_path / "sql"
    shutil.copytree(sql_root(), sql)
    (sql / "features" / "leaky_user_rate.sql").write_text(LEAKY_SQL)
    monkeypatch.setenv("KUAI_SQL_DIR", str(sql))
    result = checks.label_statistics_out_of_fold(workspace=workspace(materialized["work"], materialized["data"]))
    assert not result.passed
    assert "leaky_click_rate" in result.description and "a leak" in result.description
    metadata = values(result)
    assert "leaky_user_rate" in metadata["groups_probed"]
    # every group is probed, or was proven before on the same code and data
    every_group = {g.name for g in checks.probed_groups()}
    assert set(metadata["groups_probed"]) | set(metadata["groups_proven_before"]) == every_group
    assert "leaky_user_rate" not in read_verdicts(WorkDir(materialized["work"])), "a failed probe was kept as passed"
    assert not list(materialized["work"].glob(".leak_probe-*")), "the probe's scratch space was left behind"


def probe_workspace(materialized, tmp_path) -> Path:
    """A work dir holding only the tables the leak probe samples from (links to the tiny graph's)."""
    work = WorkDir(tmp_path / "work")
    work.tables.mkdir(parents=True)
    for name in SOURCE_TABLES:
        work.table_path(name).hardlink_to(WorkDir(materialized["work"]).table_path(name))
    return work.root


def edited_sql(tmp_path, monkeypatch, path: str, old: str, new: str) -> None:
    """Point KUAI_SQL_DIR at a copy of the SQL models with one line of `path` changed."""
    import shutil

    from kuai_assets.features.catalog import sql_root

    sql = tmp_path / "sql"
    shutil.copytree(sql_root(), sql)
    text = (sql / path).read_text()
    assert old in text
    (sql / path).write_text(text.replace(old, new))
    monkeypatch.setenv("KUAI_SQL_DIR", str(sql))


def test_label_statistics_check_probes_again_only_what_changed(materialized, tmp_path, monkeypatch):
    """The first probe covers every group; then a group is probed again only when its code changed,
    with a label-using witness when it uses no labels itself, so the shuffles are still seen to move
    features."""
    work = probe_workspace(materialized, tmp_path)
    every_group = [g.name for g in checks.probed_groups()]

    first = checks.label_statistics_out_of_fold(workspace=workspace(work, materialized["data"]))
    assert first.passed, first.description
    assert values(first)["groups_probed"] == every_group and values(first)["groups_proven_before"] == []
    assert sorted(read_verdicts(WorkDir(work))) == sorted(every_group)

    again = checks.label_statistics_out_of_fold(workspace=workspace(work, materialized["data"]))
    assert again.passed, again.description
    assert values(again)["groups_probed"] == [] and values(again)["scenarios"] == []
    assert values(again)["groups_proven_before"] == every_group

    edited_sql(tmp_path, monkeypatch, "features/time_and_duration.sql",
               "greatest(u.user_duration_mean, 1)", "greatest(u.user_duration_mean, 2)")
    edited = checks.label_statistics_out_of_fold(workspace=workspace(work, materialized["data"]))
    assert edited.passed, edited.description
    metadata = values(edited)
    assert metadata["groups_probed"] == ["time_and_duration", "user_behaviour"]
    assert metadata["witness_group"] == "user_behaviour"
    assert sorted(metadata["groups_proven_before"]) == sorted(set(every_group) - {"time_and_duration", "user_behaviour"})
    assert all(s["rows_checked"] > 0 and s["changed_values_elsewhere"] > 0 for s in metadata["scenarios"])
    assert values(checks.label_statistics_out_of_fold(workspace=workspace(work, materialized["data"])))["groups_probed"] == []
    monkeypatch.delenv("KUAI_SQL_DIR")  # the edit undone: it had passed in its first version too
    undone = checks.label_statistics_out_of_fold(workspace=workspace(work, materialized["data"]))
    assert undone.passed and values(undone)["groups_probed"] == [] and values(undone)["verdicts_kept"]


@pytest.mark.parametrize("change", ["label_history", "source_table", "unreadable_verdicts", "other_users"])
def test_every_group_is_probed_again_when_what_they_share_changed(materialized, tmp_path, monkeypatch, change):
    work = WorkDir(probe_workspace(materialized, tmp_path))
    groups = checks.probed_groups()
    record_verdicts(work, plan_probe(work, groups, users=checks.LEAK_PROBE_USERS).keys)
    assert plan_probe(work, groups, users=checks.LEAK_PROBE_USERS).probe == []
    if change == "label_history":  # an intermediate model every label statistic reads
        edited_sql(tmp_path, monkeypatch, "intermediate/label_history.sql", "\nselect", "\nselect distinct")
        groups = checks.probed_groups()
    elif change == "source_table":  # the same rows in another file: the content digest moves
        path = work.table_path("raw_text")
        table = pq.read_table(path)
        path.unlink()
        pq.write_table(table, path, row_group_size=max(1, table.num_rows // 3))
    elif change == "unreadable_verdicts":
        (work.root / VERDICTS_FILE).write_text("{not json")
    else:  # another sample of users
        assert plan_probe(work, groups, users=checks.LEAK_PROBE_USERS + 1).probe == groups
        return
    assert plan_probe(work, groups, users=checks.LEAK_PROBE_USERS).probe == groups


# -- submission --------------------------------------------------------------------------------------

TEST_ROWS = [(1, 100), (1, 101), (2, 100), (3, 102)]


def submission_setup(tmp_path, lines: list[str]) -> WorkspaceResource:
    data, work = tmp_path / "data", tmp_path / "work"
    (data / "test").mkdir(parents=True)
    (data / "test" / "test_interaction.txt").write_text(
        "".join(f"{u}\t{p}\t760000000000\t10\n" for u, p in TEST_ROWS)
    )
    # the rest of the released layout, empty (the workspace resource checks the layout; this
    # check reads only test_interaction.txt)
    for split in ("train", "test"):
        (data / split).mkdir(exist_ok=True)
        for name in (f"{split}_interaction.txt", f"{split}_face.txt", f"{split}_text.txt"):
            (data / split / name).touch()
        (data / split / f"final_visual_{split}").mkdir()
    work.mkdir()
    (work / "submission.txt").write_text("".join(line + "\n" for line in lines))
    return workspace(work, data)


GOOD = [f"{u}\t{p}\t0.{i}00000" for i, (u, p) in enumerate(TEST_ROWS)]


@pytest.mark.parametrize(
    "lines, problem",
    [
        (GOOD[:3], r"1 row\(s\) of test_interaction.txt have no probability"),
        (GOOD + ["4\t100\t0.500000"], r"user_id 4, photo_id 100 is not a row of test_interaction.txt"),
        (GOOD[:3] + ["3\t102\t1.200000"], r"probability 1.2 is outside \[0, 1\]"),
        (GOOD + [GOOD[0]], r"appears more than once"),
        (GOOD[:3] + ["3\t102\t0.5"], r"six decimals"),
    ],
)
def test_submission_matches_test_keys_can_fail(tmp_path, lines, problem):
    result = checks.submission_matches_test_keys(workspace=submission_setup(tmp_path / "good", GOOD))
    assert result.passed and values(result)["rows"] == 4 and values(result)["max_probability"] == 0.3
    result = checks.submission_matches_test_keys(workspace=submission_setup(tmp_path / "bad", lines))
    assert not result.passed
    assert re.search(problem, result.description), result.description
    assert "submission.txt" in values(result)["problem"]


def test_every_check_is_registered():
    from kuai_assets.definitions import defs

    registered = {key.name for c in defs.asset_checks for key in c.check_keys}
    assert registered == {
        "train_and_test_photos_disjoint",
        "click_rate_plausible",
        "every_photo_has_a_vector",
        "training_matrix_finite_and_keyed",
        "label_statistics_out_of_fold",
        "model_promoted_if_better",
        "submission_matches_test_keys",
        "validation_scores_like_test",
    }
    blocking = {key.name for c in defs.asset_checks for key in c.check_keys if c.get_spec_for_check_key(key).blocking}
    assert blocking == registered - {"validation_scores_like_test"}
