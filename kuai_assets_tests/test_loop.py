"""The user's loop: what a model's MLflow run records about its data, and its test AUC after a
retrain from the CLI (pending until `evaluation` follows, which the daemon does by itself)."""

import json
import re
import shutil

import dagster as dg
import pytest

from kuai_assets.ml.tracking import NO_GROUND_TRUTH, PENDING, SCORED, TEST_AUC_STATUS
from kuai_assets.storage import WorkDir
from kuai_assets_tests.conftest import make_resources

MODEL_STORES = ("model", "baseline_model", "attention_model", "blend")


def run_of(work, store: str):
    from mlflow import MlflowClient

    info = json.loads((work / "stores" / store / "run.json").read_text())
    return MlflowClient(f"sqlite:///{work}/mlflow/mlflow.db").get_run(info["mlflow_run_id"])


def datasets_of(run) -> dict[str, tuple]:
    """name -> (context, dataset entity) of a run's logged inputs."""
    out = {}
    for given in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in given.tags}.get("mlflow.data.context")
        out[given.dataset.name] = (context, given.dataset)
    return out


@pytest.mark.parametrize("store", ["model", "baseline_model"])
def test_gbdt_runs_log_the_matrix_slices_they_used(materialized, store):
    work = materialized["work"]
    run = run_of(work, store)
    inputs = datasets_of(run)
    assert set(inputs) == {
        "training_matrix[validation/fit]", "training_matrix[validation/scored]", "training_matrix[submission/fit]"
    }
    assert inputs["training_matrix[validation/fit]"][0] == "training"
    assert inputs["training_matrix[submission/fit]"][0] == "training"
    assert inputs["training_matrix[validation/scored]"][0] == "validation"
    matrix = str((work / "tables" / "training_matrix.parquet").absolute())
    rows = {
        "training_matrix[validation/fit]": run.data.metrics["fit_rows"],
        "training_matrix[validation/scored]": run.data.metrics["validation_rows"],
        "training_matrix[submission/fit]": float(run.data.params["refit_rows"]),
    }
    features = json.loads((work / "stores" / store / "run.json").read_text())["features"]
    digests = set()
    for name, (_, dataset) in inputs.items():
        assert json.loads(dataset.source)["uri"] == matrix
        assert json.loads(dataset.profile)["num_rows"] == rows[name] > 0
        columns = [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]]
        assert columns == features + ["click"]
        digests.add(dataset.digest)
    assert len(digests) == 3, "each slice has its own digest"
    # the entity only: no copy of the data among the run's artifacts
    assert not [path for path in artifact_paths(work, run.info.run_id) if path.endswith((".parquet", ".csv"))]


def artifact_paths(work, run_id: str, folder: str | None = None) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work}/mlflow/mlflow.db")
    paths = []
    for item in client.list_artifacts(run_id, folder):
        paths += artifact_paths(work, run_id, item.path) if item.is_dir else [item.path]
    return paths


def test_attention_and_blend_runs_log_their_datasets(materialized):
    work = materialized["work"]
    attention = datasets_of(run_of(work, "attention_model"))
    refitted = json.loads((WorkDir(work).require_store("attention_model") / "run.json").read_text())["refitted"]
    assert {name: context for name, (context, _) in attention.items()} == {
        "training_matrix[validation/fit]": "training",
        "training_matrix[validation/scored]": "validation",
        **({"training_matrix[submission/fit]": "training"} if refitted else {}),  # the refit's rows, when it ran
    }
    blend = datasets_of(run_of(work, "blend"))
    assert {name: context for name, (context, _) in blend.items()} == {
        "training_matrix[validation/scored]": "validation",
        "model/validation_predictions[validation/scored]": "validation",
        "attention_model/validation_predictions[validation/scored]": "validation",
    }
    source = json.loads(blend["model/validation_predictions[validation/scored]"][1].source)["uri"]
    # the published version of the store the blend read (a store is a link to its current version)
    assert source == str(WorkDir(work).require_store("model") / "validation_predictions.parquet")


def test_evaluation_settles_every_model_runs_test_auc(materialized):
    for store in MODEL_STORES:
        run = run_of(materialized["work"], store)
        assert run.data.tags[TEST_AUC_STATUS] == SCORED, store
        assert 0.5 < run.data.metrics["test_auc"] <= 1.0, store


def test_a_cli_retrain_leaves_test_auc_pending_until_evaluation_runs(materialized, tmp_path):
    from kuai_assets.definitions import defs
    from kuai_assets.defs.resources import TrackingResource

    work = tmp_path / "work"
    # symlinks kept: a published store is a link to its current version
    shutil.copytree(materialized["work"], work, symlinks=True, ignore=shutil.ignore_patterns("dagster_home"))
    before = run_of(work, "model").info.run_id
    assets = [*defs.assets]
    resources = make_resources(materialized["data"], work)
    # few rounds: what is tested is the test AUC's status, not the retrained model
    retrain = dg.materialize(assets, selection=["model"], resources=resources,
                             run_config={"ops": {"model": {"config": {"max_rounds": 30, "early_stopping_rounds": 10}}}})
    assert retrain.success
    run = run_of(work, "model")
    assert run.info.run_id != before
    assert run.data.tags[TEST_AUC_STATUS] == PENDING
    assert "test_auc" not in run.data.metrics

    # evaluated with the MLflow UI moved since the training (`kuai mlflow-ui --port 5517`)
    resources["tracking"] = TrackingResource(tracking_uri=resources["tracking"].tracking_uri,
                                             artifact_root=resources["tracking"].artifact_root,
                                             ui_url="http://127.0.0.1:5517")
    evaluated = dg.materialize(assets, selection=["evaluation"], resources=resources)
    assert evaluated.success
    after = run_of(work, "model")
    assert after.info.run_id == run.info.run_id
    assert after.data.tags[TEST_AUC_STATUS] == SCORED
    metadata = evaluated.asset_materializations_for_node("evaluation")[0].metadata
    assert after.data.metrics["test_auc"] == pytest.approx(metadata["model_test_auc"].value, abs=1e-5)
    submitted = json.loads((work / "submission_source.json").read_text())["source"]
    submitted_run = json.loads((work / "stores" / submitted / "run.json").read_text())["mlflow_run_id"]
    assert re.fullmatch(rf"http://127\.0\.0\.1:5517/#/experiments/\d+/runs/{submitted_run}", metadata["mlflow_run"].value)


def test_without_ground_truth_evaluation_records_what_was_submitted_and_its_validation_auc(materialized, tmp_path):
    """Real data has no ground truth: `evaluation` scores nothing, marks every model run's test AUC
    as unknown, and still records which model was submitted and its validation AUC (what runs are
    compared by then, in the UI and in `kuai run`'s summary)."""
    from mlflow import MlflowClient

    from kuai_assets.definitions import defs
    from kuai_assets.defs.resources import WorkspaceResource

    work = tmp_path / "work"
    shutil.copytree(materialized["work"], work, symlinks=True, ignore=shutil.ignore_patterns("dagster_home"))
    resources = make_resources(materialized["data"], work)
    resources["workspace"] = WorkspaceResource(data_dir=str(materialized["data"]), work_dir=str(work),
                                               ground_truth=str(tmp_path / "none.txt"))
    evaluated = dg.materialize([*defs.assets], selection=["evaluation"], resources=resources)
    assert evaluated.success
    metadata = {k: v.value for k, v in evaluated.asset_materializations_for_node("evaluation")[0].metadata.items()}
    submitted = json.loads((work / "submission_source.json").read_text())["source"]
    info = json.loads((work / "stores" / submitted / "run.json").read_text())
    assert metadata == {"ground_truth": "none (real data: submit the file to score it)", "submitted": submitted,
                        "valid_auc": pytest.approx(info["valid_auc"])}
    run = MlflowClient(f"sqlite:///{work}/mlflow/mlflow.db").get_run(info["mlflow_run_id"])
    assert run.data.tags[TEST_AUC_STATUS] == NO_GROUND_TRUTH


def test_evaluation_follows_a_retrained_model_where_a_daemon_runs():
    from kuai_assets.defs.automation import evaluation_follows
    from kuai_assets.definitions import defs

    assert evaluation_follows.default_status == dg.DefaultSensorStatus.RUNNING
    selection = dg.AssetSelection.assets("evaluation")
    with dg.instance_for_test() as instance:
        for key in ("submission", "baseline_model", "model", "attention_model", "blend", "evaluation"):
            instance.report_runless_asset_event(dg.AssetMaterialization(key))
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
        assert first.total_requested == 0
        idle = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                                 cursor=first.cursor)
        assert idle.total_requested == 0, "nothing changed: nothing to evaluate"
        instance.report_runless_asset_event(dg.AssetMaterialization("model"))
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                                  cursor=idle.cursor)
        assert after.total_requested == 1
        assert after.get_requested_partitions(dg.AssetKey("evaluation")) == {None}


def test_kuai_run_says_the_test_auc_is_pending_when_evaluation_is_older_than_the_model(tmp_path, capsys):
    from kuai_assets import settings
    from kuai_assets.cli import print_summary

    workspace = settings.Workspace(tmp_path, tmp_path / "data", "tiny", tmp_path / "home", "sqlite:///x.db",
                                   "http://127.0.0.1:5517")
    with dg.instance_for_test() as instance:
        # trained when the MLflow UI was on port 5000; the workspace now records 5517
        instance.report_runless_asset_event(dg.AssetMaterialization("model", metadata={
            "valid_auc": 0.7, "mlflow_run": dg.MetadataValue.url("http://127.0.0.1:5000/#/experiments/1/runs/abc")}))
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "evaluation", metadata={"test_auc": 0.71, "valid_auc": 0.7, "oracle_auc": 0.8, "oracle_gap_closure": 0.7,
                                    "baseline_test_auc": 0.69, "submitted": "model"}))
        print_summary(instance, workspace, 60.0, "run")
        scored = capsys.readouterr().out
        instance.report_runless_asset_event(dg.AssetMaterialization("model", metadata={"valid_auc": 0.72}))
        print_summary(instance, workspace, 60.0, "run")
        retrained = capsys.readouterr().out
    assert summary_figures(scored) == {
        "validation AUC (cold-start photos, last hours of train)": "0.7000 (model)",
        "evaluation AUC (submission vs ground truth)": "0.7100",
        "oracle AUC (true click probabilities)": "0.8000",
        "oracle-gap closure (AUC-0.5)/(oracle-0.5)": "0.700",
        "baseline (published top-10 recipe) test AUC": "0.6900",
    }
    assert "pending" not in scored
    assert "  MLflow run: http://127.0.0.1:5517/#/experiments/1/runs/abc" in scored.splitlines()
    commands = [line for line in scored.splitlines() if "  # " in line]
    assert [line.split("#")[0].strip() for line in commands] == [
        "dagster asset materialize --select model", "kuai run --unsynced", "kuai ui", "kuai mlflow-ui"]
    assert len({line.index("#") for line in commands}) == 1, scored
    assert "test AUC: pending" in retrained and "0.7100" not in retrained
    assert summary_figures(retrained) == {"validation AUC (cold-start photos, last hours of train)": "0.7200 (model)"}


def summary_figures(out: str) -> dict[str, str]:
    """The `label: figure` rows of kuai run's summary; asserts the figures start in one column."""
    rows = [line for line in out.splitlines() if line.startswith("  ") and ("AUC" in line or "closure" in line)
            and ": " in line and not line.startswith(("  test AUC: pending", "  since the previous evaluation"))]
    columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in rows}
    assert len(columns) == 1, f"the figures are not in one column:\n{out}"
    return {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in rows}


def test_without_ground_truth_kuai_run_gives_the_validation_auc_of_what_was_submitted(tmp_path, capsys):
    """No ground truth: `evaluation` has no AUCs, so the summary takes the submission's source (here
    the blend) and that source's validation AUC, not the GBDT's under the GBDT's name."""
    from kuai_assets import settings
    from kuai_assets.cli import print_summary

    workspace = settings.Workspace(tmp_path, tmp_path / "data", "tiny", tmp_path / "home", "sqlite:///x.db",
                                   "http://127.0.0.1:5000")
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("model", metadata={"valid_auc": 0.72}))
        instance.report_runless_asset_event(dg.AssetMaterialization("blend", metadata={"valid_auc": 0.73}))
        instance.report_runless_asset_event(dg.AssetMaterialization("submission", metadata={"source": "blend"}))
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "evaluation", metadata={"ground_truth": "none (real data: submit the file to score it)"}))
        print_summary(instance, workspace, 60.0, "run")
    out = capsys.readouterr().out
    assert summary_figures(out) == {"validation AUC (cold-start photos, last hours of train)": "0.7300 (blend)"}
    assert "no ground truth for this dataset" in out


def test_kuai_runs_summary_gives_the_change_since_the_previous_evaluation(tmp_path, capsys):
    """After a run that made a new `evaluation`, the summary says how its AUCs moved since the one
    before; a run that made none (or the first evaluation) has no such line."""
    from kuai_assets import settings
    from kuai_assets.cli import print_summary

    workspace = settings.Workspace(tmp_path, tmp_path / "data", "tiny", tmp_path / "home", "sqlite:///x.db",
                                   "http://127.0.0.1:5000")

    def evaluated(instance, valid_auc: float, test_auc: float, submitted: str) -> str:
        @dg.asset(name="evaluation")
        def evaluation() -> dg.MaterializeResult:
            return dg.MaterializeResult(metadata={"valid_auc": valid_auc, "test_auc": test_auc, "submitted": submitted,
                                                  "oracle_auc": 0.8, "oracle_gap_closure": 0.5, "baseline_test_auc": 0.7})
        return dg.materialize([evaluation], instance=instance).run_id

    with dg.instance_for_test() as instance:
        first = evaluated(instance, 0.7000, 0.7100, "model")
        print_summary(instance, workspace, 60.0, first)
        assert "since the previous evaluation" not in capsys.readouterr().out  # there is none
        second = evaluated(instance, 0.7012, 0.7093, "blend")
        print_summary(instance, workspace, 60.0, second)
        out = capsys.readouterr().out
        line = next(line for line in out.splitlines() if "since the previous evaluation" in line)
        assert re.fullmatch(r"  since the previous evaluation \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\): validation AUC \+0\.0012, "
                            r"evaluation AUC -0\.0007, submitted blend \(was model\)", line), line
        assert summary_figures(out)["evaluation AUC (submission vs ground truth)"] == "0.7093"
        print_summary(instance, workspace, 60.0, first)  # a run that made no new evaluation
        assert "since the previous evaluation" not in capsys.readouterr().out


def test_kuai_run_says_the_evaluation_while_later_steps_still_run(tmp_path):
    """The watch `kuai run` keeps during its run: once the run's `evaluation` is recorded and a step
    still follows (the ablation), its figures come at once, naming what still runs; a run whose
    evaluation is its last step, or a run of another process, gets no such lines."""
    import threading
    import time

    from kuai_assets.cli import PROMOTION_CHECK, EvaluationWatch
    from kuai_assets.runs_in_progress import PROCESS_TAG

    said: list[str] = []
    heard = threading.Event()
    waits = {"seconds": 30.0}

    def say(text: str) -> None:
        said.append(text)
        heard.set()

    @dg.asset(name="evaluation")
    def evaluation() -> dg.MaterializeResult:
        time.sleep(0.5)  # the watch looks before this run's evaluation is recorded, too
        return dg.MaterializeResult(metadata={"valid_auc": 0.7012, "test_auc": 0.7093, "submitted": "blend"})

    @dg.asset(deps=[evaluation])
    def feature_group_ablation() -> None:
        # the run goes on until the watch has spoken (or the time runs out): what it says comes while this runs
        heard.wait(waits["seconds"])

    def watched(assets, process: str, tags: dict) -> list[str]:
        said.clear()
        heard.clear()
        started = time.time()
        watch = EvaluationWatch(instance.get_ref(), process, started, say, interval=0.1)
        watch.start()
        try:
            assert dg.materialize(assets, instance=instance, tags=tags).success
            time.sleep(0.5)  # a last look of the watch would fall in here
        finally:
            watch.stop()
        return list(said)

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        ours = {PROCESS_TAG: "host:1:10"}
        lines = watched([evaluation, feature_group_ablation], "host:1:10", ours)
        assert len(lines) == 1, lines
        first, figures = lines[0].splitlines()
        assert re.fullmatch(r"\[kuai\] evaluated \d+ s into the run, which goes on \(feature_group_ablation; "
                            r"the summary follows at its end, or at Ctrl-C\):", first), first
        assert figures == "  validation AUC 0.7012 (blend), evaluation AUC 0.7093"
        # the second evaluation of this workspace: the change since the first
        lines = watched([evaluation, feature_group_ablation], "host:1:10", ours)
        assert lines and lines[0].splitlines()[2].startswith("  since the previous evaluation ("), lines
        assert lines[0].splitlines()[2].endswith("validation AUC +0.0000, evaluation AUC +0.0000")
        # a run that retrained the model: what its promotion check decided (blocking, so before the evaluation)
        decided = "kuai_click_model v2 (valid_auc 0.70120) beats champion v1 (0.70000): now @champion"

        @dg.asset(name="model")
        def model() -> None:
            return None

        @dg.asset_check(asset="model", name=PROMOTION_CHECK, blocking=True)
        def promoted() -> dg.AssetCheckResult:
            return dg.AssetCheckResult(passed=True, description=decided)

        @dg.asset(name="evaluation", deps=[model])
        def evaluation_of_model() -> dg.MaterializeResult:
            return dg.MaterializeResult(metadata={"valid_auc": 0.7012, "test_auc": 0.7093, "submitted": "model"})

        lines = watched([model, promoted, evaluation_of_model, feature_group_ablation], "host:1:10", ours)
        assert lines and lines[0].splitlines()[-1] == f"  registry: {decided}", lines
        # nothing after the evaluation: nothing to say before the summary
        assert watched([evaluation], "host:1:10", ours) == []
        # another process's run (the UI's, another `kuai run`): not ours to speak of
        waits["seconds"] = 1.5  # long enough for 15 looks of the watch, which must stay silent
        assert watched([evaluation, feature_group_ablation], "host:2:20", ours) == []


def test_a_run_interrupted_after_its_evaluation_is_stopped_not_failed(tmp_path):
    """Ctrl-C after the evaluation (the ablation running): `kuai run` ends with its summary and the
    steps left; an interruption before the evaluation, or another error after it, is a failure."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    from kuai_assets.cli import failure_causes, stopped_after_evaluation

    def ending(before_evaluation: Exception | None, after_evaluation: Exception | None) -> list[str]:
        @dg.asset(name="training_matrix")
        def training_matrix() -> None:
            if before_evaluation is not None:
                raise before_evaluation

        @dg.asset(name="evaluation", deps=[training_matrix])
        def evaluation() -> dg.MaterializeResult:
            return dg.MaterializeResult(metadata={"valid_auc": 0.7, "test_auc": 0.7})

        @dg.asset(name="feature_group_ablation", deps=[evaluation])
        def feature_group_ablation() -> None:
            if after_evaluation is not None:
                raise after_evaluation

        @dg.asset(name="ablation_chart", deps=[feature_group_ablation])
        def ablation_chart() -> None:
            pass

        result = dg.materialize([training_matrix, evaluation, feature_group_ablation, ablation_chart],
                                instance=instance, raise_on_error=False)
        assert not result.success
        return stopped_after_evaluation(instance, result.run_id, failure_causes(instance, result.run_id))

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert ending(None, DagsterExecutionInterruptedError()) == ["feature_group_ablation", "ablation_chart"]
        assert ending(None, ValueError("a bug in the ablation")) == []
        assert ending(DagsterExecutionInterruptedError(), None) == []  # the evaluation is an earlier run's


def test_kuai_runs_summary_names_the_models_the_run_kept(tmp_path, capsys):
    """A model kept by the run (its materialization says `kept`) is named in the summary; one the
    run trained, or one kept by an earlier run, is not."""
    from kuai_assets import settings
    from kuai_assets.cli import print_summary

    workspace = settings.Workspace(tmp_path, tmp_path / "data", "tiny", tmp_path / "home", "sqlite:///x.db",
                                   "http://127.0.0.1:5000")

    def model_asset(name: str, kept: bool):
        @dg.asset(name=name)
        def asset() -> dg.MaterializeResult:
            return dg.MaterializeResult(metadata={"valid_auc": 0.7, **({"kept": "since ..."} if kept else {})})
        return asset

    with dg.instance_for_test() as instance:
        earlier = dg.materialize([model_asset("attention_model", True)], instance=instance).run_id
        run = dg.materialize([model_asset("model", False), model_asset("baseline_model", True)],
                             instance=instance).run_id
        print_summary(instance, workspace, 60.0, run)
        out = capsys.readouterr().out
        assert "  kept, nothing they learn from changed (their MLflow runs stand): baseline_model" in out.splitlines()
        print_summary(instance, workspace, 60.0, earlier)
        assert "  kept, nothing they learn from changed (their MLflow runs stand): attention_model" in \
            capsys.readouterr().out.splitlines()

        # the ablation's kept variants, counted, when the run's ablation kept some
        def ablation(kept: int):
            @dg.asset(name="feature_group_ablation")
            def asset() -> dg.MaterializeResult:
                keys = {f"variant {i}": {"key": str(i)} for i in range(5)}
                return dg.MaterializeResult(metadata={"variants_kept": kept, "variant_keys": dg.MetadataValue.json(keys)})
            return asset

        run = dg.materialize([model_asset("baseline_model", True), ablation(3)], instance=instance).run_id
        print_summary(instance, workspace, 60.0, run)
        assert ("  kept, nothing they learn from changed (their MLflow runs stand): baseline_model, "
                "3 of 5 ablation variants") in capsys.readouterr().out.splitlines()
        run = dg.materialize([model_asset("baseline_model", False), ablation(0)], instance=instance).run_id
        print_summary(instance, workspace, 60.0, run)
        assert "kept, nothing" not in capsys.readouterr().out


def test_kuai_runs_summary_says_what_the_registry_check_decided_in_the_run(tmp_path, capsys):
    """The summary gives the decision of `model`'s promotion check when the run executed it and it
    passed; not an earlier run's, nor a failed check's."""
    from kuai_assets import settings
    from kuai_assets.cli import PROMOTION_CHECK, print_summary

    workspace = settings.Workspace(tmp_path, tmp_path / "data", "tiny", tmp_path / "home", "sqlite:///x.db",
                                   "http://127.0.0.1:5000")

    @dg.asset(name="model")
    def model() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"valid_auc": 0.7})

    def check(passed: bool, description: str):
        @dg.asset_check(asset="model", name=PROMOTION_CHECK)
        def promoted() -> dg.AssetCheckResult:
            return dg.AssetCheckResult(passed=passed, description=description)
        return promoted

    @dg.asset(name="other")
    def other() -> None:
        return None

    decided = "kuai_click_model v2 (valid_auc 0.70000) beats champion v1 (0.69000): now @champion"
    with dg.instance_for_test() as instance:
        run = dg.materialize([model, check(True, decided)], instance=instance).run_id
        print_summary(instance, workspace, 60.0, run)
        assert f"  registry: {decided}" in capsys.readouterr().out.splitlines()
        later = dg.materialize([other], instance=instance).run_id  # the check did not run in it
        print_summary(instance, workspace, 60.0, later)
        assert "registry:" not in capsys.readouterr().out
        failed = dg.materialize([model, check(False, "run r has no version")], instance=instance,
                                raise_on_error=False).run_id
        print_summary(instance, workspace, 60.0, failed)
        assert "registry:" not in capsys.readouterr().out
