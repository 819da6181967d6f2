"""The whole graph, through to a valid submission, on the engines meant for a cluster: every table
model on Spark (`local[2]`, in this process's JVM; Java 17+ needed, never skipped) and the GBDT's
refit on a Dask LocalCluster of two worker processes started here."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from kuai_assets.formats import layout
from kuai_assets.formats.submission import validate_submission
from kuai_assets_tests.conftest import DAGSTER_YAML, SMALLEST_ATTENTION, TINY_RUN_CONFIG, make_resources


@pytest.mark.system
def test_the_graph_runs_to_a_submission_on_spark_and_dask(tiny_data, spark, tmp_path):
    """`spark` (conftest) is the session the engine resource finds: one per URL per process."""
    from distributed import LocalCluster

    from kuai_assets.defs.engine import EngineResource
    from kuai_assets.definitions import defs
    from kuai_assets.features.catalog import load_catalog
    from kuai_assets.features.runner import DRIVER_DEFINITION

    work = tmp_path / "work"
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    resources = make_resources(tiny_data, work)
    resources["engine"] = EngineResource(kind="spark", spark_url="local[2]")
    # the assets upstream of the submission: not the ablation nor the baseline model
    ops = {name: op for name, op in TINY_RUN_CONFIG["ops"].items() if name not in ("feature_group_ablation", "baseline_model")}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        run_config = {
            "ops": {
                **ops,
                "model": {"config": {**ops["model"]["config"], "trainer": "dask", "dask_scheduler": cluster.scheduler_address}},
                "attention_model": {"config": SMALLEST_ATTENTION},
            }
        }
        with dg.DagsterInstance.from_config(str(home)) as instance:
            result = dg.materialize(
                [*defs.assets, *defs.asset_checks],
                instance=instance,
                resources=resources,
                run_config=run_config,
                selection=dg.AssetSelection.assets("submission").upstream(),
                raise_on_error=True,
            )
            messages = [entry.user_message for entry in instance.all_logs(result.run_id)]

    assert result.success
    done = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    catalog = load_catalog()
    for name, model in catalog.items():
        metadata = done[name]
        assert metadata["engine"].value == "spark local[2]", name
        expected = DRIVER_DEFINITION if model.sql is None else "sql"
        assert metadata["definition"].value == expected, name
    assert {"model", "attention_model", "blend", "submission"} <= set(done)
    checks = result.get_asset_check_evaluations()
    assert {c.check_name for c in checks} >= {"submission_matches_test_keys", "label_statistics_out_of_fold"}
    assert all(c.passed for c in checks), [c.check_name for c in checks if not c.passed]

    # the GBDT's refit ran on the cluster's two workers, and MLflow recorded it so
    assert any(m.startswith("dask: ") and "on 2 worker(s)" in m for m in messages), "no Dask refit in the run's log"
    from mlflow import MlflowClient

    run_info = json.loads((work / "stores" / "model" / "run.json").read_text())
    run = MlflowClient(f"sqlite:///{work}/mlflow/mlflow.db").get_run(run_info["mlflow_run_id"])
    assert run.data.params["trainer"] == "dask"
    rows = validate_submission(work / "submission.txt", layout.interaction_file(tiny_data, "test"))
    assert rows == sum(1 for _ in open(layout.interaction_file(tiny_data, "test")))
