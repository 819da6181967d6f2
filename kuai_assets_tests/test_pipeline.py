"""The whole graph materializes in process on the tiny dataset, and the results make sense."""

import json

import dagster as dg
import pytest

from kuai_assets.formats import layout
from kuai_assets.formats.submission import validate_submission
from kuai_assets_tests.conftest import TINY_RUN_CONFIG, make_resources
from kuai_assets_tests.handmade import write_dataset


def metadata(result, asset):
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
    assert events, f"{asset} was not materialized"
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def test_every_asset_and_check_succeeds(materialized):
    from kuai_assets.definitions import defs

    result = materialized["result"]
    assert result.success
    done = {e.asset_key for e in result.get_asset_materialization_events()}
    assert done == set(defs.resolve_asset_graph().get_all_asset_keys())
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)


def test_a_python_group_s_diagnostics_are_debug_lines_and_its_progress_info(materialized):
    """A Python group's `log.debug` lines (user_visual_group_affinity's out-of-fold log-loss per
    fold) reach the run's log at DEBUG, out of the console; its `log(...)` lines at INFO."""
    import logging

    with dg.DagsterInstance.from_config(str(materialized["dagster_home"])) as instance:
        lines = [
            (entry.level, entry.user_message)
            for entry in instance.all_logs(materialized["result"].run_id)
            if entry.step_key == "user_visual_group_affinity" and entry.user_message.startswith("user_visual_group_affinity:")
        ]
    diagnostics = [level for level, message in lines if "out-of-fold log-loss by cut" in message]
    progress = [level for level, message in lines if " done (" in message]
    assert diagnostics and set(diagnostics) == {logging.DEBUG}
    assert progress and set(progress) == {logging.INFO}


def test_tiny_model_is_clearly_better_than_chance(materialized):
    result = materialized["result"]
    model = metadata(result, "model")
    evaluation = metadata(result, "evaluation")
    assert model["valid_auc"] > 0.65
    assert evaluation["test_auc"] > 0.65
    assert evaluation["oracle_auc"] >= evaluation["test_auc"] - 0.02
    assert metadata(result, "feature_group_ablation")["all_groups_valid_auc"] > 0.6


def test_submission_is_valid_and_complete(materialized):
    work, data = materialized["work"], materialized["data"]
    path = work / "submission.txt"
    rows = validate_submission(path, layout.interaction_file(data, "test"))
    assert rows == sum(1 for _ in open(layout.interaction_file(data, "test")))


def test_model_is_recorded_in_mlflow(materialized):
    from mlflow import MlflowClient

    work = materialized["work"]
    run_info = json.loads((work / "stores" / "model" / "run.json").read_text())
    client = MlflowClient(f"sqlite:///{work}/mlflow/mlflow.db")
    run = client.get_run(run_info["mlflow_run_id"])
    assert run.data.tags["dagster_run_id"] == materialized["result"].run_id
    assert run.data.tags["model_config"] == "full"
    assert float(run.data.params["learning_rate"]) > 0
    assert run.data.metrics["valid_auc"] == pytest.approx(run_info["valid_auc"])
    assert "test_auc" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "valid_auc_by_iteration")
    assert len(history) >= run_info["best_iteration"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/roc_validation.png", "figures/importance_by_group.png", "figures/auc_by_iteration.png"} <= artifacts
    versions = client.search_model_versions("name='kuai_click_model'")
    assert any(v.run_id == run.info.run_id for v in versions)
    runs = client.search_runs([run.info.experiment_id])
    configs = {r.data.tags.get("model_config") for r in runs}
    assert {"full", "baseline"} <= configs
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) >= 10, "one nested run per ablation variant"


def test_the_aucs_in_dagster_are_mlflows_to_the_last_digit(materialized):
    """The UI's metadata, the CLI's summary (which formats it) and MLflow show one number: the
    metadata holds the AUC MLflow logged, not a rounding of it (a value rounded to 5 decimals and
    then printed to 4 could read 0.7581 where the step's log said 0.7582)."""
    from mlflow import MlflowClient

    work, result = materialized["work"], materialized["result"]
    client = MlflowClient(f"sqlite:///{work}/mlflow/mlflow.db")
    for asset in ("model", "attention_model", "blend"):
        info = json.loads((work / "stores" / asset / "run.json").read_text())
        logged = client.get_run(info["mlflow_run_id"]).data.metrics
        assert metadata(result, asset)["valid_auc"] == logged["valid_auc"] == info["valid_auc"], asset
    blend = metadata(result, "blend")
    blend_run = client.get_run(json.loads((work / "stores" / "blend" / "run.json").read_text())["mlflow_run_id"])
    assert blend["valid_auc_gbdt"] == blend_run.data.metrics["valid_auc_gbdt"] == metadata(result, "model")["valid_auc"]
    evaluation = metadata(result, "evaluation")
    assert evaluation["valid_auc"] == blend["valid_auc"]
    assert evaluation["valid_minus_test_auc"] == evaluation["valid_auc"] - evaluation["test_auc"]


@pytest.mark.pipeline  # materializes the whole graph itself, without the session fixture
def test_pipeline_runs_on_a_dataset_written_by_another_generator(tmp_path):
    """Pointing the platform at any dataset in the released layout runs it to a valid submission."""
    from kuai_assets.definitions import defs

    data = write_dataset(tmp_path / "handmade", visual="folder", prefix="preliminary_visual")
    work = tmp_path / "work"
    ops = {k: v for k, v in TINY_RUN_CONFIG["ops"].items() if k != "feature_group_ablation"}
    run_config = {
        "ops": {
            **ops,
            "visual_stage": {"config": {"dimensions": 16, "ks": [4, 12]}},
        }
    }
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        resources=make_resources(data, work),
        run_config=run_config,
        selection=dg.AssetSelection.all() - dg.AssetSelection.assets("feature_group_ablation"),
    )
    assert result.success
    assert validate_submission(work / "submission.txt", layout.interaction_file(data, "test")) > 0
    assert metadata(result, "evaluation")["test_auc"] > 0.6
