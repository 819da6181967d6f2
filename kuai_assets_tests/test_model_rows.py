"""model_rows: the validation mirrors the test, whether the log's photos arrive over time or not."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kuai_assets.features.catalog import load_catalog
from kuai_assets.features.runner import materialize_table_model
from kuai_assets.storage import WorkDir

HOUR = 3_600_000


def interactions(work: WorkDir, arriving: bool) -> None:
    """36 train hours and 12 test hours, 20 users; each photo is shown to 4 users. Arriving: each
    train photo's impressions fall within 3 hours of its upload, spread over the 36 hours. Static:
    every train photo is shown at random times over the whole 36 hours."""
    rng = np.random.default_rng(0)
    rows = []
    for photo in range(600):
        start = rng.uniform(0, 33) if arriving else 0.0
        span = 3.0 if arriving else 36.0
        for user in rng.choice(20, size=4, replace=False):
            rows.append(("train", int(user), 1000 + photo, int((start + rng.uniform(0, span)) * HOUR)))
    for photo in range(150):
        for user in rng.choice(20, size=4, replace=False):
            rows.append(("test", int(user), 5000 + photo, int((36 + rng.uniform(0, 12)) * HOUR)))
    split, user, photo, time = zip(*rows)
    n = len(rows)
    path = work.table_path("raw_interactions")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "row_id": np.arange(n), "split": list(split), "user_id": np.array(user, np.int64),
        "photo_id": np.array(photo, np.int64), "time": np.array(time, np.int64),
        "click": pa.array([int(rng.random() < 0.2) if s == "train" else None for s in split], pa.int8()),
    }), path)


def model_rows(tmp_path, arriving: bool) -> dict:
    work = WorkDir(tmp_path)
    interactions(work, arriving)
    materialize_table_model(load_catalog()["model_rows"], work)
    con = work.connect(["model_rows", "raw_interactions"])
    try:
        rows = {
            (setup, role): con.execute(
                "select photo_id, fold, time from model_rows where setup = ? and role = ?", [setup, role]
            ).fetchnumpy()
            for setup in ("validation", "submission") for role in ("fit", "scored")
        }
        cut = con.execute("select max(time) - 12 * 3600000 from raw_interactions where split = 'train'").fetchone()[0]
    finally:
        con.close()
    return {"rows": rows, "cut": cut}


def first_shown(rows: dict) -> dict:
    """Each photo's first impression time among `rows` (photo_id and time arrays)."""
    first = {}
    for p, t in zip(rows["photo_id"], rows["time"]):
        first[p] = min(t, first.get(p, t))
    return first


def check_the_honest_split(made: dict) -> None:
    fit, scored = made["rows"][("validation", "fit")], made["rows"][("validation", "scored")]
    assert (fit["time"] < made["cut"]).all() and (scored["time"] >= made["cut"]).all()
    assert not set(fit["photo_id"]) & set(scored["photo_id"]), "a scored photo is seen by the fit"
    assert (scored["fold"] == -1).all() and (fit["fold"] >= 0).all()
    submission = made["rows"][("submission", "fit")]
    assert len(submission["photo_id"]) == 2400 and len(made["rows"][("submission", "scored")]["photo_id"]) == 600


def test_where_photos_arrive_over_time_the_validation_scores_the_photos_first_shown_after_the_cut(tmp_path):
    made = model_rows(tmp_path, arriving=True)
    check_the_honest_split(made)
    fit, scored = made["rows"][("validation", "fit")], made["rows"][("validation", "scored")]
    assert set(fit["fold"]) == {0, 1, 2, 3, 4}, "no fold is held out"
    assert len(scored["photo_id"]) >= 0.25 * 600
    # every scored photo was first shown after the cut: nothing of it before
    first = first_shown(made["rows"][("submission", "fit")])
    assert all(first[p] >= made["cut"] for p in scored["photo_id"])


def test_where_the_catalogue_is_there_from_the_start_the_validation_also_holds_out_fold_0(tmp_path):
    made = model_rows(tmp_path, arriving=False)
    check_the_honest_split(made)
    fit, scored = made["rows"][("validation", "fit")], made["rows"][("validation", "scored")]
    assert set(fit["fold"]) == {1, 2, 3, 4}, "fold 0's photos leave the validation's fit"
    # fold 0's rows after the cut are scored: with photos shown over 36 hours, about a third of them
    submission = made["rows"][("submission", "fit")]
    fold_zero_after_cut = ((submission["fold"] == 0) & (submission["time"] >= made["cut"])).sum()
    assert fold_zero_after_cut > 0.25 * 600
    # scored: fold 0's rows after the cut, and the rows of the few photos of other folds whose
    # every impression fell after it
    first = first_shown(submission)
    cold_elsewhere = sum(1 for p, f in zip(submission["photo_id"], submission["fold"]) if f != 0 and first[p] >= made["cut"])
    assert cold_elsewhere < 0.25 * 600, "the cold rows alone fall short of the share: the fallback is due"
    assert len(scored["photo_id"]) == fold_zero_after_cut + cold_elsewhere
