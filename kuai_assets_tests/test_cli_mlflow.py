"""The MLflow registry as users expect it: every new version of kuai_click_model is @candidate,
and @champion moves to it only when its validation AUC beats the champion's.

`promote_if_better` runs on a temporary SQLite store with hand-made runs; the `model` asset's
blocking check runs on a work dir whose `model` store points at such runs.
"""

from __future__ import annotations

import json

import dagster as dg
import pytest

MODEL = "kuai_click_model"


@pytest.fixture
def store(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    (tmp_path / "mlflow").mkdir()
    client = MlflowClient(uri)
    experiment = client.create_experiment("kuai_assets", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model(MODEL)

    def new_version(valid_auc: float) -> str:
        """A finished run with this validation AUC and its registered version (@candidate, as the model asset does)."""
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "valid_auc", valid_auc)
        client.set_terminated(run.info.run_id)
        version = client.create_model_version(MODEL, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        client.set_registered_model_alias(MODEL, "candidate", version.version)
        return run.info.run_id

    return uri, client, new_version


def champion(client) -> str:
    return str(client.get_model_version_by_alias(MODEL, "champion").version)


def test_champion_moves_only_when_the_validation_auc_improves(store):
    from kuai_assets.ml.tracking import promote_if_better

    uri, client, new_version = store
    first = promote_if_better(uri, MODEL, new_version(0.70))
    assert first.promoted and first.previous_champion is None and champion(client) == "1"

    worse = promote_if_better(uri, MODEL, new_version(0.68))
    assert not worse.promoted and (worse.version, worse.previous_champion) == ("2", "1")
    assert champion(client) == "1"
    assert str(client.get_model_version_by_alias(MODEL, "candidate").version) == "2"
    assert worse.describe() == (
        "kuai_click_model v2 (valid_auc 0.68000) does not beat champion v1 (0.70000): @champion stays"
    )

    third = new_version(0.72)
    better = promote_if_better(uri, MODEL, third)
    assert better.promoted and champion(client) == "3"
    assert better.describe() == "kuai_click_model v3 (valid_auc 0.72000) beats champion v1 (0.70000): now @champion"
    again = promote_if_better(uri, MODEL, third)  # the check of a kept model: the same run again
    assert not again.promoted and champion(client) == "3"
    assert again.describe() == "kuai_click_model v3 (valid_auc 0.72000) is @champion already"

    tie = promote_if_better(uri, MODEL, new_version(0.72))
    assert not tie.promoted and champion(client) == "3", "only a strictly better AUC takes the alias"


def test_a_run_without_a_registered_version_is_refused(store):
    from kuai_assets.ml.tracking import TrackingError, promote_if_better

    uri, client, _ = store
    run = client.create_run(client.get_experiment_by_name("kuai_assets").experiment_id)
    with pytest.raises(TrackingError, match=rf"^run {run.info.run_id} has no version of registered model 'kuai_click_model'"):
        promote_if_better(uri, MODEL, run.info.run_id)


def test_the_model_check_promotes_only_a_better_model(store, tmp_path):
    from kuai_assets.defs.checks import model_promoted_if_better
    from kuai_assets.defs.resources import TrackingResource, WorkspaceResource
    from kuai_assets.storage import WorkDir

    uri, client, new_version = store
    work = WorkDir(tmp_path / "work")
    resources = {
        # the synthetic default, never generated here: the check reads only the model store and MLflow
        "workspace": WorkspaceResource(data_dir=str(work.root / "data" / "tiny"), work_dir=str(work.root)),
        "tracking": TrackingResource(tracking_uri=uri, artifact_root=str(tmp_path / "artifacts")),
    }

    def check_after_model(valid_auc: float) -> dg.AssetCheckResult:
        """Publish a `model` store recorded as a new run with this AUC, then run the check."""
        run_id = new_version(valid_auc)
        with work.writing_store("model") as out:
            (out / "run.json").write_text(json.dumps({"mlflow_run_id": run_id, "valid_auc": valid_auc}))
        return model_promoted_if_better(**resources)

    first = check_after_model(0.70)
    assert first.passed and first.metadata["promoted"].value is True and champion(client) == "1"
    worse = check_after_model(0.65)
    assert worse.passed and worse.metadata["promoted"].value is False and champion(client) == "1"
    assert worse.metadata["previous_champion_valid_auc"].value == pytest.approx(0.70)
    better = check_after_model(0.75)
    assert better.passed and better.metadata["promoted"].value is True and champion(client) == "3"

    # a model whose run was never registered: the check fails (and, blocking, stops the submission)
    run = client.create_run(client.get_experiment_by_name("kuai_assets").experiment_id)
    with work.writing_store("model") as out:
        (out / "run.json").write_text(json.dumps({"mlflow_run_id": run.info.run_id}))
    unregistered = model_promoted_if_better(**resources)
    assert not unregistered.passed and "has no version of registered model" in unregistered.description
    assert champion(client) == "3"


def test_the_model_check_is_blocking_and_on_model():
    from kuai_assets.cli import PROMOTION_CHECK
    from kuai_assets.defs.checks import model_promoted_if_better

    (spec,) = model_promoted_if_better.check_specs
    assert spec.asset_key == dg.AssetKey("model") and spec.blocking
    assert spec.name == PROMOTION_CHECK  # the name kuai run's summary reads its decision by
