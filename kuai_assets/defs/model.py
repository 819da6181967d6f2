"""Model: the training matrix, LightGBM models tracked in MLflow, the submission and its evaluation."""


import hashlib
import json
import tempfile
import time
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from kuai_assets.defs.metadata import clear_failures, image, markdown_table, table_metadata
from kuai_assets.defs.resources import WorkspaceResource, TrackingResource
from kuai_assets.features.catalog import CatalogError, feature_groups, load_catalog
from kuai_assets.features.matrix import MATRIX, Feature, build_training_matrix, read_features
from kuai_assets.formats import layout
from kuai_assets.formats.released import read_ground_truth
from kuai_assets.formats.submission import validate_submission, write_submission
from kuai_assets.ml.metrics import roc_auc, roc_curve
from kuai_assets.ml.tracking import REGISTERED_MODEL, Tracker
from kuai_assets.ml.training import (
    LightGbmParams,
    RowSample,
    Validation,
    importance_by_group,
    load_rows,
    train_final,
    train_validation,
)
from kuai_assets.storage import WorkDir, atomic_file, sql_string

GROUP = "model"
# LightGBM uses every core: steps with this tag run one at a time (see definitions.EXECUTOR)
LIGHTGBM_TAGS = {"kuai/cpu": "lightgbm"}
FULL, BASELINE = "full", "baseline"
BASELINE_GROUPS = ["published_baseline"]
_DEFAULTS = LightGbmParams()


def default_feature_groups() -> list[str]:
    return [g.name for g in feature_groups() if g.enabled_by_default]


def all_feature_group_keys() -> list[dg.AssetKey]:
    return [dg.AssetKey(g.name) for g in feature_groups()]


# -- training matrix ---------------------------------------------------------------------------


class TrainingMatrixConfig(dg.Config):
    max_fit_rows_per_setup: int = Field(
        default=4_000_000,
        description="Keep at most this many fit rows per setup (a uniform sample; every scored row is kept). "
        "The models fit on at most max_fit_rows anyway; at the real sizes the full matrix would be tens of GB. "
        "0 keeps every row.",
    )


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    deps=[dg.AssetKey("model_rows"), dg.AssetKey("raw_interactions"), dg.AssetKey("video_clusters")]
    + all_feature_group_keys(),
    code_version="2",
)
def training_matrix(
    context: dg.AssetExecutionContext, config: TrainingMatrixConfig, workspace: WorkspaceResource
) -> dg.MaterializeResult:
    """model_rows joined to every feature group by the group's declared grain.

    One row per (setup, row): setup 'validation' (fit rows before the cut, scored cold-start rows
    after it) and setup 'submission' (all train rows, scored test rows). Groups at (k, cluster)
    grain join once per k through the photo's cluster, suffixed `_k<k>`. The feature columns, their
    group and kind travel in the Parquet metadata; the models choose groups from there.
    """
    with clear_failures("training_matrix"):
        work = workspace.work()
        groups = feature_groups(load_catalog())
        result = build_training_matrix(work, groups, context.log.info, config.max_fit_rows_per_setup or None)
    features: list[Feature] = result["features"]
    by_group: dict[str, dict] = {}
    for f in features:
        entry = by_group.setdefault(f.group, {"group": f.group, "continuous": 0, "discrete": 0, "labels": f.uses_labels})
        entry[f.kind] += 1
    return dg.MaterializeResult(
        metadata={
            **table_metadata(work.table_path(MATRIX), preview_rows=3),
            "rows_by_setup": dg.MetadataValue.md(
                markdown_table([{"setup": s, "role": r, "rows": n, "click_rate": c} for s, r, n, c in result["counts"]])
            ),
            "feature_groups": dg.MetadataValue.md(markdown_table(list(by_group.values()))),
            "features": dg.MetadataValue.int(len(features)),
            "cluster_ks": dg.MetadataValue.json(result["ks"]),
            "fit_rows_before_sampling": dg.MetadataValue.json(result["fit_rows_before_sampling"]),
            "seconds": dg.MetadataValue.float(result["seconds"]),
        }
    )


# -- models --------------------------------------------------------------------------------------


class LightGbmConfig(dg.Config):
    learning_rate: float = Field(default=_DEFAULTS.learning_rate, description="LightGBM shrinkage per round.")
    num_leaves: int = Field(default=_DEFAULTS.num_leaves, description="Leaves per tree.")
    min_data_in_leaf: int = Field(default=_DEFAULTS.min_data_in_leaf, description="Fewest rows in a leaf.")
    feature_fraction: float = Field(default=_DEFAULTS.feature_fraction, description="Share of features per tree.")
    bagging_fraction: float = Field(default=_DEFAULTS.bagging_fraction, description="Share of rows per tree.")
    lambda_l2: float = Field(default=_DEFAULTS.lambda_l2, description="L2 regularisation of leaf values.")
    max_bin: int = Field(default=_DEFAULTS.max_bin, description="Histogram bins per feature.")
    max_rounds: int = Field(default=_DEFAULTS.max_rounds, description="Most boosting rounds.")
    early_stopping_rounds: int = Field(
        default=_DEFAULTS.early_stopping_rounds, description="Stop when validation AUC has not improved for this many rounds."
    )
    negative_sample_rate: float = Field(
        default=0.5,
        description="Share of non-click fit rows kept (every click is kept); predictions are recalibrated. "
        "1.0 keeps every row.",
    )
    max_fit_rows: int = Field(
        default=1_000_000, description="At most this many fit rows (after negative sampling), sampled at random."
    )
    refit_rounds_factor: float = Field(
        default=1.1,
        description="The submission model is refitted on the train rows for best_iteration x this factor.",
    )
    seed: int = Field(default=_DEFAULTS.seed, description="Seed of LightGBM and of the row sample.")

    def params(self) -> LightGbmParams:
        return LightGbmParams(
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_data_in_leaf=self.min_data_in_leaf,
            feature_fraction=self.feature_fraction,
            bagging_fraction=self.bagging_fraction,
            lambda_l2=self.lambda_l2,
            max_bin=self.max_bin,
            max_rounds=self.max_rounds,
            early_stopping_rounds=self.early_stopping_rounds,
            seed=self.seed,
        )

    def sample(self) -> RowSample:
        if not 0 < self.negative_sample_rate <= 1:
            raise CatalogError(f"negative_sample_rate must be in (0, 1], got {self.negative_sample_rate}")
        return RowSample(self.negative_sample_rate, self.max_fit_rows, self.seed)


class ModelConfig(LightGbmConfig):
    feature_groups: list[str] = Field(
        default=default_feature_groups(),
        description="Feature groups the model uses: file names in dbt_like_sql/features/ and the Python groups.",
    )


def select_features(all_features: list[Feature], groups: list[str]) -> list[Feature]:
    known = sorted({f.group for f in all_features})
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise CatalogError(f"unknown feature group(s) {unknown}; the training matrix has: {', '.join(known)}")
    if not groups:
        raise CatalogError("at least one feature group must be enabled")
    return [f for f in all_features if f.group in groups]


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def fit_track_and_publish(
    context: dg.AssetExecutionContext,
    work: WorkDir,
    tracker: Tracker,
    store_name: str,
    config_name: str,
    groups: list[str],
    config: LightGbmConfig,
    registered_model: str,
    ui_url: str,
) -> tuple[Validation, dict]:
    """Validate, refit, record in MLflow, then publish the model store (only once recorded)."""
    tracker.check()  # an unwritable MLflow store fails here, not after the training
    matrix = work.require_table(MATRIX)
    features = select_features(read_features(matrix), groups)
    params, sample = config.params(), config.sample()
    log = context.log.info
    log(f"{store_name}: {len(features)} features from {len(groups)} group(s); loading validation rows")
    scored = load_rows(matrix, features, "validation", "scored")
    validation = train_validation(
        load_rows(matrix, features, "validation", "fit", sample),
        scored,
        features,
        params,
        log,
        store_name,
    )
    log(f"{store_name}: validation AUC {validation.auc:.4f} at iteration {validation.best_iteration}; refitting on the train rows")
    rounds = max(1, int(round(validation.best_iteration * config.refit_rounds_factor)))
    started = time.time()
    refit_rows = load_rows(matrix, features, "submission", "fit", sample)
    final = train_final(refit_rows, features, params, rounds)
    refit_count = len(refit_rows.x)
    del refit_rows
    test = load_rows(matrix, features, "submission", "scored")
    test_prediction = sample.calibrate(final.predict(test.x))
    log(f"{store_name}: refitted {rounds} rounds on {refit_count:,} rows and scored {len(test.x):,} test rows "
        f"in {time.time() - started:.0f} s; recording in MLflow")
    started = time.time()

    group_importance = importance_by_group(validation.importance, features)
    fpr, tpr = roc_curve(validation.label, validation.prediction)
    from kuai_assets.ml import plots

    figures = {
        "roc_validation.png": plots.roc_png(fpr, tpr, validation.auc),
        "importance_by_group.png": plots.bar_png(group_importance, "Gain share by feature group", "share of total gain"),
        "auc_by_iteration.png": plots.line_png(
            validation.auc_history, "Validation AUC by iteration", "iteration", "AUC", mark=validation.best_iteration
        ),
    }
    digest = file_digest(matrix)
    run_name = f"{config_name} · {len(groups)} groups · lr {params.learning_rate:g} · leaves {params.num_leaves}"
    tags = {
        "dagster_run_id": context.run.run_id,
        "dagster_asset": store_name,
        "model_config": config_name,
        "code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "",
        "feature_groups": ",".join(groups),
    }
    with tracker.run(run_name, tags) as run:
        import mlflow
        import pandas as pd

        mlflow.log_params(
            {
                **{k: v for k, v in vars(params).items()},
                "refit_rounds_factor": config.refit_rounds_factor,
                "refit_rounds": rounds,
                "refit_rows": refit_count,
                "negative_sample_rate": sample.negative_rate,
                "max_fit_rows": sample.max_rows,
                "model_config": config_name,
                "feature_groups": ",".join(groups),
                "features": len(features),
                "training_data_digest": digest,
            }
        )
        mlflow.log_metrics(
            {
                "valid_auc": validation.auc,
                "best_iteration": validation.best_iteration,
                "fit_rows": validation.fit_rows,
                "validation_rows": validation.scored_rows,
                "validation_click_rate": validation.scored_click_rate,
                "train_seconds": validation.seconds,
            }
        )
        tracker.log_series(run.info.run_id, "valid_auc_by_iteration", validation.auc_history)
        with tempfile.TemporaryDirectory() as tmp:
            for name, png in figures.items():
                (Path(tmp) / name).write_bytes(png)
                mlflow.log_artifact(str(Path(tmp) / name), artifact_path="figures")
        mlflow.log_dict({"importance_by_group": group_importance, "importance_by_feature": validation.importance}, "importance.json")
        mlflow.log_dict([vars(f) for f in features], "features.json")
        example = pd.DataFrame(test.x[:5], columns=[f.name for f in features])
        mlflow.lightgbm.log_model(final, name="model", registered_model_name=registered_model, input_example=example)
        run_id, experiment_id = run.info.run_id, run.info.experiment_id

    run_info = {
        "mlflow_run_id": run_id,
        "mlflow_experiment_id": experiment_id,
        "mlflow_run_url": tracker.run_url(run_id, experiment_id, ui_url),
        "valid_auc": validation.auc,
        "best_iteration": validation.best_iteration,
        "refit_rounds": rounds,
        "refit_rows": refit_count,
        "negative_sample_rate": sample.negative_rate,
        "feature_groups": groups,
        "features": [f.name for f in features],
        "training_data_digest": digest,
        "config": config_name,
    }
    log(f"{store_name}: recorded in MLflow in {time.time() - started:.0f} s")
    with work.writing_store(store_name) as out:
        validation.booster.save_model(str(out / "validation_model.txt"))
        final.save_model(str(out / "submission_model.txt"))
        pq.write_table(
            pa.table({"row_id": test.row_id, "user_id": test.user_id, "photo_id": test.photo_id, "p_click": test_prediction}),
            out / "test_predictions.parquet",
        )
        pq.write_table(
            pa.table({"row_id": scored.row_id, "p_click": sample.calibrate(validation.prediction)}),
            out / "validation_predictions.parquet",
        )
        (out / "run.json").write_text(json.dumps(run_info, indent=2))
    run_info["figures"] = figures
    run_info["group_importance"] = group_importance
    return validation, run_info


def model_metadata(validation: Validation, info: dict) -> dict:
    return {
        "valid_auc": dg.MetadataValue.float(round(validation.auc, 5)),
        "best_iteration": dg.MetadataValue.int(validation.best_iteration),
        "refit_rounds": dg.MetadataValue.int(info["refit_rounds"]),
        "fit_rows": dg.MetadataValue.int(validation.fit_rows),
        "validation_rows": dg.MetadataValue.int(validation.scored_rows),
        "train_seconds": dg.MetadataValue.float(validation.seconds),
        "mlflow_run_id": info["mlflow_run_id"],
        "mlflow_run": dg.MetadataValue.url(info["mlflow_run_url"]),
        "feature_groups": dg.MetadataValue.json(info["feature_groups"]),
        "features": dg.MetadataValue.int(len(info["features"])),
        "importance_by_group": dg.MetadataValue.md(
            markdown_table([{"group": g, "gain_share": round(v, 4)} for g, v in info["group_importance"].items()])
        ),
        "roc_curve": image(info["figures"]["roc_validation.png"], "ROC"),
        "importance_chart": image(info["figures"]["importance_by_group.png"], "importance by group"),
        "auc_by_iteration": image(info["figures"]["auc_by_iteration.png"], "AUC by iteration"),
        "training_data_digest": info["training_data_digest"],
    }


@dg.asset(
    group_name=GROUP,
    kinds={"lightgbm", "mlflow"},
    deps=[training_matrix],
    code_version="1",
    # first of the LightGBM steps, so that the submission (one core) runs beside the baseline's training
    op_tags={**LIGHTGBM_TAGS, "dagster/priority": "1"},
)
def model(
    context: dg.AssetExecutionContext, config: ModelConfig, workspace: WorkspaceResource, tracking: TrackingResource
) -> dg.MaterializeResult:
    """The full LightGBM click model over the enabled feature groups, tracked in MLflow.

    Validation mirrors the test: fitted on train rows before the cut, early-stopped on the AUC of
    the rows after it whose photo was never shown before (cold start). The submission model is
    then refitted on every train row. Logs params, AUC per iteration, the model (registered as
    kuai_click_model), ROC and importance-by-group figures and the training data digest; the model
    is published only once MLflow has recorded it.
    """
    with clear_failures("model"):
        validation, info = fit_track_and_publish(
            context, workspace.work(), tracking.tracker(), "model", FULL, list(config.feature_groups), config,
            REGISTERED_MODEL, tracking.ui_url,
        )
    return dg.MaterializeResult(metadata=model_metadata(validation, info))


@dg.asset(group_name=GROUP, kinds={"lightgbm", "mlflow"}, deps=[training_matrix], code_version="1", op_tags=LIGHTGBM_TAGS)
def baseline_model(
    context: dg.AssetExecutionContext, config: LightGbmConfig, workspace: WorkspaceResource, tracking: TrackingResource
) -> dg.MaterializeResult:
    """The published top-10 recipe as a baseline: LightGBM on the `published_baseline` group only.

    Same validation, refit and MLflow tracking as `model` (registered as kuai_click_model_baseline),
    so the two sit side by side in one experiment.
    """
    with clear_failures("baseline_model"):
        validation, info = fit_track_and_publish(
            context, workspace.work(), tracking.tracker(), "baseline_model", BASELINE, BASELINE_GROUPS, config,
            f"{REGISTERED_MODEL}_baseline", tracking.ui_url,
        )
    return dg.MaterializeResult(metadata=model_metadata(validation, info))


# -- submission and evaluation -------------------------------------------------------------------


class SubmissionConfig(dg.Config):
    source: str = Field(
        default="blend",
        description="Whose test predictions are submitted: blend (GBDT and attention network), model (the GBDT "
        "alone) or attention_model.",
    )


SUBMISSION_SOURCES = ("blend", "model", "attention_model")
SUBMISSION_SOURCE_FILE = "submission_source.json"  # beside submission.txt: whose predictions it holds


@dg.asset(group_name=GROUP, kinds={"lightgbm", "python"}, deps=[model, dg.AssetKey("blend")], code_version="2")
def submission(
    context: dg.AssetExecutionContext, config: SubmissionConfig, workspace: WorkspaceResource
) -> dg.MaterializeResult:
    """The competition file at $KUAI_WORK_DIR/submission.txt: `user_id \\t photo_id \\t probability`.

    From `source` (default the blend): for `model`, scores the test rows of the training matrix
    with the recorded submission model; otherwise writes the store's test_predictions.parquet.
    Six decimals per row; checks the keys are exactly those of test_interaction.txt.
    """
    with clear_failures("submission"):
        if config.source not in SUBMISSION_SOURCES:
            raise CatalogError(f"submission source {config.source!r} is not one of {', '.join(SUBMISSION_SOURCES)}")
        work = workspace.work()
        store = work.require_store(config.source)
        info = json.loads((store / "run.json").read_text())
        path = work.submission_file
        if config.source == "model":
            import lightgbm as lgb

            booster = lgb.Booster(model_file=str(store / "submission_model.txt"))
            features = [f for f in read_features(work.require_table(MATRIX)) if f.name in set(info["features"])]
            missing = sorted(set(info["features"]) - {f.name for f in features})
            if missing:
                raise CatalogError(f"the training matrix lacks feature(s) {missing} the model was trained on; retrain `model`")
            order = {name: i for i, name in enumerate(info["features"])}
            features.sort(key=lambda f: order[f.name])
            test = load_rows(work.table_path(MATRIX), features, "submission", "scored")
            probability = RowSample(info["negative_sample_rate"]).calibrate(booster.predict(test.x))
            write_submission(path, test.user_id, test.photo_id, probability)
        else:
            predictions = pq.read_table(store / "test_predictions.parquet")
            probability = predictions.column("p_click").to_numpy()
            write_submission(
                path, predictions.column("user_id").to_numpy(), predictions.column("photo_id").to_numpy(), probability
            )
        rows = validate_submission(path, layout.interaction_file(workspace.dataset(), "test"))
        with atomic_file(path.with_name(SUBMISSION_SOURCE_FILE)) as tmp:
            tmp.write_text(json.dumps({"source": config.source, "mlflow_run_id": info["mlflow_run_id"]}))
    with open(path) as f:
        head = [next(f).rstrip("\n") for _ in range(min(5, rows))]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(rows),
            "path": dg.MetadataValue.path(str(path)),
            "mean_probability": dg.MetadataValue.float(round(float(probability.mean()), 5)),
            "mlflow_run_id": info["mlflow_run_id"],
            "source": config.source,
            "preview": dg.MetadataValue.md("```\n" + "\n".join(head) + "\n```"),
            "validated_against": dg.MetadataValue.path(str(layout.interaction_file(workspace.dataset(), "test"))),
        }
    )


def _test_auc(ground_truth: Path, submission_file: Path | None, predictions: Path | None) -> tuple[float, float, int]:
    """AUC of a submission (or a predictions table) against the ground truth, and the oracle AUC."""
    con = duckdb.connect()
    try:
        read_ground_truth(con, ground_truth)
        if submission_file is not None:
            source = (
                f"read_csv({sql_string(submission_file)}, delim='\t', header=false, auto_detect=false, "
                "columns={'user_id': 'BIGINT', 'photo_id': 'BIGINT', 'p_click': 'DOUBLE'})"
            )
        else:
            source = f"read_parquet({sql_string(predictions)})"
        joined = con.execute(
            f"select g.click, s.p_click as score, g.p_click as oracle from ground_truth g "
            f"join {source} s using (user_id, photo_id)"
        ).fetchnumpy()
        total = con.execute("select count(*) from ground_truth").fetchone()[0]
    finally:
        con.close()
    if len(joined["click"]) != total:
        raise CatalogError(f"only {len(joined['click'])} of {total} ground-truth rows have a prediction")
    return roc_auc(joined["click"], joined["score"]), roc_auc(joined["click"], joined["oracle"]), total


@dg.asset(group_name=GROUP, kinds={"python", "mlflow"}, deps=[submission, baseline_model], code_version="2")
def evaluation(
    context: dg.AssetExecutionContext, workspace: WorkspaceResource, tracking: TrackingResource
) -> dg.MaterializeResult:
    """AUC of the submission and of every model on the test rows, against a ground-truth file.

    Only when the dataset has one (the synthetic generator writes ground_truth/ beside train/ and
    test/). `test_auc` is the submission file's; each model (GBDT, baseline, attention network,
    blend: those whose store exists) is scored from its own test predictions, and its test_auc is
    added to its own MLflow run. Reports the oracle AUC (of the true click probabilities), the
    closure of the oracle gap (AUC - 0.5) / (oracle - 0.5), and how far the submitted model's
    validation AUC was from its test AUC.
    """
    with clear_failures("evaluation"):
        work = workspace.work()
        truth = workspace.ground_truth_path()
        if truth is None:
            context.log.warning("No ground truth for this dataset: nothing to evaluate against.")
            return dg.MaterializeResult(metadata={"ground_truth": "none (real data: submit the file to score it)"})
        test_auc, oracle_auc, rows = _test_auc(truth, work.submission_file, None)
        closure = (test_auc - 0.5) / (oracle_auc - 0.5)
        source = work.submission_file.with_name(SUBMISSION_SOURCE_FILE)
        submitted = json.loads(source.read_text())["source"] if source.is_file() else "model"
        tracker = tracking.tracker()
        summary, by_store = [], {}
        for store, label in (("model", "full (GBDT)"), ("attention_model", "attention"), ("blend", "blend"),
                             ("baseline_model", "baseline")):
            if store != "baseline_model" and not work.store_path(store).exists():
                continue
            folder = work.require_store(store)
            info = json.loads((folder / "run.json").read_text())
            auc, _, _ = _test_auc(truth, None, folder / "test_predictions.parquet")
            by_store[store] = (info, auc)
            tracker.log_metrics_to(
                info["mlflow_run_id"],
                {"test_auc": auc, "oracle_auc": oracle_auc, "oracle_gap_closure": (auc - 0.5) / (oracle_auc - 0.5)},
            )
            summary.append({"model": label + (" · submitted" if store == submitted else ""),
                            "valid_auc": round(info["valid_auc"], 4), "test_auc": round(auc, 4),
                            "gap_closure": round((auc - 0.5) / (oracle_auc - 0.5), 3)})
        summary.append({"model": "oracle (true p_click)", "valid_auc": "", "test_auc": round(oracle_auc, 4), "gap_closure": 1.0})
        submitted_info = by_store[submitted][0] if submitted in by_store else by_store["model"][0]
        model_info, model_auc = by_store["model"]
        baseline_auc = by_store["baseline_model"][1]
    context.log.info(
        f"evaluation: submission ({submitted}) test AUC {test_auc:.4f} (validation {submitted_info['valid_auc']:.4f}), "
        f"GBDT {model_auc:.4f}, baseline {baseline_auc:.4f}, oracle {oracle_auc:.4f}, oracle-gap closure {closure:.3f}"
    )
    return dg.MaterializeResult(
        metadata={
            "test_auc": dg.MetadataValue.float(round(test_auc, 5)),
            "submitted": submitted,
            "valid_auc": dg.MetadataValue.float(round(submitted_info["valid_auc"], 5)),
            "valid_minus_test_auc": dg.MetadataValue.float(round(submitted_info["valid_auc"] - test_auc, 5)),
            "model_test_auc": dg.MetadataValue.float(round(model_auc, 5)),
            "baseline_test_auc": dg.MetadataValue.float(round(baseline_auc, 5)),
            "full_minus_baseline_auc": dg.MetadataValue.float(round(model_auc - baseline_auc, 5)),
            **({"attention_test_auc": dg.MetadataValue.float(round(by_store["attention_model"][1], 5))}
               if "attention_model" in by_store else {}),
            **({"blend_test_auc": dg.MetadataValue.float(round(by_store["blend"][1], 5))} if "blend" in by_store else {}),
            "oracle_auc": dg.MetadataValue.float(round(oracle_auc, 5)),
            "oracle_gap_closure": dg.MetadataValue.float(round(closure, 4)),
            "test_rows": dg.MetadataValue.int(rows),
            "summary": dg.MetadataValue.md(markdown_table(summary)),
            "ground_truth": dg.MetadataValue.path(str(truth)),
            "mlflow_run": dg.MetadataValue.url(submitted_info["mlflow_run_url"]),
        }
    )


# -- ablation ------------------------------------------------------------------------------------


class AblationConfig(LightGbmConfig):
    feature_groups: list[str] = Field(
        default=default_feature_groups(), description="The groups of the full model the ablation starts from."
    )
    base_group: str = Field(
        default="user_behaviour", description="The group every 'alone' variant adds the others to."
    )
    max_fit_rows: int = Field(
        default=100_000, description="Fit rows sampled per variant (after negative sampling)."
    )
    max_validation_rows: int = Field(
        default=100_000, description="Validation rows sampled to score every variant (the same rows for all)."
    )
    learning_rate: float = Field(default=0.2, description="LightGBM shrinkage per round (higher than the model's, for speed).")
    num_leaves: int = Field(default=31, description="Leaves per tree.")
    max_rounds: int = Field(default=150, description="Most boosting rounds per variant.")
    early_stopping_rounds: int = Field(default=15, description="Early stopping patience per variant.")


@dg.asset(group_name=GROUP, kinds={"lightgbm", "mlflow"}, deps=[training_matrix], code_version="1", op_tags=LIGHTGBM_TAGS)
def feature_group_ablation(
    context: dg.AssetExecutionContext, config: AblationConfig, workspace: WorkspaceResource, tracking: TrackingResource
) -> dg.MaterializeResult:
    """Which feature group carries the gain: validation AUC with each group removed, and with each
    group alone on top of the user-behaviour group. One MLflow run per variant, nested under one
    parent; a table and a bar chart here.
    """
    with clear_failures("feature_group_ablation"):
        work = workspace.work()
        matrix = work.require_table(MATRIX)
        groups = list(config.feature_groups)
        features = select_features(read_features(matrix), groups)
        if config.base_group not in groups:
            raise CatalogError(f"base_group {config.base_group!r} is not among the feature groups {groups}")
        fit = load_rows(matrix, features, "validation", "fit", config.sample())
        scored = load_rows(matrix, features, "validation", "scored", RowSample(1.0, config.max_validation_rows, config.seed))
        variants = {"all groups": groups}
        variants.update({f"without {g}": [h for h in groups if h != g] for g in groups})
        variants[f"{config.base_group} alone"] = [config.base_group]
        variants.update({f"{config.base_group} + {g}": [config.base_group, g] for g in groups if g != config.base_group})
        params = config.params()
        results = []
        tracker = tracking.tracker()
        tags = {"dagster_run_id": context.run.run_id, "dagster_asset": "feature_group_ablation"}
        with tracker.run(f"ablation · {len(groups)} groups · {len(variants)} variants", tags) as parent:
            parent_id = parent.info.run_id
        for name, variant_groups in variants.items():
            if not variant_groups:
                continue
            columns = [i for i, f in enumerate(features) if f.group in variant_groups]
            chosen = [features[i] for i in columns]
            subset = lambda rows: type(rows)(rows.x[:, columns], rows.y, rows.user_id, rows.photo_id, rows.row_id)  # noqa: E731
            result = train_validation(subset(fit), subset(scored), chosen, params)
            results.append({"variant": name, "groups": len(variant_groups), "valid_auc": result.auc,
                            "best_iteration": result.best_iteration})
            context.log.info(f"ablation: {name}: validation AUC {result.auc:.4f}")
            with tracker.run(name, {**tags, "variant": name}, parent_run_id=parent_id):
                import mlflow

                mlflow.log_params({"variant": name, "feature_groups": ",".join(variant_groups), "fit_rows": len(fit.x)})
                mlflow.log_metrics({"valid_auc": result.auc, "best_iteration": result.best_iteration})
        from kuai_assets.ml import plots

        full_auc = results[0]["valid_auc"]
        for r in results:
            r["delta_vs_all"] = r["valid_auc"] - full_auc
        chart = plots.bar_png(
            {r["variant"]: r["valid_auc"] for r in results}, "Validation AUC by variant", "AUC", reference=full_auc
        )
        tracker.log_metrics_to(parent_id, {"all_groups_valid_auc": full_auc})
        tracker.log_files_to(
            parent_id, {"ablation.png": chart, "ablation.json": json.dumps(results, indent=2).encode()}
        )
    table = [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in results
    ]
    return dg.MaterializeResult(
        metadata={
            "variants": dg.MetadataValue.md(markdown_table(table)),
            "chart": image(chart, "ablation"),
            "all_groups_valid_auc": dg.MetadataValue.float(round(full_auc, 5)),
            "fit_rows_per_variant": dg.MetadataValue.int(len(fit.x)),
            "mlflow_parent_run_id": parent_id,
        }
    )
