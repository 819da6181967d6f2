"""benchmarks/ceiling.py rebuilds the generator's story: the rows it labels are the dataset's rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks.ceiling import rebuild
from kuai_assets.formats import layout


def test_rebuilt_story_is_the_written_dataset(tiny_data):
    summary = json.loads((tiny_data / layout.GROUND_TRUTH_DIR / "summary.json").read_text())
    story = rebuild(summary["world"], summary["size"], summary["seed"])
    rows = story.rows
    train = pd.read_csv(layout.interaction_file(tiny_data, "train"), sep="\t", header=None,
                        names=list(layout.TRAIN_INTERACTION_COLUMNS))
    written = train[["user_id", "photo_id", "click", "time"]].sort_values(["user_id", "time", "photo_id"])
    rebuilt = rows.loc[rows["split"] == "train", ["user_id", "photo_id", "click", "time"]]
    rebuilt = rebuilt.sort_values(["user_id", "time", "photo_id"])
    np.testing.assert_array_equal(written.to_numpy(), rebuilt.to_numpy(np.int64))
    truth = pd.read_csv(layout.ground_truth_file(tiny_data), sep="\t", header=None,
                        names=["user_id", "photo_id", "click", "p_click"])
    test = rows.loc[rows["split"] == "test"].merge(truth, on=["user_id", "photo_id"], suffixes=("", "_written"))
    assert len(test) == len(truth) == (rows["split"] == "test").sum()
    np.testing.assert_array_equal(test["click"].to_numpy(), test["click_written"].to_numpy())
    np.testing.assert_allclose(test["p_click"], test["p_click_written"], atol=1e-5)
    assert story.oracle_auc == pytest.approx(summary["oracle_auc"], abs=1e-4)
    # every row carries its photo's true labels
    assert rows["topic"].between(0, 39).all() and rows["subtopic"].between(0, 40 * 6 - 1).all()
    assert (rows["subtopic"] // 6 == rows["topic"]).all()
