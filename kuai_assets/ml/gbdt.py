"""The gradient-boosted click model: validate, refit, record in MLflow, publish. No Dagster here.

`train_gbdt` fits on the validation setup with early stopping on the AUC of its cold-start scored
rows, then refits on the submission setup for the best number of rounds times a factor and scores
the test rows. `record_gbdt` logs the result as one MLflow run (params, AUC per iteration,
figures, the model, the training data's digest, the matrix slices as MLflow datasets); with
`Tracker.start_run` and `log_validation` that run is open from the start and holds the validation
AUC before the refit begins. `publish_gbdt` writes the model store, only after the run is
recorded: validation_model.txt, submission_model.txt, validation_predictions.parquet (row_id,
p_click on the validation scored rows), test_predictions.parquet (row_id, user_id, photo_id,
p_click) and run.json.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from kuai_assets.features.matrix import Feature, read_features
from kuai_assets.features.spec import CatalogError
from kuai_assets.ml.metrics import roc_curve
from kuai_assets.ml.tracking import PENDING, TEST_AUC_STATUS, MatrixSlice, Tracker, log_datasets
from kuai_assets.ml.training import (
    LightGbmParams,
    RowSample,
    Rows,
    Validation,
    importance_by_group,
    load_rows,
    train_final,
    train_validation,
)
from kuai_assets.storage import WorkDir, file_digest


class GbdtTraining(LightGbmParams):
    """How a GBDT is trained: the booster's parameters, which fit rows it sees, how it is refitted."""

    negative_sample_rate: float = Field(
        default=0.5,
        description="Share of non-click fit rows kept (every click is kept); predictions are recalibrated. "
        "1.0 keeps every row.",
    )
    max_fit_rows: int = Field(
        default=1_000_000, description="At most this many fit rows (after negative sampling), sampled at random."
    )
    refit_rounds_factor: float = Field(
        default=1.1, description="The submission model is refitted on the train rows for best_iteration x this factor."
    )
    trainer: str = Field(
        default="local",
        description="Where the submission refit runs: local, or dask (LightGBM on the Dask cluster at dask_scheduler, "
        "for the rounds the local validation found).",
    )
    dask_scheduler: str = Field(default="", description="For trainer dask: the scheduler, tcp://host:port.")

    def sample(self) -> RowSample:
        if not 0 < self.negative_sample_rate <= 1:
            raise CatalogError(f"negative_sample_rate must be in (0, 1], got {self.negative_sample_rate}")
        return RowSample(self.negative_sample_rate, self.max_fit_rows, self.seed)


def select_features(all_features: list[Feature], groups: list[str]) -> list[Feature]:
    """The matrix's features of the named groups; unknown names and an empty choice are refused."""
    known = sorted({f.group for f in all_features})
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise CatalogError(f"unknown feature group(s) {unknown}; the training matrix has: {', '.join(known)}")
    if not groups:
        raise CatalogError("at least one feature group must be enabled")
    return [f for f in all_features if f.group in groups]


@dataclass
class GbdtResult:
    """A validated and refitted GBDT, not yet recorded anywhere."""

    features: list[Feature]
    groups: list[str]
    training: GbdtTraining
    validation: Validation
    validation_rows: Rows
    final: object  # lightgbm.Booster fitted on the submission setup
    refit_rounds: int
    refit_rows: int
    test: Rows
    test_prediction: np.ndarray  # calibrated click probabilities of the test rows
    training_data_digest: str
    group_importance: dict[str, float] = field(default_factory=dict)
    matrix: Path | None = None  # the training matrix the rows came from

    def datasets(self) -> list[MatrixSlice]:
        """The matrix slices this model used, as MLflow datasets: the validation fit rows and the
        refit rows (context training), the validation scored rows (context validation)."""
        if self.matrix is None:
            return []
        columns = {f.name: "float" for f in self.features}
        sample = self.training.sample()
        fit_detail = f"negative_rate={sample.negative_rate},max_rows={sample.max_rows},seed={sample.seed}"
        v = self.validation

        def piece(setup: str, role: str, rows: int, context: str, detail: str = "") -> MatrixSlice:
            return MatrixSlice(self.matrix, self.training_data_digest, setup, role, rows,
                               {**columns, "click": "long"}, context, detail)

        return [
            piece("validation", "fit", v.fit_rows, "training", fit_detail),
            piece("validation", "scored", v.scored_rows, "validation"),
            piece("submission", "fit", self.refit_rows, "training", fit_detail),
        ]

    @property
    def validation_prediction(self) -> np.ndarray:
        """Calibrated probabilities of the validation scored rows (ranked as the raw scores)."""
        return self.training.sample().calibrate(self.validation.prediction)

    def figures(self) -> dict[str, bytes]:
        from kuai_assets.ml import plots

        v = self.validation
        fpr, tpr = roc_curve(v.label, v.prediction)
        return {
            "roc_validation.png": plots.roc_png(fpr, tpr, v.auc),
            "importance_by_group.png": plots.bar_png(
                self.group_importance, "Gain share by feature group", "share of total gain"
            ),
            "auc_by_iteration.png": plots.line_png(
                v.auc_history, "Validation AUC by iteration", "iteration", "AUC", mark=v.best_iteration
            ),
        }


def train_gbdt(
    matrix: Path, groups: list[str], training: GbdtTraining, log: Callable[[str], None] = lambda m: None, name: str = "model",
    on_validated: Callable[[Validation], None] = lambda validation: None,
) -> GbdtResult:
    """Validate on the validation setup, refit on the submission setup, score the test rows.
    `on_validated(validation)` is called as soon as the validation is done, before the refit."""
    if training.trainer not in ("local", "dask"):
        raise CatalogError(f"trainer must be local or dask, got {training.trainer!r}")
    if training.trainer == "dask":  # an unreachable scheduler is named before any training
        from kuai_assets.ml.dask_training import check_scheduler

        check_scheduler(training.dask_scheduler)
    features = select_features(read_features(matrix), groups)
    params, sample = training, training.sample()
    log(f"{name}: {len(features)} features from {len(groups)} group(s); loading validation rows")
    scored = load_rows(matrix, features, "validation", "scored")
    validation = train_validation(
        load_rows(matrix, features, "validation", "fit", sample), scored, features, params, log, name
    )
    log(f"{name}: validation AUC {validation.auc:.4f} at iteration {validation.best_iteration}; refitting on the train rows")
    on_validated(validation)
    rounds = max(1, int(round(validation.best_iteration * training.refit_rounds_factor)))
    started = time.time()
    refit_rows = load_rows(matrix, features, "submission", "fit", sample)
    if training.trainer == "dask":
        from kuai_assets.ml.dask_training import train_on_dask

        final = train_on_dask(refit_rows, features, params, rounds, training.dask_scheduler, log=log).booster
    else:
        final = train_final(refit_rows, features, params, rounds)
    refit_count = len(refit_rows.x)
    del refit_rows
    test = load_rows(matrix, features, "submission", "scored")
    test_prediction = sample.calibrate(final.predict(test.x))
    log(f"{name}: refitted {rounds} rounds on {refit_count:,} rows and scored {len(test.x):,} test rows "
        f"in {time.time() - started:.0f} s")
    return GbdtResult(
        features=features,
        groups=list(groups),
        training=training,
        validation=validation,
        validation_rows=scored,
        final=final,
        refit_rounds=rounds,
        refit_rows=refit_count,
        test=test,
        test_prediction=test_prediction,
        training_data_digest=file_digest(matrix),
        group_importance=importance_by_group(validation.importance, features),
        matrix=Path(matrix),
    )


def gbdt_run_name(config_name: str, groups: list[str], params: GbdtTraining) -> str:
    return f"{config_name} · {len(groups)} groups · lr {params.learning_rate:g} · leaves {params.num_leaves}"


def gbdt_run_tags(tags: dict[str, str], config_name: str, groups: list[str]) -> dict[str, str]:
    return {**tags, "model_config": config_name, "feature_groups": ",".join(groups), TEST_AUC_STATUS: PENDING}


def validation_metrics(v: Validation) -> dict[str, float]:
    return {
        "valid_auc": v.auc,
        "best_iteration": v.best_iteration,
        "fit_rows": v.fit_rows,
        "validation_rows": v.scored_rows,
        "validation_click_rate": v.scored_click_rate,
        "train_seconds": v.seconds,
    }


def log_validation(tracker: Tracker, run_id: str, v: Validation) -> None:
    """The validation's metrics and AUC per iteration onto the running run `run_id` (before the refit)."""
    tracker.log_metrics_to(run_id, validation_metrics(v))
    tracker.log_series_to(run_id, {"valid_auc_by_iteration": v.auc_history})


def record_gbdt(
    tracker: Tracker, result: GbdtResult, config_name: str, tags: dict[str, str], registered_model: str, ui_url: str,
    run_id: str | None = None,
) -> dict:
    """Log `result` as one MLflow run and register its submission model; return the run's facts
    (ids, link, AUC, rounds, features...) as written to the store's run.json. With `run_id` (a
    run `tracker.start_run` made, the validation already logged to it by `log_validation`), that
    run is completed and ended; otherwise a new run holds everything."""
    import mlflow
    import pandas as pd

    params = result.training
    v = result.validation
    run_name = gbdt_run_name(config_name, result.groups, params)
    tags = gbdt_run_tags(tags, config_name, result.groups)
    with tracker.run(run_name, tags, run_id=run_id) as run:
        mlflow.log_params(
            {
                **{name: getattr(params, name) for name in GbdtTraining.model_fields},
                "refit_rounds": result.refit_rounds,
                "refit_rows": result.refit_rows,
                "model_config": config_name,
                "feature_groups": ",".join(result.groups),
                "features": len(result.features),
                "training_data_digest": result.training_data_digest,
            }
        )
        if run_id is None:  # else log_validation logged them before the refit
            mlflow.log_metrics(validation_metrics(v))
            tracker.log_series(run.info.run_id, "valid_auc_by_iteration", v.auc_history)
        log_datasets(result.datasets())  # the matrix slices: source path, digest, schema, rows
        with tempfile.TemporaryDirectory() as tmp:
            for name, png in result.figures().items():
                (Path(tmp) / name).write_bytes(png)
                mlflow.log_artifact(str(Path(tmp) / name), artifact_path="figures")
        mlflow.log_dict({"importance_by_group": result.group_importance, "importance_by_feature": v.importance}, "importance.json")
        mlflow.log_dict([vars(f) for f in result.features], "features.json")
        example = pd.DataFrame(result.test.x[:5], columns=[f.name for f in result.features])
        # the requirements given, not inferred: inferring them loads the model in a fresh Python
        # process (seconds to a minute on a busy machine) to see what it imports
        logged = mlflow.lightgbm.log_model(result.final, name="model", input_example=example,
                                           pip_requirements=model_requirements())
        run_id, experiment_id = run.info.run_id, run.info.experiment_id
        version = tracker.register_candidate(run_id, logged, registered_model)  # alias @candidate
    return {
        "mlflow_run_id": run_id,
        "mlflow_experiment_id": experiment_id,
        "registered_model": registered_model,
        "registered_version": version,
        "mlflow_run_url": tracker.run_url(run_id, experiment_id, ui_url),
        "valid_auc": v.auc,
        "best_iteration": v.best_iteration,
        "refit_rounds": result.refit_rounds,
        "refit_rows": result.refit_rows,
        "negative_sample_rate": params.negative_sample_rate,
        "feature_groups": result.groups,
        "features": [f.name for f in result.features],
        "training_data_digest": result.training_data_digest,
        "config": config_name,
    }


def model_requirements() -> list[str]:
    """What the logged model needs to be loaded and scored (pinned to the versions that trained it)."""
    import lightgbm
    import pandas as pd

    return [f"lightgbm=={lightgbm.__version__}", f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]


def publish_gbdt(work: WorkDir, store_name: str, result: GbdtResult, run_info: dict) -> None:
    """Write the model store atomically (see the module docstring for its files)."""
    with work.writing_store(store_name) as out:
        result.validation.booster.save_model(str(out / "validation_model.txt"))
        result.final.save_model(str(out / "submission_model.txt"))
        scored = result.validation_rows
        pq.write_table(
            pa.table({"row_id": scored.row_id, "user_id": scored.user_id, "photo_id": scored.photo_id,
                      "p_click": result.validation_prediction}),
            out / "validation_predictions.parquet",
        )
        test = result.test
        pq.write_table(
            pa.table({"row_id": test.row_id, "user_id": test.user_id, "photo_id": test.photo_id, "p_click": result.test_prediction}),
            out / "test_predictions.parquet",
        )
        (out / "run.json").write_text(json.dumps(run_info, indent=2))


def score_test_rows(work: WorkDir, store_name: str = "model") -> tuple[Rows, np.ndarray, dict]:
    """The test rows of the training matrix scored by a published model's submission booster.

    Refuses a matrix that lacks a feature the model was trained on."""
    import lightgbm as lgb

    from kuai_assets.features.matrix import MATRIX

    store = work.require_store(store_name)
    info = json.loads((store / "run.json").read_text())
    booster = lgb.Booster(model_file=str(store / "submission_model.txt"))
    features = [f for f in read_features(work.require_table(MATRIX)) if f.name in set(info["features"])]
    missing = sorted(set(info["features"]) - {f.name for f in features})
    if missing:
        raise CatalogError(f"the training matrix lacks feature(s) {missing} the model was trained on; retrain `{store_name}`")
    order = {name: i for i, name in enumerate(info["features"])}
    features.sort(key=lambda f: order[f.name])
    test = load_rows(work.table_path(MATRIX), features, "submission", "scored")
    return test, RowSample(info["negative_sample_rate"]).calibrate(booster.predict(test.x)), info
