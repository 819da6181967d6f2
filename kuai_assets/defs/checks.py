"""Asset checks: the guarantees downstream assets rely on, shown in the UI, blocking where a
failure would make what comes after wrong.

Each check is a plain function of the `workspace` resource (so a test can call it on a damaged work
dir) and reports what it counted as metadata, passed or not.
"""


import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np

from kuai_assets.defs.resources import TrackingResource, WorkspaceResource
from kuai_assets.features.catalog import TableModel, feature_groups, load_catalog
from kuai_assets.features.leakage import VERDICTS_FILE, plan_probe, probe_label_leakage, record_verdicts
from kuai_assets.features.matrix import MATRIX
from kuai_assets.formats import layout
from kuai_assets.formats.released import DataFormatError
from kuai_assets.formats.submission import validate_submission
from kuai_assets.ml.tracking import CANDIDATE, CHAMPION, REGISTERED_MODEL, TrackingError, promote_if_better
from kuai_assets.storage import sql_string

# the leak probe recomputes every label-using group three times on this many users' rows
LEAK_PROBE_USERS = 15
# a feature may differ by float noise (sums in another order) where the probe expects no change
LEAK_TOLERANCE = 1e-5
SETUPS = ("validation", "submission")
ROLES = ("fit", "scored")
KEY_COLUMNS = ("setup", "role", "row_id", "user_id", "photo_id", "fold")


# -- raw -----------------------------------------------------------------------------------------


@dg.asset_check(asset="raw_interactions", blocking=True, description="Train and test photo ids are disjoint.")
def train_and_test_photos_disjoint(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    con = workspace.work().connect(["raw_interactions"])
    shared = con.execute(
        "select count(*) from (select photo_id from raw_interactions where split = 'train' "
        "intersect select photo_id from raw_interactions where split = 'test')"
    ).fetchone()[0]
    con.close()
    return dg.AssetCheckResult(passed=shared == 0, metadata={"shared_photo_ids": int(shared)})


@dg.asset_check(
    asset="raw_interactions",
    blocking=True,
    description="Train click rate and row counts are plausible (click rate 1%-60%, both splits non-empty).",
)
def click_rate_plausible(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    con = workspace.work().connect(["raw_interactions"])
    train_rows, test_rows, click_rate = con.execute(
        "select count(*) filter (where split = 'train'), count(*) filter (where split = 'test'), "
        "avg(click) filter (where split = 'train') from raw_interactions"
    ).fetchone()
    con.close()
    passed = train_rows > 0 and test_rows > 0 and click_rate is not None and 0.01 <= click_rate <= 0.6
    return dg.AssetCheckResult(
        passed=bool(passed),
        metadata={"train_rows": train_rows, "test_rows": test_rows, "click_rate": float(click_rate or 0.0)},
    )


# -- visual --------------------------------------------------------------------------------------


@dg.asset_check(
    asset="video_embeddings",
    blocking=True,
    description="Every photo in the interactions (train and test) has a visual vector in the store.",
)
def every_photo_has_a_vector(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    work = workspace.work()
    vector_ids = np.load(work.require_store("video_embeddings") / "photo_id.npy")
    con = work.connect(["raw_interactions"])
    needed = con.execute("select distinct photo_id, split from raw_interactions order by photo_id").fetchnumpy()
    con.close()
    missing = ~np.isin(needed["photo_id"], vector_ids)
    by_split = {s: int((missing & (needed["split"] == s)).sum()) for s in layout.SPLITS}
    return dg.AssetCheckResult(
        passed=not missing.any(),
        description=None
        if not missing.any()
        else f"{int(missing.sum())} photo(s) have no vector, e.g. photo_id {int(needed['photo_id'][missing][0])}",
        metadata={
            "photos_in_interactions": int(len(missing)),
            "vectors_in_store": int(len(vector_ids)),
            "photos_without_vector": dg.MetadataValue.json(by_split),
            "examples": dg.MetadataValue.json(needed["photo_id"][missing][:10].tolist()),
        },
    )


def non_finite_and_null_counts(path: Path, columns: list[str]) -> tuple[list[int], list[int]]:
    """NaN/inf and NULL counts per float column of a Parquet file, one row group at a time.

    Arrow's compute kernels over the decoded columns (an order of magnitude faster than the
    same counts as filtered aggregates in DuckDB); memory stays at one row group whatever the
    file's size.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    non_finite, nulls = [0] * len(columns), [0] * len(columns)
    file = pq.ParquetFile(path)
    for group in range(file.metadata.num_row_groups):
        table = file.read_row_group(group, columns=columns)
        for i, name in enumerate(columns):
            column = table.column(name)
            nulls[i] += column.null_count
            non_finite[i] += pc.sum(pc.invert(pc.is_finite(column))).as_py() or 0  # NULLs count in neither
    return non_finite, nulls


# -- model_rows ----------------------------------------------------------------------------------

# the validation AUC's standard error above which the check warns: the validation is read against
# the test to 0.01, so its own noise must stay under that
VALIDATION_AUC_SE_MAX = 0.01
NOMINAL_AUC = 0.7  # the standard error is that of an AUC of this size (the check runs before any model)


def auc_standard_error(positives: int, negatives: int, auc: float = NOMINAL_AUC) -> float:
    """Hanley and McNeil's (1982) standard error of an AUC estimated on this many clicked and
    unclicked rows; infinite without both."""
    if positives < 1 or negatives < 1:
        return float("inf")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives
    )
    return float(np.sqrt(variance))


@dg.asset_check(
    asset="model_rows",
    blocking=False,
    description=f"A warning, not a stop: the validation's scored rows hold enough clicks and non-clicks for "
    f"its AUC to be read to better than {VALIDATION_AUC_SE_MAX} (Hanley and McNeil's standard error of an AUC "
    f"of {NOMINAL_AUC}). Fewer means few rows follow the cut on photos the validation's fit never sees, "
    "even with fold 0's photos held out: the validation AUC, early stopping and the blend's weight rest "
    "on few rows.",
)
def validation_scores_like_test(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    con = workspace.work().connect(["model_rows", "raw_interactions"])
    try:
        scored, clicks, test, fit_rate, fold_zero_fit, fold_zero_all = con.execute(
            "select count(*) filter (where m.setup = 'validation' and m.role = 'scored'), "
            "coalesce(sum(r.click) filter (where m.setup = 'validation' and m.role = 'scored'), 0), "
            "count(*) filter (where m.setup = 'submission' and m.role = 'scored'), "
            "avg(r.click) filter (where m.setup = 'validation' and m.role = 'fit'), "
            "count(*) filter (where m.setup = 'validation' and m.role = 'fit' and m.fold = 0), "
            "count(*) filter (where m.setup = 'submission' and m.role = 'fit' and m.fold = 0) "
            "from model_rows m join raw_interactions r using (row_id)"
        ).fetchone()
    finally:
        con.close()
    scored, clicks = int(scored), int(clicks)
    error = auc_standard_error(clicks, scored - clicks)
    passed = error <= VALIDATION_AUC_SE_MAX
    return dg.AssetCheckResult(
        passed=bool(passed),
        severity=dg.AssetCheckSeverity.WARN,
        description=None if passed else (
            f"the validation scores {scored:,} rows ({clicks:,} clicks) against the test's {test:,}: "
            + (f"its AUC is read to about {error:.3f}, above {VALIDATION_AUC_SE_MAX}" if np.isfinite(error)
               else "it has no AUC without both clicked and unclicked rows")
            + "; few rows follow the cut on photos the validation's fit never sees"
        ),
        metadata={
            "validation_scored_rows": scored,
            "validation_scored_clicks": clicks,
            "validation_auc_standard_error": error,
            "test_rows": int(test),
            "validation_to_test_rows": float(scored / test) if test else 0.0,
            "validation_scored_click_rate": float(clicks / scored) if scored else None,
            "validation_fit_click_rate": float(fit_rate) if fit_rate is not None else None,
            # the cold photos after the cut were too few, so fold 0's photos were held out as well
            "fold_0_held_out": bool(fold_zero_fit == 0 and fold_zero_all > 0),
        },
    )


# -- training matrix -----------------------------------------------------------------------------


@dg.asset_check(
    asset="training_matrix",
    blocking=True,
    description="No NaN or infinity in any feature (NULL means missing, by design; NaN/inf is an "
    "arithmetic bug); keys never NULL and one row per (setup, row_id); labels on every fit and "
    "validation row, none on the test rows.",
)
def training_matrix_finite_and_keyed(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    work = workspace.work()
    con = work.connect([MATRIX])
    try:
        schema = con.execute(f"describe {MATRIX}").fetchall()
        floats = [name for name, kind, *_ in schema if kind in ("FLOAT", "DOUBLE")]
        present = {name for name, *_ in schema}
        absent_keys = [c for c in (*KEY_COLUMNS, "click") if c not in present]
        if absent_keys:
            return dg.AssetCheckResult(passed=False, metadata={"missing_columns": dg.MetadataValue.json(absent_keys)})
        test_rows = "setup = 'submission' and role = 'scored'"
        row = con.execute(
            f"""
            select count(*),
                   count(*) filter (where {' or '.join(f'{c} is null' for c in KEY_COLUMNS)}),
                   count(*) filter (where setup not in {SETUPS} or role not in {ROLES}),
                   count(*) filter (where setup in {SETUPS})
                     - {' - '.join(f"count(distinct row_id) filter (where setup = '{s}')" for s in SETUPS)},
                   count(*) filter (where click is null and not ({test_rows})),
                   count(*) filter (where click is not null and {test_rows}),
                   count(*) filter (where click not in (0, 1))
            from {MATRIX}
            """
        ).fetchone()
    finally:
        con.close()
    non_finite_counts, null_counts = non_finite_and_null_counts(work.table_path(MATRIX), floats)
    row = (*row, *non_finite_counts, *null_counts)
    rows, null_keys, bad_setup_or_role, duplicates, unlabelled, labelled_test, bad_labels = row[:7]
    non_finite = {c: int(n) for c, n in zip(floats, row[7 : 7 + len(floats)]) if n}
    nulls = row[7 + len(floats) :] if floats else []
    problems = {
        "rows_with_null_key": null_keys,
        "rows_with_unknown_setup_or_role": bad_setup_or_role,
        "duplicate_setup_row_id": duplicates,
        "fit_or_validation_rows_without_click": unlabelled,
        "test_rows_with_a_click_label": labelled_test,
        "click_not_0_or_1": bad_labels,
        "nan_or_infinite_values": sum(non_finite.values()),
    }
    failing = {k: int(v) for k, v in problems.items() if v}
    return dg.AssetCheckResult(
        passed=not failing,
        description=None if not failing else "; ".join(f"{k}: {v}" for k, v in failing.items()),
        metadata={
            "rows": int(rows),
            "float_columns_checked": len(floats),
            **{k: int(v) for k, v in problems.items()},
            "nan_or_infinite_by_column": dg.MetadataValue.json(dict(sorted(non_finite.items())[:30])),
            "null_feature_share (missing by design)": dg.MetadataValue.float(
                round(float(sum(nulls)) / max(1, rows * len(floats)), 4)
            ),
        },
    )


def probed_groups() -> list[TableModel]:
    """The feature groups the leak probe recomputes: every one, whatever its lineage says."""
    return feature_groups(load_catalog())


@dg.asset_check(
    asset="training_matrix",
    blocking=True,
    description=f"Label statistics never see the labels of the rows they describe: on {LEAK_PROBE_USERS} "
    "users, shuffling the labels of the validation rows (and of one fold) must not move those rows' "
    "features, and must move others' (kuai_assets/features/leakage.py). A group is probed again only "
    f"when its code, the code of what it reads, the probe's or the data changed since its last passing "
    f"probe (the verdicts are kept in the work dir's {VERDICTS_FILE}; delete it to probe every group).",
)
def label_statistics_out_of_fold(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    work = workspace.work()
    groups = probed_groups()
    started = time.time()
    plan = plan_probe(work, groups, users=LEAK_PROBE_USERS)
    results = []
    if plan.probe:
        work.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=work.root, prefix=".leak_probe-") as scratch:
            results = probe_label_leakage(work, Path(scratch) / "probe", groups=plan.probe, users=LEAK_PROBE_USERS)
    failing = [
        r for r in results if r.rows_checked == 0 or r.max_change_protected > LEAK_TOLERANCE or r.changed_elsewhere == 0
    ]
    passed = bool(results or not plan.probe) and not failing
    verdicts_kept = False
    if passed:
        try:  # the verdicts only spare later probes: a work dir that cannot keep them is probed in full
            record_verdicts(work, plan.keys)
            verdicts_kept = True
        except OSError:
            pass
    return dg.AssetCheckResult(
        passed=passed,
        description=f"probed {len(plan.probe)} group(s)"
        + (f" (with {plan.witness}, to see the shuffles move features)" if plan.witness else "")
        + f"; {len(plan.proven)} proven before on the same code and data"
        if not failing
        else "; ".join(
            f"{r.scenario}: "
            + (
                f"{r.worst_feature} moved by {r.max_change_protected:.3g} on rows whose own labels were shuffled (a leak)"
                if r.max_change_protected > LEAK_TOLERANCE
                else "the shuffle moved no other row's features, so the probe proves nothing"
            )
            for r in failing
        ),
        metadata={
            "users_sampled": LEAK_PROBE_USERS,
            "groups_probed": dg.MetadataValue.json([g.name for g in plan.probe]),
            "groups_proven_before": dg.MetadataValue.json(plan.proven),
            "witness_group": plan.witness or "",
            "verdicts_kept": verdicts_kept,
            "scenarios": dg.MetadataValue.json(
                [
                    {
                        "scenario": r.scenario,
                        "rows_checked": r.rows_checked,
                        "max_change_on_protected_rows": r.max_change_protected,
                        "worst_feature": r.worst_feature,
                        "changed_values_elsewhere": r.changed_elsewhere,
                    }
                    for r in results
                ]
            ),
            "seconds": dg.MetadataValue.float(round(time.time() - started, 1)),
        },
    )


# -- model -----------------------------------------------------------------------------------------


@dg.asset_check(
    asset="model",
    blocking=True,
    description=f"The new model is registered ({REGISTERED_MODEL} @{CANDIDATE}); it becomes @{CHAMPION} "
    "only when its validation AUC beats the current champion's (the first one always does). Fails "
    "(and blocks the submission) when the model's MLflow run has no registered version.",
)
def model_promoted_if_better(workspace: WorkspaceResource, tracking: TrackingResource) -> dg.AssetCheckResult:
    import json

    info = json.loads((workspace.work().require_store("model") / "run.json").read_text())
    try:
        promotion = promote_if_better(tracking.tracking_uri, REGISTERED_MODEL, info["mlflow_run_id"])
    except TrackingError as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc), metadata={"mlflow_run_id": info["mlflow_run_id"]})
    return dg.AssetCheckResult(
        passed=True,
        description=promotion.describe(),
        metadata={
            "promoted": promotion.promoted,
            "version": promotion.version,
            "valid_auc": dg.MetadataValue.float(promotion.auc),
            "previous_champion": promotion.previous_champion or "none",
            **(
                {"previous_champion_valid_auc": dg.MetadataValue.float(promotion.previous_auc)}
                if promotion.previous_auc is not None
                else {}
            ),
            "champion": promotion.champion,
        },
    )


# -- submission ----------------------------------------------------------------------------------


@dg.asset_check(
    asset="submission",
    blocking=True,
    description="The submission's keys are exactly those of test_interaction.txt, once each, with a "
    "six-decimal probability in [0, 1] on every line.",
)
def submission_matches_test_keys(workspace: WorkspaceResource) -> dg.AssetCheckResult:
    path = workspace.work().submission_file
    test_file = layout.interaction_file(workspace.data_root(), "test")
    try:
        rows = validate_submission(path, test_file)
    except DataFormatError as exc:
        return dg.AssetCheckResult(
            passed=False,
            description=str(exc),
            metadata={"problem": str(exc), "path": dg.MetadataValue.path(str(path))},
        )
    import duckdb

    con = duckdb.connect()
    try:
        low, high, mean = con.execute(
            f"select min(p), max(p), avg(p) from read_csv({sql_string(path)}, delim='\t', header=false, "
            "auto_detect=false, columns={'user_id': 'BIGINT', 'photo_id': 'BIGINT', 'p': 'DOUBLE'})"
        ).fetchone()
    finally:
        con.close()
    return dg.AssetCheckResult(
        passed=True,
        metadata={
            "rows": int(rows),
            "min_probability": float(low),
            "max_probability": float(high),
            "mean_probability": dg.MetadataValue.float(round(float(mean), 5)),
            "validated_against": dg.MetadataValue.path(str(test_file)),
        },
    )
