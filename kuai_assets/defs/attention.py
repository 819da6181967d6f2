"""The second approach and the blend: the attention network, and its blend with the GBDT.

Thin wrappers: the logic is kuai_assets.ml.attention (history, network, training) and
kuai_assets.ml.blend; these assets add MLflow runs, the published stores and metadata.
"""

import json
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kuai_assets.defs import reuse
from kuai_assets.defs.factory import versioned_asset
from kuai_assets.defs.metadata import clear_failures, image, markdown_table
from kuai_assets.defs.model import LIGHTGBM_TAGS
from kuai_assets.defs.resources import TrackingResource, WorkspaceResource
from kuai_assets.features.matrix import MATRIX, read_features
from kuai_assets.ml import blend as blend_logic
from kuai_assets.ml.attention.history import HistoryLeakError
from kuai_assets.ml.attention.params import AttentionParams, params_dict
from kuai_assets.ml.blend import MIN_GAIN, MIN_GAIN_Z, BlendError, auc_by_weight_png, choose_blend
from kuai_assets.ml.gbdt import select_features
from kuai_assets.ml.tracking import PENDING, TEST_AUC_STATUS, MatrixSlice, log_datasets
from kuai_assets.storage import WorkDir, file_digest

GROUP = "model"
ATTENTION, BLEND = "attention_model", "blend"
REGISTERED_ATTENTION_MODEL = "kuai_click_model_attention"
VALIDATION_PREDICTIONS, TEST_PREDICTIONS = "validation_predictions.parquet", "test_predictions.parquet"


class AttentionConfig(dg.Config, AttentionParams):
    """The attention model's training settings in the Launchpad."""


def _failure(step: str, exc: Exception) -> dg.Failure:
    return dg.Failure(description=f"{step}: {exc}", allow_retries=False)


def _write_predictions(path: Path, columns: dict[str, np.ndarray]) -> None:
    pq.write_table(pa.table(columns), path)


def blend_check_dict(result) -> dict | None:
    """The validation blend that decided the refit (None with refit: always), without its curve."""
    return None if result.blend_check is None else result.blend_check.as_dict()


def attention_datasets(matrix: Path, digest: str, params: AttentionParams, rows: dict[str, int]) -> list[MatrixSlice]:
    """The training matrix's slices the network used (its keys, click and context groups' columns;
    the histories come from the same rows): validation fit rows and, when refitted, refit rows
    (training), validation scored rows (validation)."""
    context = select_features(read_features(matrix), list(params.context_groups))
    columns = {"user_id": "long", "photo_id": "long", **{f.name: "float" for f in context}, "click": "long"}
    detail = f"history_length={params.history_length},fit_targets_per_epoch={params.fit_targets_per_epoch},seed={params.seed}"
    slices = [
        MatrixSlice(matrix, digest, "validation", "fit", rows["validation_fit_rows"], columns, "training", detail),
        MatrixSlice(matrix, digest, "validation", "scored", rows["validation_scored_rows"], columns, "validation"),
    ]
    if rows["submission_fit_rows"]:  # refitted
        slices.append(MatrixSlice(matrix, digest, "submission", "fit", rows["submission_fit_rows"], columns, "training",
                                  detail))
    return slices


def blend_datasets(work: WorkDir, rows: int) -> list[MatrixSlice]:
    """What the blend's weight is chosen on (context validation): the validation scored rows'
    clicks in the training matrix and both models' validation predictions."""
    matrix = work.require_table(MATRIX)
    pieces = [MatrixSlice(matrix, file_digest(matrix), "validation", "scored", rows, {"row_id": "long", "click": "long"},
                          "validation")]
    for store in ("model", ATTENTION):
        path = work.require_store(store) / VALIDATION_PREDICTIONS
        pieces.append(MatrixSlice(path, file_digest(path), "validation", "scored", rows,
                                  {"row_id": "long", "p_click": "double"}, "validation", owner=store))
    return pieces


@versioned_asset(
    # the package (by name: its sources are read, not imported, so torch loads only when it trains),
    # and the blend rule deciding the refit
    logic=(*(f"kuai_assets.ml.attention.{name}" for name in ("history", "inputs", "network", "params", "training")),
           blend_logic),
    group_name=GROUP,
    kinds={"pytorch", "mlflow"},
    deps=[dg.AssetKey("training_matrix"), dg.AssetKey("model")] + [dg.AssetKey(name) for name in (
        "model_rows", "label_history", "pca_visual_features", "video_clusters", "raw_text", "raw_faces", "raw_interactions")],
    op_tags=LIGHTGBM_TAGS,  # uses every core, like the LightGBM steps: one of them at a time
)
def attention_model(
    context: dg.AssetExecutionContext, config: AttentionConfig, workspace: WorkspaceResource, tracking: TrackingResource
) -> dg.MaterializeResult:
    """A DIN-style network: the candidate photo attends over the user's history of labelled fit rows.

    A row's history is its user's fit rows of the same setup strictly earlier in time (the last
    `history_length`), each with the photo's visual vector, clusters, words, faces, duration and
    whether it was clicked; the leak check proves it on a sample before training (blocking).
    Early-stopped on the validation AUC per epoch. With `refit: when_blended` (default) it reads
    the GBDT's (`model`) validation predictions and refits on every train row only when the blend
    chosen on the validation rows gives the network weight; otherwise the best validation network
    scores the test (run.json `refitted: false`, said in the metadata and the MLflow run).
    Its MLflow run opens when the step starts and gets each epoch's validation AUC and training
    loss as the epoch ends; it ends FINISHED with the rest, or FAILED if the training fails.
    Publishes validation_predictions.parquet (row_id, p_click) and test_predictions.parquet
    (row_id, user_id, photo_id, p_click) only once MLflow has recorded the run.
    """
    import torch

    with clear_failures(ATTENTION, workspace.work_dir):
        work = workspace.work()
        tracker = tracking.tracker()
        tracker.check()
        params = config
        tags = {
            "dagster_run_id": context.run.run_id,
            "dagster_asset": ATTENTION,
            "model_config": "attention",
            TEST_AUC_STATUS: PENDING,  # until `evaluation` scores the test rows
            "code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "",
        }
        run_name = f"attention · history {params.history_length} · lr {params.learning_rate:g} · dim {params.item_dim}"
        gbdt_validation = None
        try:
            if config.refit == "when_blended":
                gbdt, _, _ = read_predictions(work, "model")
                gbdt_validation = (gbdt["row_id"], gbdt["p_click"])
        except ValueError as exc:
            raise _failure(ATTENTION, exc) from None
        key = attention_inputs_key(context, work, config)
        previous = reuse.previous(context, key, tracking.tracking_uri, work.store_path(ATTENTION))
        if previous is not None:
            alike, decision = refit_decided_alike(work, config, gbdt_validation)
            if alike:
                return previous.result(context, tracking.ui_url, refit_decision_now=dg.MetadataValue.text(decision))
            context.log.info(f"attention_model: nothing it learns from changed, but its refit would now be "
                             f"decided otherwise ({decision}): trained again")
        # the MLflow run is open (RUNNING) from here; each epoch's AUC and loss reach it as they come
        run_id = tracker.start_run(run_name, tags)
        context.log.info(f"attention_model: MLflow run {run_id} started")

        def epoch_to_mlflow(epoch: int, loss: float, auc: float) -> None:
            tracker.log_metrics_to(run_id, {"valid_auc_by_epoch": auc, "train_loss_by_epoch": loss}, step=epoch)

        with tracker.failed_on_error(run_id):
            try:
                from kuai_assets.ml.attention.training import train_attention_model  # torch, here only

                result = train_attention_model(work, config, context.log.info, gbdt_validation, on_epoch=epoch_to_mlflow)
            except (HistoryLeakError, ValueError) as exc:
                raise _failure(ATTENTION, exc) from None
        from kuai_assets.ml import plots

        figure = plots.line_png(result.auc_by_epoch, "Validation AUC by epoch", "epoch", "AUC", mark=result.best_epoch)
        digest = file_digest(work.require_table(MATRIX))
        tags["refit_decision"] = result.refit_decision
        started = time.time()
        with tracker.run(run_name, tags, run_id=run_id) as run:
            import mlflow
            import mlflow.pytorch
            from mlflow.models import infer_signature

            mlflow.log_params({**params_dict(params), "refit_epochs": result.refit_epochs, "device_used": result.device,
                               "training_data_digest": digest, **result.rows})
            mlflow.log_metrics({"valid_auc": result.valid_auc, "best_epoch": result.best_epoch,
                                "refitted": int(result.refitted),
                                **{f"seconds_{k}": v for k, v in result.seconds.items()}})
            log_datasets(attention_datasets(work.require_table(MATRIX), digest, params, result.rows))
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "auc_by_epoch.png").write_bytes(figure)
                mlflow.log_artifact(str(Path(tmp) / "auc_by_epoch.png"), artifact_path="figures")
            mlflow.log_dict({"shape": result.shape.as_dict(), "history_checks": [vars(c) for c in result.history_checks],
                             "refit_decision": result.refit_decision,
                             "blend_check": blend_check_dict(result)}, "network.json")
            with torch.no_grad():
                output = result.model(torch.from_numpy(result.example)).numpy()
            logged = mlflow.pytorch.log_model(
                result.model, name="model",
                signature=infer_signature(result.example, output), input_example=result.example,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
            run_id, experiment_id = run.info.run_id, run.info.experiment_id
            # through the client, so that MLflow prints nothing into the run's log; alias @candidate
            tracker.register_candidate(run_id, logged, REGISTERED_ATTENTION_MODEL)
        context.log.info(f"attention_model: recorded in MLflow in {time.time() - started:.0f} s")
        run_info = {
            "mlflow_run_id": run_id,
            "mlflow_experiment_id": experiment_id,
            "mlflow_run_url": tracker.run_url(run_id, experiment_id, tracking.ui_url),
            "valid_auc": result.valid_auc,
            "best_epoch": result.best_epoch,
            "refit_epochs": result.refit_epochs,
            "refitted": result.refitted,
            "min_blend_gain": config.min_blend_gain,
            "refit_decision": result.refit_decision,
            "blend_check": blend_check_dict(result),
            "auc_by_epoch": result.auc_by_epoch,
            "seconds": result.seconds,
            "rows": result.rows,
            "training_data_digest": digest,
            "config": "attention",
        }
        with work.writing_store(ATTENTION) as out:
            _write_predictions(out / VALIDATION_PREDICTIONS,
                               {"row_id": result.validation.row_id, "user_id": result.validation.user_id,
                                "photo_id": result.validation.photo_id, "p_click": result.validation.p_click})
            _write_predictions(out / TEST_PREDICTIONS, {"row_id": result.test.row_id, "user_id": result.test.user_id,
                                                        "photo_id": result.test.photo_id, "p_click": result.test.p_click})
            torch.save(result.model.state_dict(), out / "submission_network.pt")
            (out / "network.json").write_text(json.dumps(result.shape.as_dict(), indent=2))
            (out / "run.json").write_text(json.dumps(run_info, indent=2))
    return dg.MaterializeResult(
        metadata={
            "valid_auc": dg.MetadataValue.float(result.valid_auc),
            "best_epoch": dg.MetadataValue.int(result.best_epoch),
            "refit_epochs": dg.MetadataValue.int(result.refit_epochs),
            "refitted": dg.MetadataValue.bool(result.refitted),
            "refit_decision": dg.MetadataValue.text(result.refit_decision),
            "auc_by_epoch": dg.MetadataValue.md(markdown_table(
                [{"epoch": i, "valid_auc": round(a, 4)} for i, a in enumerate(result.auc_by_epoch, start=1)])),
            "auc_chart": image(figure, "validation AUC by epoch"),
            "history_checks": dg.MetadataValue.md(markdown_table([vars(c) for c in result.history_checks])),
            "rows": dg.MetadataValue.json(result.rows),
            "seconds": dg.MetadataValue.json(result.seconds),
            "train_seconds": dg.MetadataValue.float(round(sum(result.seconds.values()), 1)),
            "device": result.device,
            "mlflow_run_id": run_id,
            "mlflow_run": dg.MetadataValue.url(run_info["mlflow_run_url"]),
            **reuse.recorded(key),
        }
    )


def attention_inputs_key(context: dg.AssetExecutionContext, work: WorkDir, config: AttentionConfig) -> str | None:
    """The network's inputs key (kuai_assets.defs.reuse): its context groups' columns and the rows
    in the training matrix, the content of every other table it reads, its settings and code. The
    GBDT's predictions, which decide its refit, are not in it: `refit_decided_alike` asks again."""
    from kuai_assets.ml.attention.history import HISTORY_TABLES
    from kuai_assets.ml.attention.inputs import PHOTO_TABLES
    from kuai_assets.storage import file_digests

    files = {name: work.require_table(name) for name in sorted(set(PHOTO_TABLES) | set(HISTORY_TABLES))}
    return reuse.inputs_key(context, reuse.matrix_inputs(work.require_table(MATRIX), list(config.context_groups)),
                            config.model_dump(), tables=file_digests(files),
                            libraries=reuse.library_versions("torch", "numpy", "duckdb"))


def refit_decided_alike(work: WorkDir, config: AttentionConfig, gbdt_validation) -> tuple[bool, str]:
    """Whether the published network's refit would be decided the same way against the GBDT's
    current validation predictions (`gbdt_validation`), and the decision now."""
    from kuai_assets.ml.attention.training import Predictions, refit_decision

    network, _, info = read_predictions(work, ATTENTION)
    label_rows, clicks = validation_labels(work)
    try:
        at = blend_logic.align(network["row_id"], label_rows, "the published network's validation rows and the matrix's")
    except BlendError as exc:
        return False, str(exc)
    validation = Predictions(network["row_id"], network["p_click"], network["user_id"], network["photo_id"], clicks[at])
    refitted, decision, _ = refit_decision(config, validation, gbdt_validation)
    return refitted == bool(info.get("refitted", True)), decision


# -- the blend ------------------------------------------------------------------------------------


def read_predictions(work: WorkDir, store: str) -> tuple[dict, dict, dict]:
    """A model store's validation and test predictions (columns as numpy arrays) and run.json."""
    folder = work.require_store(store)
    missing = [name for name in (VALIDATION_PREDICTIONS, TEST_PREDICTIONS, "run.json") if not (folder / name).is_file()]
    if missing:
        raise BlendError(f"the `{store}` store at {folder} lacks {', '.join(missing)}; re-materialize `{store}`")

    def read(name: str) -> dict[str, np.ndarray]:
        table = pq.read_table(folder / name)
        lacking = [c for c in ("row_id", "user_id", "photo_id", "p_click") if c not in table.column_names]
        if lacking:
            raise BlendError(f"{folder / name} lacks column(s) {', '.join(lacking)} (an older `{store}`); "
                             f"re-materialize `{store}`")
        return {column: table.column(column).to_numpy() for column in table.column_names}

    return read(VALIDATION_PREDICTIONS), read(TEST_PREDICTIONS), json.loads((folder / "run.json").read_text())


def validation_labels(work: WorkDir) -> tuple[np.ndarray, np.ndarray]:
    con = work.connect([MATRIX])
    try:
        table = con.execute(
            f"select row_id, click from {MATRIX} where setup = 'validation' and role = 'scored'"
        ).fetchnumpy()
    finally:
        con.close()
    return np.asarray(table["row_id"], dtype=np.int64), np.asarray(table["click"], dtype=np.float64)


def require_refitted_when_used(gbdt_weight: float, attention_info: dict) -> None:
    """Refuse to blend test predictions of a network that was not refitted on the train rows: it
    decided against a refit because the blend did not use it then (an older GBDT)."""
    if gbdt_weight < 1 and not attention_info.get("refitted", True):
        raise BlendError(
            f"the blend now gives the attention network weight {1 - gbdt_weight:.2f}, but `attention_model` was not "
            f"refitted on the train rows ({attention_info.get('refit_decision')}): the GBDT changed since; "
            "re-materialize `attention_model`"
        )


@versioned_asset(logic=(blend_logic,), group_name=GROUP, kinds={"python", "mlflow"}, deps=[dg.AssetKey("model"), attention_model, dg.AssetKey("training_matrix")])
def blend(context: dg.AssetExecutionContext, workspace: WorkspaceResource, tracking: TrackingResource) -> dg.MaterializeResult:
    """The GBDT (`model`) and the attention network blended by a logit average whose weight is
    chosen on the validation rows' AUC alone (kuai_assets.ml.blend); the test rows get that weight.
    The blend must add `min_blend_gain` (the attention run's setting) and two standard errors over
    the better model alone, else the weight is that model's alone.

    Publishes test_predictions.parquet (row_id, user_id, photo_id, p_click) and the blended
    validation_predictions.parquet; its MLflow run holds the weight and the three validation AUCs.
    """
    with clear_failures(BLEND, workspace.work_dir):
        work = workspace.work()
        tracker = tracking.tracker()
        tracker.check()
        try:
            gbdt_valid, gbdt_test, gbdt_info = read_predictions(work, "model")
            attention_valid, attention_test, attention_info = read_predictions(work, ATTENTION)
            min_gain = attention_info.get("min_blend_gain", MIN_GAIN)  # the bar the network's refit was decided by
            label_row_id, label = validation_labels(work)
            result = choose_blend(
                gbdt_valid["row_id"], gbdt_valid["p_click"], attention_valid["row_id"], attention_valid["p_click"],
                label_row_id, label,
                gbdt_test["row_id"], gbdt_test["p_click"], attention_test["row_id"], attention_test["p_click"],
                min_gain=min_gain,
            )
            require_refitted_when_used(result.weight, attention_info)
        except BlendError as exc:
            raise _failure(BLEND, exc) from None
        figure = auc_by_weight_png(result.auc_by_weight, result.weight)
        summary = [
            {"model": "GBDT (model)", "weight": round(result.weight, 2), "valid_auc": round(result.valid_auc_a, 4)},
            {"model": "attention (attention_model)", "weight": round(1 - result.weight, 2),
             "valid_auc": round(result.valid_auc_b, 4)},
            {"model": "blend", "weight": "", "valid_auc": round(result.valid_auc_blend, 4)},
        ]
        if not attention_info.get("refitted", True):
            summary[1]["model"] += ", not refitted"
        tags = {"dagster_run_id": context.run.run_id, "dagster_asset": BLEND, "model_config": "blend", TEST_AUC_STATUS: PENDING,
                "gbdt_run_id": gbdt_info["mlflow_run_id"], "attention_run_id": attention_info["mlflow_run_id"]}
        with tracker.run(f"blend · GBDT weight {result.weight:.2f}", tags) as run:
            import mlflow

            mlflow.log_params({"method": "logit average", "gbdt_weight": result.weight,
                               "attention_weight": round(1 - result.weight, 6),
                               "validation_rows": len(label_row_id), "min_gain": min_gain, "min_gain_z": MIN_GAIN_Z})
            mlflow.set_tag("blend_decision", result.decision)
            mlflow.log_metrics({"valid_auc": result.valid_auc_blend, "valid_auc_gbdt": result.valid_auc_a,
                                "valid_auc_attention": result.valid_auc_b, "gbdt_weight": result.weight,
                                "best_grid_weight": result.best_grid_weight, "valid_gain": result.gain,
                                **({"valid_gain_se": result.gain_se} if np.isfinite(result.gain_se) else {})})
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "auc_by_weight.png").write_bytes(figure)
                mlflow.log_artifact(str(Path(tmp) / "auc_by_weight.png"), artifact_path="figures")
            mlflow.log_dict({"auc_by_weight": result.auc_by_weight}, "auc_by_weight.json")
            log_datasets(blend_datasets(work, len(label_row_id)))
            run_id, experiment_id = run.info.run_id, run.info.experiment_id
        run_info = {
            "mlflow_run_id": run_id,
            "mlflow_run_url": tracker.run_url(run_id, experiment_id, tracking.ui_url),
            "gbdt_weight": result.weight,
            "decision": result.decision,
            "valid_auc": result.valid_auc_blend,
            "valid_auc_gbdt": result.valid_auc_a,
            "valid_auc_attention": result.valid_auc_b,
            "config": "blend",
        }
        with work.writing_store(BLEND) as out:
            _write_predictions(out / VALIDATION_PREDICTIONS,
                               {"row_id": gbdt_valid["row_id"], "user_id": gbdt_valid["user_id"],
                                "photo_id": gbdt_valid["photo_id"], "p_click": result.validation_p_click})
            _write_predictions(out / TEST_PREDICTIONS, {"row_id": result.test_row_id, "user_id": gbdt_test["user_id"],
                                                        "photo_id": gbdt_test["photo_id"], "p_click": result.test_p_click})
            (out / "run.json").write_text(json.dumps(run_info, indent=2))
    context.log.info(
        f"blend: {result.decision}; GBDT weight {result.weight:.2f}; validation AUC GBDT {result.valid_auc_a:.4f}, "
        f"attention {result.valid_auc_b:.4f}, blend {result.valid_auc_blend:.4f}"
    )
    return dg.MaterializeResult(
        metadata={
            "side_by_side": dg.MetadataValue.md(markdown_table(summary)),
            "gbdt_weight": dg.MetadataValue.float(result.weight),
            "decision": dg.MetadataValue.text(result.decision),
            "valid_auc": dg.MetadataValue.float(result.valid_auc_blend),
            "valid_auc_gbdt": dg.MetadataValue.float(result.valid_auc_a),
            "valid_auc_attention": dg.MetadataValue.float(result.valid_auc_b),
            "auc_by_weight": image(figure, "validation AUC by weight"),
            "mlflow_run_id": run_id,
            "mlflow_run": dg.MetadataValue.url(run_info["mlflow_run_url"]),
        }
    )
