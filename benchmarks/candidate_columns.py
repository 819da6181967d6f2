"""Try candidate columns out of graph: the model as `model` trains it, with and without them.

    python -m benchmarks.candidate_columns --work W --data D --candidate knn_visual

W is a workspace whose graph has run through `training_matrix` (`kuai run`, or
`bench quality --without ...`), D its dataset with `ground_truth/test_ground_truth.txt`. The
candidate's columns are computed from the workspace's tables (one row per setup and row_id of
model_rows; every label statistic out of fold, as a feature group's), joined to a copy of the
training matrix as one more group (`<W>/bench/candidate_matrix.parquet`, or under --out; the workspace's own
tables are never modified), and LightGBM is trained exactly as `model` trains it
(kuai_assets.ml.gbdt.train_gbdt: the default groups and parameters, validation, refit, test
scores) on the default groups, then on the default groups and the candidate. Both are scored on
the test rows. The figures print and go to `<W>/bench/candidate_<name>.json`.

A candidate that gains on validation and test, across worlds and the independent stories, is
worth a feature group (kuai_assets/groups/, with its reference test and the leak probe); one that
does not is recorded in BENCHMARKS.md with this command, so the study can be run again.

Candidates:

- knn_visual: the user's nearest neighbours in reduced-visual space (the unit pca_visual_features
  vector; cosine). Of the fit rows the row may see (other folds; a scored row: every fit row of its
  setup): knn_click_top and knn_noclick_top, the mean cosine of the 5 nearest clicked and the 5
  nearest unclicked photos; knn_rate, the click share of the 20 nearest; knn_weighted_rate, the
  same weighted by exp(cosine / 0.1). A user's tastes as points rather than one centroid
  (visual_similarity) or one linear direction (visual_taste).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kuai_assets.features.matrix import FEATURES_KEY, MATRIX, Feature, read_features
from kuai_assets.groups.visual_similarity import _pca_matrix as unit_pca_vectors
from kuai_assets.storage import sql_string

KNN_NAMES = ("knn_click_top", "knn_noclick_top", "knn_rate", "knn_weighted_rate")
KNN_TOP_BY_LABEL, KNN_NEIGHBOURS, KNN_TEMPERATURE = 5, 20, 0.1


def _mean_of_top(similarity: np.ndarray, k: int) -> np.ndarray:
    """Per row, the mean of its k largest finite values (fewer if it has fewer; NaN if none)."""
    if similarity.shape[1] == 0:
        return np.full(similarity.shape[0], np.nan, np.float32)
    k = min(k, similarity.shape[1])
    top = -np.partition(-similarity, k - 1, axis=1)[:, :k]
    top = np.where(np.isfinite(top), top, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row that may see none: NaN
        return np.nanmean(top, axis=1).astype(np.float32)


def knn_visual(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The knn_visual columns (module docstring) for every row of model_rows: setup, row_id, then
    KNN_NAMES. Reads model_rows, label_history and pca_visual_features; a fit row of fold f reads
    only label_history rows of its setup outside fold f, a scored row (fold -1) all of its setup's."""
    photo_ids, vectors = unit_pca_vectors(con)  # sorted by photo_id
    pieces = []
    for (setup,) in con.sql("select distinct setup from model_rows order by setup").fetchall():
        rows = con.execute("select row_id, user_id, photo_id, fold from model_rows where setup = ? order by user_id, row_id",
                           [setup]).fetchnumpy()
        seen = con.execute("select user_id, photo_id, fold, click from label_history where setup = ? order by user_id",
                           [setup]).fetchnumpy()
        users = np.unique(rows["user_id"])
        row_bounds = np.append(np.searchsorted(rows["user_id"], users), len(rows["user_id"]))
        seen_lo = np.searchsorted(seen["user_id"], users)
        seen_hi = np.searchsorted(seen["user_id"], users, side="right")
        row_vectors = vectors[np.searchsorted(photo_ids, rows["photo_id"])]
        seen_vectors = vectors[np.searchsorted(photo_ids, seen["photo_id"])]
        columns = {name: np.full(len(rows["row_id"]), np.nan, np.float32) for name in KNN_NAMES}
        for i in range(len(users)):
            a, b, c, d = row_bounds[i], row_bounds[i + 1], seen_lo[i], seen_hi[i]
            if d <= c:
                continue
            fold, seen_fold = rows["fold"][a:b], seen["fold"][c:d]
            clicked = seen["click"][c:d].astype(bool)
            similarity = row_vectors[a:b] @ seen_vectors[c:d].T
            hidden = (fold[:, None] == seen_fold[None, :]) & (fold[:, None] >= 0)  # the row's own fold
            similarity[hidden] = -np.inf
            columns["knn_click_top"][a:b] = _mean_of_top(similarity[:, clicked], KNN_TOP_BY_LABEL)
            columns["knn_noclick_top"][a:b] = _mean_of_top(similarity[:, ~clicked], KNN_TOP_BY_LABEL)
            k = min(KNN_NEIGHBOURS, similarity.shape[1])
            nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
            near = np.take_along_axis(similarity, nearest, axis=1)
            visible = np.isfinite(near)
            near_click = clicked[nearest] & visible
            weight = np.where(visible, np.exp(np.where(visible, near, 0.0) / KNN_TEMPERATURE), 0.0)
            count = visible.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                columns["knn_rate"][a:b] = np.where(count > 0, near_click.sum(axis=1) / count, np.nan)
                columns["knn_weighted_rate"][a:b] = np.where(
                    count > 0, (weight * near_click).sum(axis=1) / weight.sum(axis=1), np.nan)
        pieces.append(pa.table({"setup": pa.array([setup] * len(rows["row_id"]), pa.string()),
                                "row_id": rows["row_id"], **columns}))
    return pa.concat_tables(pieces)


CANDIDATES: dict[str, tuple[Callable[[duckdb.DuckDBPyConnection], pa.Table], tuple[str, ...]]] = {
    "knn_visual": (knn_visual, KNN_NAMES),
}
INPUTS = ("model_rows", "label_history", "pca_visual_features")


def workspace_connection(tables: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name in INPUTS:
        path = tables / f"{name}.parquet"
        if not path.is_file():
            raise SystemExit(f"candidate_columns: {path} is missing; materialize the graph through training_matrix first")
        con.sql(f"create view {name} as select * from read_parquet({sql_string(path)})")
    return con


def candidate_matrix(matrix: Path, columns: pa.Table, group: str, names: tuple[str, ...], out: Path) -> None:
    """The training matrix with `columns` (setup, row_id, names) left-joined as feature group
    `group` (label statistics), in the matrix's row order, its declarations extended."""
    con = duckdb.connect()
    try:
        con.register("candidate", columns)
        table = con.sql(f"select m.*, {', '.join(f'c.{n}' for n in names)} from read_parquet({sql_string(matrix)}) m "
                        f"left join candidate c using (setup, row_id) order by m.setup, m.role, m.row_id").to_arrow_table()
    finally:
        con.close()
    features = read_features(matrix) + [
        Feature(name=n, group=group, kind="continuous", source=n, uses_labels=True) for n in names]
    metadata = dict(pq.read_schema(matrix).metadata or {})
    metadata[FEATURES_KEY] = json.dumps([f.__dict__ for f in features]).encode()
    pq.write_table(table.replace_schema_metadata(metadata), out, compression="zstd")


def train_and_score(matrix: Path, groups: list[str], truth: Path, scratch: Path) -> dict:
    """LightGBM as `model` trains it on `groups`; its validation and test AUC."""
    from kuai_assets.ml.evaluation import score_predictions
    from kuai_assets.ml.gbdt import GbdtTraining, train_gbdt

    result = train_gbdt(matrix, groups, GbdtTraining())
    pq.write_table(pa.table({"user_id": result.test.user_id, "photo_id": result.test.photo_id,
                             "p_click": result.test_prediction}), scratch)
    score = score_predictions(truth, predictions=scratch)
    return {"valid_auc": round(result.validation.auc, 4), "test_auc": round(score.auc, 4),
            "oracle_auc": round(score.oracle_auc, 4), "best_iteration": result.validation.best_iteration}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.candidate_columns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a workspace materialized through training_matrix")
    parser.add_argument("--data", type=Path, required=True, help="its dataset, with ground_truth/test_ground_truth.txt")
    parser.add_argument("--candidate", choices=sorted(CANDIDATES), default="knn_visual")
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default <work>/bench)")
    args = parser.parse_args(argv)
    from kuai_assets.defs.model import default_feature_groups

    truth = args.data / "ground_truth" / "test_ground_truth.txt"
    if not truth.is_file():
        raise SystemExit(f"candidate_columns: {truth} is missing: the test rows cannot be scored")
    tables, scratch = args.work / "tables", args.out or args.work / "bench"
    scratch.mkdir(parents=True, exist_ok=True)
    compute, names = CANDIDATES[args.candidate]
    started = time.time()
    con = workspace_connection(tables)
    columns = compute(con)
    con.close()
    seconds = round(time.time() - started, 1)
    print(f"[candidate_columns] {args.candidate}: {len(names)} columns for {columns.num_rows:,} rows in {seconds} s",
          flush=True)
    matrix = scratch / "candidate_matrix.parquet"
    candidate_matrix(tables / f"{MATRIX}.parquet", columns, args.candidate, names, matrix)
    present = {f.group for f in read_features(matrix)}
    groups = [g for g in default_feature_groups() if g in present]
    without = train_and_score(matrix, groups, truth, scratch / "predictions.parquet")
    print(f"[candidate_columns] without: {without}", flush=True)
    with_candidate = train_and_score(matrix, groups + [args.candidate], truth, scratch / "predictions.parquet")
    print(f"[candidate_columns] with {args.candidate}: {with_candidate}", flush=True)
    figures = {"work": str(args.work), "candidate": args.candidate, "seconds": seconds, "without": without,
               "with": with_candidate}
    (scratch / f"candidate_{args.candidate}.json").write_text(json.dumps(figures, indent=2))
    print(f"| {args.work.name} | {without['valid_auc']:.4f} / {without['test_auc']:.4f} | "
          f"{with_candidate['valid_auc']:.4f} / {with_candidate['test_auc']:.4f} | "
          f"{with_candidate['test_auc'] - without['test_auc']:+.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
