"""`kuai run --unsynced`: which assets are out of date, on a small graph of plain assets in an
ephemeral instance (kuai_assets.unsynced). The end-to-end use is in test_workspace.py."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from kuai_assets.formats.layout import fingerprint
from kuai_assets.unsynced import describe, out_of_date


def released_folder(root: Path) -> Path:
    """Just enough of the released layout for a fingerprint: train/ and test/ with one file each."""
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        (root / split / f"{split}_interaction.txt").write_text("1\t2\n")
    return root


def graph_of(data: Path, versions: dict[str, str] | None = None) -> list[dg.AssetsDefinition]:
    """dataset -> table -> model -> report, and table -> report; code versions `versions`."""
    versions = {"dataset": "1", "table": "1", "model": "1", "report": "1", **(versions or {})}

    @dg.asset(code_version=versions["dataset"])
    def dataset() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion(fingerprint(data).digest))

    @dg.asset(code_version=versions["table"], deps=[dataset])
    def table() -> None: ...

    @dg.asset(code_version=versions["model"], deps=[table])
    def model() -> None: ...

    @dg.asset(code_version=versions["report"], deps=[model, table])
    def report() -> None: ...

    return [dataset, table, model, report]


def plan(instance, assets, data: Path, forced=None) -> dict[str, str]:
    graph = dg.Definitions(assets=assets).resolve_asset_graph()
    return {key.to_user_string(): why for key, why in out_of_date(instance, graph, data, forced).items()}


@pytest.fixture
def data(tmp_path) -> Path:
    return released_folder(tmp_path / "data")


def test_nothing_materialized_is_all_missing_in_order(data):
    with dg.DagsterInstance.ephemeral() as instance:
        assert plan(instance, graph_of(data), data) == {
            "dataset": "never materialized", "table": "never materialized", "model": "never materialized",
            "report": "never materialized",
        }


def test_after_a_whole_run_nothing_is_out_of_date(data):
    assets = graph_of(data)
    with dg.DagsterInstance.ephemeral() as instance:
        assert dg.materialize(assets, instance=instance).success
        assert plan(instance, assets, data) == {}
        assert describe({}, 4) == ["every one of 4 assets is up to date: nothing to materialize"]


def test_new_code_marks_the_asset_and_everything_downstream(data):
    with dg.DagsterInstance.ephemeral() as instance:
        assert dg.materialize(graph_of(data), instance=instance).success
        edited = graph_of(data, {"table": "2"})
        reasons = plan(instance, edited, data)
        assert reasons == {"table": "code changed", "model": "downstream of table", "report": "downstream of model"}
        assert dg.materialize(edited, instance=instance, selection=list(reasons)).success
        assert plan(instance, edited, data) == {}


def test_an_upstream_materialized_since_marks_what_it_feeds(data):
    """A retrain of `model` alone (new settings: the same code version) leaves `report` behind."""
    assets = graph_of(data)
    with dg.DagsterInstance.ephemeral() as instance:
        assert dg.materialize(assets, instance=instance).success
        assert dg.materialize(assets, instance=instance, selection=["model"]).success
        assert plan(instance, assets, data) == {"report": "newer upstream model"}


def test_changed_dataset_files_mark_everything(data):
    assets = graph_of(data)
    with dg.DagsterInstance.ephemeral() as instance:
        assert dg.materialize(assets, instance=instance).success
        changed = data / "train" / "train_interaction.txt"
        changed.write_text("1\t2\n3\t4\n")
        os.utime(changed, (1, 1))
        reasons = plan(instance, assets, data)
        assert reasons["dataset"] == f"files changed in {data}"
        assert set(reasons) == {"dataset", "table", "model", "report"}


def test_forced_assets_run_with_what_follows_them(data):
    assets = graph_of(data)
    with dg.DagsterInstance.ephemeral() as instance:
        assert dg.materialize(assets, instance=instance).success
        reasons = plan(instance, assets, data, forced={dg.AssetKey("model"): "settings given"})
        assert reasons == {"model": "settings given", "report": "downstream of model"}
        keys = {dg.AssetKey(name): why for name, why in reasons.items()}
        assert describe(keys, 4) == ["2 of 4 assets to materialize:", "  settings given: model", "  and 1 downstream of them"]


def test_the_plan_groups_reasons_and_names_a_few():
    reasons = {dg.AssetKey(f"a{i}"): "never materialized" for i in range(9)}
    assert describe(reasons, 9, most_named=3) == ["9 of 9 assets to materialize:",
                                                  "  never materialized: a0, a1, a2 and 6 more"]


def test_an_asset_whose_blocking_check_did_not_pass_runs_again_with_its_check(data, tmp_path):
    """Running only what follows a table whose blocking check failed would skip the check: the
    table is out of date until its check passes."""
    flag = tmp_path / "table_is_bad"
    dataset, table, model, report = graph_of(data)

    @dg.asset_check(asset=table, blocking=True)
    def table_is_good() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=not flag.exists())

    assets = [dataset, table, model, report, table_is_good]
    with dg.DagsterInstance.ephemeral() as instance:
        assert dg.materialize(assets, instance=instance).success
        flag.write_text("")  # the table is made again and its check fails: model and report stay as they were
        assert not dg.materialize(assets, instance=instance, raise_on_error=False).success
        assert plan(instance, assets, data) == {
            "table": "blocking check did not pass: table_is_good", "model": "downstream of table",
            "report": "downstream of model",
        }
        flag.unlink()
        assert dg.materialize(assets, instance=instance).success
        assert plan(instance, assets, data) == {}


def test_the_steps_named_in_a_run_config_are_the_assets_they_make():
    from kuai_assets.definitions import defs
    from kuai_assets.unsynced import assets_of_steps

    graph = defs.resolve_asset_graph()
    assert assets_of_steps(graph, ["model"]) == [dg.AssetKey("model")]
    assert assets_of_steps(graph, ["visual_stage", "no_such_step"]) == [
        dg.AssetKey("pca_visual_features"), dg.AssetKey("video_clusters"), dg.AssetKey("video_embeddings")]


def test_a_check_that_raised_blocks_but_one_a_stopped_run_never_reached_does_not(data, tmp_path):
    """A run plans every check when it starts. A check whose step raised after its asset was made
    did not pass; a check left planned because the run stopped before the asset (Ctrl-C, a failed
    upstream) says nothing new: its last finished execution counts."""
    raising, stopping = tmp_path / "check_raises", tmp_path / "dataset_fails"
    _, table, model, report = graph_of(data)

    @dg.asset(code_version="1", name="dataset")
    def dataset() -> dg.MaterializeResult:
        if stopping.exists():
            raise RuntimeError("stopped")
        return dg.MaterializeResult(data_version=dg.DataVersion(fingerprint(data).digest))

    @dg.asset_check(asset=table, blocking=True)
    def table_is_good() -> dg.AssetCheckResult:
        if raising.exists():
            raise RuntimeError("the check itself broke")
        return dg.AssetCheckResult(passed=True)

    assets = [dataset, table, model, report, table_is_good]
    with dg.DagsterInstance.ephemeral() as instance:
        assert dg.materialize(assets, instance=instance).success
        stopping.write_text("")
        assert not dg.materialize(assets, instance=instance, raise_on_error=False).success
        assert plan(instance, assets, data) == {}  # nothing was made, nothing changed
        stopping.unlink()
        raising.write_text("")
        assert not dg.materialize(assets, instance=instance, raise_on_error=False).success
        assert plan(instance, assets, data) == {
            "table": "blocking check did not pass: table_is_good", "model": "downstream of table",
            "report": "downstream of model",
        }
