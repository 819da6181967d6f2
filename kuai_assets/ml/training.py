"""LightGBM on the training matrix: validate on cold-start photos, then refit for submission.

Plain functions over the matrix file; the Dagster assets wrap them with tracking and metadata.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
from pydantic import BaseModel, Field

from kuai_assets.features.matrix import Feature
from kuai_assets.ml.metrics import roc_auc
from kuai_assets.storage import check_identifier, sql_string


class LightGbmParams(BaseModel):
    """LightGBM's parameters, with defaults sized for a 2-core machine (the demo model trains in a
    few minutes). BENCHMARKS.md, "LightGBM's parameters across worlds" (`benchmarks/gbdt_params.py`),
    has each default against one-change variants on ten datasets from four generators: 15 leaves
    gained on nine of them (7 lost); a lower rate gains as much at 1.7x the time; every row adds little."""

    learning_rate: float = Field(default=0.1, description="LightGBM shrinkage per round.")
    num_leaves: int = Field(default=15, description="Leaves per tree.")
    min_data_in_leaf: int = Field(default=200, description="Fewest rows in a leaf.")
    feature_fraction: float = Field(default=0.7, description="Share of features per tree.")
    bagging_fraction: float = Field(default=0.5, description="Share of rows per tree.")
    bagging_freq: int = Field(default=1, description="Rows are resampled every this many rounds.")
    lambda_l2: float = Field(default=10.0, description="L2 regularisation of leaf values.")
    max_bin: int = Field(default=63, description="Histogram bins per feature.")
    max_rounds: int = Field(default=1000, description="Most boosting rounds.")
    early_stopping_rounds: int = Field(
        default=30, description="Stop when validation AUC has not improved for this many rounds."
    )
    seed: int = Field(default=7, description="Seed of LightGBM and of the row sample.")
    num_threads: int = Field(default=0, description="LightGBM threads; 0 uses every core.")

    def lightgbm(self) -> dict:
        params = {name: getattr(self, name) for name in LightGbmParams.model_fields}
        for key in ("max_rounds", "early_stopping_rounds"):
            params.pop(key)
        params.update(objective="binary", metric="auc", verbosity=-1, force_col_wise=True)
        if not params["num_threads"]:
            params.pop("num_threads")
        return params


@dataclass(frozen=True)
class RowSample:
    """Which fit rows a model learns from: every click, a share of the non-clicks, at most max_rows.

    Dropping non-clicks leaves the AUC ranking nearly intact and cuts training time; predictions
    are corrected back to calibrated probabilities with `calibrate`.
    """

    negative_rate: float = 1.0
    max_rows: int | None = None
    seed: int = 0

    def calibrate(self, p: np.ndarray) -> np.ndarray:
        r = self.negative_rate
        return p if r >= 1.0 else p * r / (p * r + (1.0 - p))


@dataclass
class Rows:
    x: np.ndarray  # (n, f) float32, NaN for missing
    y: np.ndarray | None  # clicks, None where unknown (test)
    user_id: np.ndarray
    photo_id: np.ndarray
    row_id: np.ndarray


def load_rows(
    matrix: Path, features: list[Feature], setup: str, role: str, sample: RowSample | None = None
) -> Rows:
    """One (setup, role) slice of the matrix as a float32 matrix, optionally a deterministic sample."""
    columns = ", ".join(check_identifier(f.name, "feature") for f in features)
    source = f"read_parquet({sql_string(matrix)})"
    where = "setup = ? and role = ?"
    con = duckdb.connect()
    try:
        if sample is not None and sample.negative_rate < 1.0:
            where += f" and (click = 1 or hash(row_id + {int(sample.seed)}) % 1000000 < {int(sample.negative_rate * 1e6)})"
        if sample is not None and sample.max_rows is not None:
            n = con.execute(f"select count(*) from {source} where {where}", [setup, role]).fetchall()[0][0]
            if n > sample.max_rows:
                where += f" and hash(row_id + {int(sample.seed) + 1}) % {n} < {int(sample.max_rows)}"
        table = con.sql(
            # the matrix is written sorted by (setup, role, row_id) and DuckDB preserves insertion
            # order, so the slice arrives in row order without another sort
            f"select row_id, user_id, photo_id, click, {columns} from {source} where {where}",
            params=[setup, role],
        ).to_arrow_table()
    finally:
        con.close()
    x = np.empty((table.num_rows, len(features)), dtype=np.float32)
    for i, f in enumerate(features):
        x[:, i] = table.column(f.name).to_numpy(zero_copy_only=False)
    click = table.column("click")
    y = None if click.null_count == len(click) else click.to_numpy(zero_copy_only=False).astype(np.float32)
    return Rows(
        x,
        y,
        table.column("user_id").to_numpy(),
        table.column("photo_id").to_numpy(),
        table.column("row_id").to_numpy(),
    )


def lightgbm_dataset(rows: Rows, features: list[Feature], reference=None, params: dict | None = None):
    """The rows as a LightGBM Dataset (named columns, discrete features categorical), binned when
    first trained on, or with the bins of `reference`. `params`: the parameters it will be trained
    with, for a Dataset constructed before its first training (the same bins as binned then)."""
    import lightgbm as lgb

    categorical = [f.name for f in features if f.kind == "discrete"]
    return lgb.Dataset(
        rows.x,
        label=rows.y,
        feature_name=[f.name for f in features],
        categorical_feature=categorical or "auto",
        reference=reference,
        free_raw_data=True,
        params=params,
    )


@dataclass
class Validation:
    booster: object  # lightgbm.Booster
    best_iteration: int
    auc_history: list[float]
    auc: float
    fit_rows: int
    scored_rows: int
    scored_click_rate: float
    prediction: np.ndarray | None  # None when fitted with predict=False
    label: np.ndarray
    seconds: float
    importance: dict[str, float] = field(default_factory=dict)


def require_validation_labels(fit: Rows, scored: Rows, what: str) -> None:
    """Refuse fit or scored rows without labels, and scored rows of one class (no AUC to stop on)."""
    if fit.y is None or scored.y is None:
        raise ValueError(f"{what} needs labelled fit and scored rows")
    if len(np.unique(scored.y)) < 2:
        raise ValueError("the validation rows hold only one class; widen the validation window")


def train_validation(
    fit: Rows, scored: Rows, features: list[Feature], params: LightGbmParams, log=lambda m: None, name: str = "model"
) -> Validation:
    """Fit on the early rows, early-stop on the AUC of the cold-start photos after the cut."""
    require_validation_labels(fit, scored, "validation")
    started = time.time()
    train_set = lightgbm_dataset(fit, features)
    valid_set = lightgbm_dataset(scored, features, reference=train_set)
    return early_stopped(train_set, valid_set, fit, scored, params, log=log, name=name, started=started)


def early_stopped(
    train_set,
    valid_set,
    fit: Rows,
    scored: Rows,
    params: LightGbmParams,
    only_features: list[int] | None = None,
    log=lambda m: None,
    name: str = "model",
    started: float | None = None,
    predict: bool = True,
) -> Validation:
    """Boost on `train_set`, early-stopped on the AUC of `valid_set` (LightGBM Datasets of `fit` and
    `scored`, which may already be constructed and are then reused as they are).

    With `predict=False` the scored rows are not predicted again: `prediction` is None and `auc` is
    the one LightGBM computed at the best iteration while boosting (the same figure as
    `roc_auc` of the prediction, ties included; `test_ablation.py` holds them equal).

    `only_features` (column indices) restricts every split to those columns: one interaction
    constraint holding all of them, so that LightGBM allows no other column at any node (its
    column sampler allows at a node only the union of the constraints that hold the branch's
    features). The Datasets are binned once for many such fits; a split on another column raises.
    """
    import lightgbm as lgb

    started = time.time() if started is None else started
    lightgbm_params = params.lightgbm()
    if only_features is not None and len(only_features) < scored.x.shape[1]:
        lightgbm_params["interaction_constraints"] = [list(only_features)]
    history: dict = {}
    every = max(1, params.max_rounds // 20)

    def report(env) -> None:
        if env.iteration % every == 0 and env.evaluation_result_list:
            log(f"{name}: iteration {env.iteration}, validation AUC {env.evaluation_result_list[0][2]:.4f}")

    booster = lgb.train(
        lightgbm_params,
        train_set,
        num_boost_round=params.max_rounds,
        valid_sets=[valid_set],
        valid_names=["validation"],
        callbacks=[
            lgb.early_stopping(params.early_stopping_rounds, verbose=False),
            lgb.record_evaluation(history),
            report,
        ],
    )
    if only_features is not None:
        allowed = set(only_features)
        foreign = [i for i in np.flatnonzero(booster.feature_importance("split")) if i not in allowed]
        if foreign:
            raise RuntimeError(
                f"{name}: LightGBM split on columns outside the {len(allowed)} allowed "
                f"({[booster.feature_name()[i] for i in foreign[:5]]}): the interaction constraint did not hold"
            )
    auc_history = [float(v) for v in history["validation"]["auc"]]
    if predict:
        prediction = booster.predict(scored.x, num_iteration=booster.best_iteration)
        auc = roc_auc(scored.y, prediction)
    else:
        prediction, auc = None, auc_history[(booster.best_iteration or len(auc_history)) - 1]
    return Validation(
        booster=booster,
        best_iteration=int(booster.best_iteration),
        auc_history=auc_history,
        auc=auc,
        fit_rows=len(fit.x),
        scored_rows=len(scored.x),
        scored_click_rate=float(scored.y.mean()),
        prediction=prediction,
        label=scored.y,
        seconds=round(time.time() - started, 1),
        importance=importance_by_feature(booster),
    )


def train_final(fit: Rows, features: list[Feature], params: LightGbmParams, rounds: int):
    """Refit on the training rows for a fixed number of rounds (found by validation)."""
    import lightgbm as lgb

    return lgb.train(params.lightgbm(), lightgbm_dataset(fit, features), num_boost_round=max(1, rounds))


def importance_by_feature(booster) -> dict[str, float]:
    gains = booster.feature_importance(importance_type="gain")
    total = float(gains.sum()) or 1.0
    return {name: float(g) / total for name, g in zip(booster.feature_name(), gains)}


def importance_by_group(importance: dict[str, float], features: list[Feature]) -> dict[str, float]:
    group_of = {f.name: f.group for f in features}
    out: dict[str, float] = {}
    for name, share in importance.items():
        out[group_of[name]] = out.get(group_of[name], 0.0) + share
    return dict(sorted(out.items(), key=lambda item: -item[1]))
