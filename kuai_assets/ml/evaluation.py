"""Scoring predictions against a ground-truth file of the test rows (synthetic data only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from kuai_assets.features.spec import CatalogError
from kuai_assets.formats.released import read_ground_truth
from kuai_assets.ml.metrics import roc_auc
from kuai_assets.storage import sql_string


@dataclass(frozen=True)
class TestScore:
    auc: float
    oracle_auc: float  # of the true click probabilities: the ceiling of what is knowable
    rows: int

    @property
    def closure(self) -> float:
        """Share of the gap between chance and the oracle that the predictions close."""
        return (self.auc - 0.5) / (self.oracle_auc - 0.5)


def score_predictions(ground_truth: Path, submission_file: Path | None = None, predictions: Path | None = None) -> TestScore:
    """AUC of a submission file (or a Parquet table with user_id, photo_id, p_click) on the test
    rows; refuses predictions that miss a ground-truth row."""
    if (submission_file is None) == (predictions is None):
        raise ValueError("score either a submission file or a predictions table")
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
        scored = submission_file if submission_file is not None else predictions
        raise CatalogError(f"{scored}: only {len(joined['click'])} of {total} ground-truth rows have a prediction")
    return TestScore(roc_auc(joined["click"], joined["score"]), roc_auc(joined["click"], joined["oracle"]), total)
