"""Model: the training matrix, LightGBM models tracked in MLflow, the submission and its evaluation."""


import json

import dagster as dg
import pyarrow.parquet as pq
from pydantic import Field

from kuai_assets.defs import reuse
from kuai_assets.defs.factory import versioned_asset
from kuai_assets.defs.metadata import clear_failures, image, markdown_table, table_metadata
from kuai_assets.defs.resources import TrackingResource, WorkspaceResource
from kuai_assets.features.catalog import CatalogError, feature_groups, load_catalog
from kuai_assets.features.matrix import MATRIX, Feature, build_training_matrix, read_features
from kuai_assets.formats import layout
from kuai_assets.formats.submission import validate_submission, write_submission
from kuai_assets.ml.ablation import run_ablation, variants
from kuai_assets.ml.evaluation import score_predictions
from kuai_assets.ml.gbdt import (
    GbdtTraining,
    gbdt_run_name,
    gbdt_run_tags,
    log_validation,
    publish_gbdt,
    record_gbdt,
    score_test_rows,
    select_features,
    train_gbdt,
)
from kuai_assets.ml.tracking import REGISTERED_MODEL, run_link
from kuai_assets.ml.training import RowSample, load_rows
from kuai_assets.storage import atomic_file

GROUP = "model"
# LightGBM uses every core: steps with this tag run one at a time (see definitions.EXECUTOR)
LIGHTGBM_TAGS = {"kuai/cpu": "lightgbm"}
FULL, BASELINE = "full", "baseline"
BASELINE_GROUPS = ["published_baseline"]


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


@versioned_asset(
    group_name=GROUP,
    kinds={"duckdb"},
    deps=[dg.AssetKey("model_rows"), dg.AssetKey("raw_interactions"), dg.AssetKey("video_clusters")]
    + all_feature_group_keys(),
)
def training_matrix(
    context: dg.AssetExecutionContext, config: TrainingMatrixConfig, workspace: WorkspaceResource
) -> dg.MaterializeResult:
    """model_rows joined to every feature group by the group's declared grain.

    One row per (setup, row): setup 'validation' (fit rows before the cut, scored cold-start rows
    after it) and setup 'submission' (all train rows, scored test rows). Groups at (k, cluster)
    grain join once per k through the photo's cluster, suffixed `_k<k>`. The feature columns, their
    group and kind travel in the Parquet metadata; the models choose groups from there. A group
    whose table, grain, columns and rows are unchanged since the previous matrix is copied from it,
    not joined again (`groups_kept`): after an edit of one group, only that group is joined.
    """
    with clear_failures("training_matrix", workspace.work_dir):
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
            "groups_kept": dg.MetadataValue.json(result["kept_groups"]),
            "seconds": dg.MetadataValue.float(result["seconds"]),
        }
    )


# -- models --------------------------------------------------------------------------------------


class GbdtConfig(dg.Config, GbdtTraining):
    """The GBDT's training settings in the Launchpad: LightGBM's parameters, sampling, refit."""


class ModelConfig(GbdtConfig):
    feature_groups: list[str] = Field(
        default=default_feature_groups(),
        description="Feature groups the model uses: file names in dbt_like_sql/features/ and the modules of kuai_assets/groups/.",
    )


def fit_record_publish(
    context: dg.AssetExecutionContext,
    workspace: WorkspaceResource,
    tracking: TrackingResource,
    store_name: str,
    config_name: str,
    groups: list[str],
    training: GbdtTraining,
    registered_model: str,
) -> dg.MaterializeResult:
    """Train (ml.gbdt), record in MLflow, then publish the model store (only once recorded)."""
    work, tracker = workspace.work(), tracking.tracker()
    with clear_failures(store_name, workspace.work_dir):
        tracker.check()  # an unwritable MLflow store fails here, not after the training
        matrix = work.require_table(MATRIX)
        key = reuse.inputs_key(context, reuse.matrix_inputs(matrix, groups),
                               {name: getattr(training, name) for name in GbdtTraining.model_fields},
                               libraries=reuse.library_versions("lightgbm", "numpy", "duckdb"))
        previous = reuse.previous(context, key, tracking.tracking_uri, work.store_path(store_name))
        if previous is not None:
            return previous.result(context, tracking.ui_url)
        tags = {
            "dagster_run_id": context.run.run_id,
            "dagster_asset": store_name,
            "code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "",
        }
        # the MLflow run is open (RUNNING) from here and holds the validation AUC before the refit
        run_id = tracker.start_run(gbdt_run_name(config_name, groups, training), gbdt_run_tags(tags, config_name, groups))
        context.log.info(f"{store_name}: MLflow run {run_id} started")
        before = previous_validation_auc(context)

        def validated(validation) -> None:
            log_validation(tracker, run_id, validation)
            if before is not None:  # the figure a person editing a feature waits for, before the refit
                context.log.info(f"{store_name}: {validation.auc - before[0]:+.4f} validation AUC against the previous "
                                 f"{store_name} ({before[0]:.4f}, {before[1]})")

        with tracker.failed_on_error(run_id):
            result = train_gbdt(matrix, groups, training, context.log.info, store_name, on_validated=validated)
        info = record_gbdt(tracker, result, config_name, tags, registered_model, tracking.ui_url, run_id=run_id)
        context.log.info(f"{store_name}: recorded in MLflow run {info['mlflow_run_id']}")
        publish_gbdt(work, store_name, result, info)
    return dg.MaterializeResult(metadata={**model_metadata(result, info), **reuse.recorded(key)})


def previous_validation_auc(context: dg.AssetExecutionContext) -> tuple[float, str] | None:
    """The validation AUC of the asset's latest materialization and where it came from ("Dagster
    run 885e9eb6, 2026-12-05 20:44:53"), if it recorded one."""
    event = context.instance.get_latest_materialization_event(context.asset_key)
    entry = event.asset_materialization.metadata.get("valid_auc") if event and event.asset_materialization else None
    if entry is None or not isinstance(entry.value, float):
        return None
    return entry.value, f"Dagster run {event.run_id[:8]}, {reuse.materialized_at(event)}"


def model_metadata(result, info: dict) -> dict:
    validation = result.validation
    figures = result.figures()
    return {
        "valid_auc": dg.MetadataValue.float(validation.auc),
        "best_iteration": dg.MetadataValue.int(validation.best_iteration),
        "refit_rounds": dg.MetadataValue.int(info["refit_rounds"]),
        "fit_rows": dg.MetadataValue.int(validation.fit_rows),
        "validation_rows": dg.MetadataValue.int(validation.scored_rows),
        "train_seconds": dg.MetadataValue.float(validation.seconds),
        "mlflow_run_id": info["mlflow_run_id"],
        "mlflow_run": dg.MetadataValue.url(info["mlflow_run_url"]),
        "registered_version": f"{info['registered_model']} v{info['registered_version']} @candidate",
        "feature_groups": dg.MetadataValue.json(info["feature_groups"]),
        "features": dg.MetadataValue.int(len(info["features"])),
        "importance_by_group": dg.MetadataValue.md(
            markdown_table([{"group": g, "gain_share": round(v, 4)} for g, v in result.group_importance.items()])
        ),
        "roc_curve": image(figures["roc_validation.png"], "ROC"),
        "importance_chart": image(figures["importance_by_group.png"], "importance by group"),
        "auc_by_iteration": image(figures["auc_by_iteration.png"], "AUC by iteration"),
        "training_data_digest": info["training_data_digest"],
    }


@versioned_asset(
    group_name=GROUP,
    kinds={"lightgbm", "mlflow"},
    deps=[training_matrix],
    # first of the LightGBM steps, so that the submission (one core) runs beside the baseline's training
    op_tags={**LIGHTGBM_TAGS, "dagster/priority": "1"},
)
def model(
    context: dg.AssetExecutionContext, config: ModelConfig, workspace: WorkspaceResource, tracking: TrackingResource
) -> dg.MaterializeResult:
    """The full LightGBM click model over the enabled feature groups, tracked in MLflow.

    Validation mirrors the test: fitted on train rows before the cut, early-stopped on the AUC of
    the rows after it whose photo was never shown before (cold start). The submission model is
    then refitted on every train row. Its MLflow run opens when the step starts and holds the
    validation AUC and AUC per iteration before the refit; then params, the model (registered as
    kuai_click_model), ROC and importance-by-group figures and the training data digest. The model
    is published only once MLflow has recorded it.
    """
    return fit_record_publish(
        context, workspace, tracking, "model", FULL, list(config.feature_groups), config, REGISTERED_MODEL
    )


@versioned_asset(group_name=GROUP, kinds={"lightgbm", "mlflow"}, deps=[training_matrix], op_tags=LIGHTGBM_TAGS)
def baseline_model(
    context: dg.AssetExecutionContext, config: GbdtConfig, workspace: WorkspaceResource, tracking: TrackingResource
) -> dg.MaterializeResult:
    """The published top-10 recipe as a baseline: LightGBM on the `published_baseline` group only.

    Same validation, refit and MLflow tracking as `model` (registered as kuai_click_model_baseline),
    so the two sit side by side in one experiment.
    """
    return fit_record_publish(
        context, workspace, tracking, "baseline_model", BASELINE, BASELINE_GROUPS, config, f"{REGISTERED_MODEL}_baseline"
    )


# -- submission and evaluation -------------------------------------------------------------------


SUBMISSION_SOURCES = ("blend", "model", "attention_model")
SUBMISSION_SOURCE_FILE = "submission_source.json"  # beside submission.txt: whose predictions it holds


class SubmissionConfig(dg.Config):
    source: str = Field(
        default="blend",
        description="Whose test predictions are submitted: blend (the GBDT and the attention network), "
        "model (the GBDT alone) or attention_model (the network alone: give it refit: always, or it is refitted "
        "only when the blend uses it).",
    )


@versioned_asset(group_name=GROUP, kinds={"lightgbm", "python"}, deps=[model, training_matrix, dg.AssetKey("blend")])
def submission(
    context: dg.AssetExecutionContext, config: SubmissionConfig, workspace: WorkspaceResource
) -> dg.MaterializeResult:
    """The competition file at $KUAI_WORK_DIR/submission.txt: `user_id \\t photo_id \\t probability`.

    From `source` (default the blend): for `model`, scores the test rows of the training matrix
    with the recorded submission model; otherwise writes the store's test_predictions.parquet.
    Six decimals per row; checks the keys are exactly those of test_interaction.txt. Records the
    source beside the file (submission_source.json) for `evaluation`.
    """
    with clear_failures("submission", workspace.work_dir):
        if config.source not in SUBMISSION_SOURCES:
            raise CatalogError(f"submission source {config.source!r} is not one of {', '.join(SUBMISSION_SOURCES)}")
        work = workspace.work()
        path = work.submission_file
        if config.source == "model":
            test, probability, info = score_test_rows(work, "model")
            write_submission(path, test.user_id, test.photo_id, probability)
        else:
            store = work.require_store(config.source)
            info = json.loads((store / "run.json").read_text())
            if not info.get("refitted", True):
                context.log.warning(
                    f"submission: {config.source}'s network was not refitted on every train row "
                    f"({info.get('refit_decision')}); for the network alone set its config refit: always"
                )
            predictions = pq.read_table(store / "test_predictions.parquet")
            probability = predictions.column("p_click").to_numpy()
            write_submission(
                path, predictions.column("user_id").to_numpy(), predictions.column("photo_id").to_numpy(), probability
            )
        rows = validate_submission(path, layout.interaction_file(workspace.data_root(), "test"))
        with atomic_file(path.with_name(SUBMISSION_SOURCE_FILE)) as tmp:
            tmp.write_text(json.dumps({"source": config.source, "mlflow_run_id": info["mlflow_run_id"]}))
    with open(path) as f:
        head = [next(f).rstrip("\n") for _ in range(min(5, rows))]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(rows),
            "path": dg.MetadataValue.path(str(path)),
            "source": config.source,
            "mean_probability": dg.MetadataValue.float(round(float(probability.mean()), 5)),
            "mlflow_run_id": info["mlflow_run_id"],
            "preview": dg.MetadataValue.md("```\n" + "\n".join(head) + "\n```"),
            "validated_against": dg.MetadataValue.path(str(layout.interaction_file(workspace.data_root(), "test"))),
        }
    )


# each model's store, as evaluation names it
EVALUATED_STORES = (("model", "full (GBDT)"), ("attention_model", "attention"), ("blend", "blend"),
                    ("baseline_model", "baseline"))


@versioned_asset(
    group_name=GROUP,
    kinds={"python", "mlflow"},
    # it scores every model's store, so it follows any of them (a CLI retrain of `model` included)
    deps=[submission, baseline_model, model, dg.AssetKey("attention_model"), dg.AssetKey("blend")],
    automation_condition=dg.AutomationCondition.eager(),
)
def evaluation(
    context: dg.AssetExecutionContext, workspace: WorkspaceResource, tracking: TrackingResource
) -> dg.MaterializeResult:
    """AUC of the submission and of every model on the test rows, against a ground-truth file.

    Only when the dataset has one (the synthetic generator writes ground_truth/ beside train/ and
    test/). `test_auc` is the submission file's; each model (GBDT, attention network, blend,
    baseline: those whose store exists) is scored from its own test predictions and its test_auc
    added to its own MLflow run. Reports the oracle AUC (of the true click probabilities), the
    closure of the oracle gap (AUC - 0.5) / (oracle - 0.5), and how far the submitted model's
    validation AUC was from its test AUC. Each scored run's `test_auc_status` tag (set to
    "pending" when the model was recorded) becomes "scored" ("no ground truth" without one).
    Eager: with the daemon running (`kuai ui`), it follows a retrain of any model it scores.
    """
    with clear_failures("evaluation", workspace.work_dir):
        work = workspace.work()
        truth = workspace.ground_truth_path()
        tracker = tracking.tracker()
        source_file = work.submission_file.with_name(SUBMISSION_SOURCE_FILE)
        submitted = json.loads(source_file.read_text())["source"] if source_file.is_file() else "model"
        if truth is None:
            context.log.warning("No ground truth for this dataset: nothing to evaluate against.")
            for store, _ in EVALUATED_STORES:
                if work.store_path(store).exists():
                    run_id = json.loads((work.require_store(store) / "run.json").read_text())["mlflow_run_id"]
                    tracker.record_test_scores(run_id, None)
            # what was submitted, and its validation AUC: the figure to compare runs by without one
            submitted_info = json.loads((work.require_store(submitted) / "run.json").read_text())
            return dg.MaterializeResult(metadata={
                "ground_truth": "none (real data: submit the file to score it)",
                "submitted": submitted,
                "valid_auc": dg.MetadataValue.float(submitted_info["valid_auc"]),
            })
        submitted_score = score_predictions(truth, submission_file=work.submission_file)
        scores, infos, summary = {}, {}, []
        for store, label in EVALUATED_STORES:
            if store not in ("model", "baseline_model") and not work.store_path(store).exists():
                continue
            folder = work.require_store(store)
            infos[store] = json.loads((folder / "run.json").read_text())
            scores[store] = score = score_predictions(truth, predictions=folder / "test_predictions.parquet")
            tracker.record_test_scores(
                infos[store]["mlflow_run_id"],
                {"test_auc": score.auc, "oracle_auc": score.oracle_auc, "oracle_gap_closure": score.closure},
            )
            summary.append({"model": label + (" (submitted)" if store == submitted else ""),
                            "valid_auc": round(infos[store]["valid_auc"], 4), "test_auc": round(score.auc, 4),
                            "gap_closure": round(score.closure, 3)})
        oracle_auc = submitted_score.oracle_auc
        summary.append({"model": "oracle (true p_click)", "valid_auc": "", "test_auc": round(oracle_auc, 4), "gap_closure": 1.0})
        submitted_info = infos.get(submitted, infos["model"])
    test_auc, closure = submitted_score.auc, submitted_score.closure
    model_auc, baseline_auc = scores["model"].auc, scores["baseline_model"].auc
    context.log.info(
        f"evaluation: submission ({submitted}) test AUC {test_auc:.4f} (validation {submitted_info['valid_auc']:.4f}), "
        f"GBDT {model_auc:.4f}, baseline {baseline_auc:.4f}, oracle {oracle_auc:.4f}, oracle-gap closure {closure:.3f}"
    )
    others = {f"{store}_test_auc": dg.MetadataValue.float(scores[store].auc)
              for store in ("attention_model", "blend") if store in scores}
    return dg.MaterializeResult(
        metadata={
            "test_auc": dg.MetadataValue.float(test_auc),
            "submitted": submitted,
            "valid_auc": dg.MetadataValue.float(submitted_info["valid_auc"]),
            "valid_minus_test_auc": dg.MetadataValue.float(submitted_info["valid_auc"] - test_auc),
            "model_test_auc": dg.MetadataValue.float(model_auc),
            **others,
            "baseline_test_auc": dg.MetadataValue.float(baseline_auc),
            "full_minus_baseline_auc": dg.MetadataValue.float(model_auc - baseline_auc),
            "oracle_auc": dg.MetadataValue.float(oracle_auc),
            "oracle_gap_closure": dg.MetadataValue.float(closure),
            "test_rows": dg.MetadataValue.int(submitted_score.rows),
            "summary": dg.MetadataValue.md(markdown_table(summary)),
            "ground_truth": dg.MetadataValue.path(str(truth)),
            "mlflow_run": dg.MetadataValue.url(run_link(submitted_info["mlflow_run_url"], tracking.ui_url)),
        }
    )


# -- ablation ------------------------------------------------------------------------------------


class AblationConfig(GbdtConfig):
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


@versioned_asset(
    group_name=GROUP,
    kinds={"lightgbm", "mlflow"},
    deps=[training_matrix],
    # an analysis, and the longest step: in a run that also makes the submission and its
    # evaluation, it runs after them
    op_tags={**LIGHTGBM_TAGS, "dagster/priority": "-1"},
)
def feature_group_ablation(
    context: dg.AssetExecutionContext, config: AblationConfig, workspace: WorkspaceResource, tracking: TrackingResource
) -> dg.MaterializeResult:
    """Which feature group carries the gain: validation AUC with each group removed, and with each
    group alone on top of the user-behaviour group. One MLflow run per variant, nested under one
    parent; a table and a bar chart here. In a `kuai run` (run tag kuai/reuse: unchanged) a variant
    whose inputs did not change keeps its result (`reuse.VariantKeeper`).
    """
    import mlflow

    from kuai_assets.ml import plots

    with clear_failures("feature_group_ablation", workspace.work_dir):
        work, tracker = workspace.work(), tracking.tracker()
        matrix = work.require_table(MATRIX)
        groups = list(config.feature_groups)
        features = select_features(read_features(matrix), groups)
        fit = load_rows(matrix, features, "validation", "fit", config.sample())
        scored = load_rows(matrix, features, "validation", "scored", RowSample(1.0, config.max_validation_rows, config.seed))
        keeper = reuse.VariantKeeper(context, matrix, features, groups, config.model_dump())
        tags = {"dagster_run_id": context.run.run_id, "dagster_asset": "feature_group_ablation"}
        with tracker.run(f"ablation · {len(groups)} groups", tags) as parent:
            parent_id = parent.info.run_id

        count = len(variants(groups, config.base_group))
        done: list = []
        mlflow_run_ids: dict[str, str] = {}

        def record(result) -> None:
            done.append(result)
            # each variant at DEBUG (the UI's log); at INFO (kuai run's console) the progress every 10
            line = f"ablation: {result.variant}: validation AUC {result.valid_auc:.4f}" + (" (kept)" if result.kept_from else "")
            if len(done) % 10 == 0 or len(done) == count:
                context.log.info(f"{line} ({len(done)} of {count} variants)")
            else:
                context.log.debug(line)
            # a kept variant has its run here too, tagged with the run that trained it: the parent
            # holds every variant either way
            kept = {"kept_from_mlflow_run": result.kept_from} if result.kept_from else {}
            with tracker.run(result.variant, {**tags, "variant": result.variant, **kept}, parent_run_id=parent_id) as run:
                mlflow.log_params({"variant": result.variant, "feature_groups": ",".join(result.groups), "fit_rows": len(fit.x)})
                mlflow.log_metrics({"valid_auc": result.valid_auc, "best_iteration": result.best_iteration})
                mlflow_run_ids[result.variant] = run.info.run_id

        # interrupted (Ctrl-C after the evaluation) or failed: the parent, which holds the variants
        # done so far and no table, is marked FAILED
        with tracker.failed_on_error(parent_id):
            results = run_ablation(fit, scored, features, groups, config.base_group, config, record, keeper.keep)
        n_kept = sum(1 for r in results if r.kept_from)
        if n_kept:
            context.log.info(
                f"ablation: kept {n_kept} of {count} variants, whose groups' columns, rows and settings are unchanged "
                f"since {keeper.since}; trained {count - n_kept}"
            )
        full_auc = results[0].valid_auc
        table = [
            {"variant": r.variant, "groups": len(r.groups), "valid_auc": r.valid_auc, "best_iteration": r.best_iteration,
             "delta_vs_all": r.valid_auc - full_auc, "kept": "kept" if r.kept_from else ""}
            for r in results
        ]
        chart = plots.bar_png({r.variant: r.valid_auc for r in results}, "Validation AUC by variant", "AUC", reference=full_auc)
        tracker.log_metrics_to(parent_id, {"all_groups_valid_auc": full_auc})
        tracker.log_files_to(parent_id, {"ablation.png": chart, "ablation.json": json.dumps(table, indent=2).encode()})
    return dg.MaterializeResult(
        metadata={
            "variants": dg.MetadataValue.md(
                markdown_table([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in table])
            ),
            "chart": image(chart, "ablation"),
            "all_groups_valid_auc": dg.MetadataValue.float(full_auc),
            "fit_rows_per_variant": dg.MetadataValue.int(len(fit.x)),
            "variants_kept": dg.MetadataValue.int(n_kept),
            "mlflow_parent_run_id": parent_id,
            **keeper.recorded(results, mlflow_run_ids),
        }
    )
