"""`python -m kuai_assets.bench`: the benchmarks of the checkout, by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from kuai_assets import bench


def test_lists_every_benchmark_script_with_its_first_line(capsys):
    assert bench.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("quality", "loop", "spark_vs_duckdb", "ceiling", "scale"):
        assert f"  {name}" in out
    assert "How close the platform comes to the oracle" in out


def test_an_unknown_name_is_one_line_naming_the_benchmarks():
    done = subprocess.run([sys.executable, "-m", "kuai_assets.bench", "qualty"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "kuai_assets.bench: no benchmark 'qualty'; there are: " + ", ".join(bench.available())
    ]


def test_runs_the_named_benchmark_with_its_options():
    done = subprocess.run(
        [sys.executable, "-m", "kuai_assets.bench", "quality", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "--drop-group" in done.stdout and "--worlds" in done.stdout


def test_the_loop_counts_the_cpu_time_of_the_whole_process_tree(tmp_path):
    """`benchmarks.loop` compares the graph's work with the script's by their trees' CPU time: a
    grandchild's counts, and a sleeping tree's does not."""
    import os

    from benchmarks.loop import run_tree

    burn = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.6: pass"
    parent = f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', {burn!r}]); time.sleep(0.3)"
    busy = run_tree([sys.executable, "-c", parent], dict(os.environ), tmp_path, tmp_path / "busy.log")
    assert busy["ok"], (tmp_path / "busy.log").read_text()
    # the grandchild's 0.6 CPU-seconds (user and system: reading the clock is a system call on some machines)
    assert busy["cpu_seconds"] >= 0.55 and busy["cpu_seconds"] == pytest.approx(busy["cpu_user"] + busy["cpu_system"], abs=0.11)
    idle = run_tree([sys.executable, "-c", "import time; time.sleep(0.6)"], dict(os.environ), tmp_path,
                    tmp_path / "idle.log")
    assert idle["seconds"] >= 0.6 and idle["cpu_seconds"] < 0.4


def test_quality_refuses_an_unknown_group_before_any_work(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "kuai_assets.bench", "quality", "--size", "tiny", "--out", str(tmp_path / "q"),
         "--drop-group", "no_such_group"],
        capture_output=True, text=True,
    )
    assert done.returncode == 2
    assert "error: --drop-group: 'no_such_group' is not one of the model's feature groups: " in done.stderr
    assert not (tmp_path / "q").exists()


def test_quality_reads_each_models_own_test_auc_not_the_submissions(tmp_path):
    from benchmarks.quality import model_figures, table_rows

    metadata = {
        "model": {"valid_auc": 0.70},
        "attention_model": {"valid_auc": 0.66, "refitted": False},
        "blend": {"valid_auc": 0.70, "gbdt_weight": 1.0},
        "baseline_model": {"valid_auc": 0.65},
        # `test_auc` is the submission's (the blend's): the GBDT's own is model_test_auc
        "evaluation": {"test_auc": 0.71, "model_test_auc": 0.69, "attention_model_test_auc": 0.64,
                       "blend_test_auc": 0.71, "baseline_test_auc": 0.63},
    }
    keys = {"model", "attention_model", "blend", "baseline_model"}
    models = model_figures(metadata, keys, tmp_path / "truth.txt", tmp_path)
    assert {name: info["test_auc"] for name, info in models.items()} == {
        "model": 0.69, "attention_model": 0.64, "blend": 0.71, "baseline_model": 0.63}
    header, rows = table_rows([{"world": "w", "oracle_auc": 0.8, "models": models, "generate_seconds": 1.0,
                                "graph_seconds": 2.0, "success": True}])
    row = dict(zip(header, rows[0]))
    assert row["model test"] == "0.6900" and row["blend test"] == "0.7100"
    assert row["attention_model refitted"] == "no" and row["blend GBDT weight"] == "1.00"


def test_quality_refuses_a_given_dataset_without_ground_truth_before_any_work(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "kuai_assets.bench", "quality", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "q")],
        capture_output=True, text=True,
    )
    assert done.returncode == 2
    assert f"error: --data: {tmp_path / 'data'} has no ground_truth/test_ground_truth.txt" in done.stderr
    assert not (tmp_path / "q").exists()


def test_quality_on_a_given_dataset_reads_its_oracle_from_its_ground_truth(tmp_path):
    from benchmarks.quality import given_dataset

    with pytest.raises(ValueError, match="has no ground_truth/test_ground_truth.txt"):
        given_dataset(tmp_path)
    (tmp_path / "ground_truth").mkdir()
    # p_click orders 3 of the 4 (clicked, unclicked) pairs rightly: AUC 0.75
    rows = [(1, 10, 1, 0.9), (1, 11, 0, 0.2), (2, 12, 1, 0.3), (2, 13, 0, 0.5)]
    (tmp_path / "ground_truth" / "test_ground_truth.txt").write_text(
        "".join(f"{u}\t{p}\t{c}\t{q:.6f}\n" for u, p, c, q in rows)
    )
    root, summary, seconds = given_dataset(tmp_path)
    assert root == tmp_path and seconds == 0.0
    assert summary["oracle_auc"] == pytest.approx(0.75)


# the generators written apart from kuai_assets.synth (benchmarks/), each at a tiny size
INDEPENDENT_WORLDS = [
    ("independent_world", ["--users", "30", "--train-rows-per-user", "120", "--test-rows-per-user", "30",
                           "--photos-per-user", "40", "--vector-dim", "8"]),
    # its feeds need a catalogue of about 100 users' uploads (fewer are refused, in one line)
    ("session_intent_world", ["--users", "100", "--train-rows-per-user", "600", "--test-rows-per-user", "170",
                              "--vector-dim", "8"]),
    ("feed_world", ["--users", "100", "--train-rows-per-user", "300", "--test-rows-per-user", "75",
                    "--vector-dim", "8"]),
]


def independent_worlds(seed: int) -> list[tuple[str, list[str]]]:
    return [(generator, [*options, "--seed", str(seed)]) for generator, options in INDEPENDENT_WORLDS]


@pytest.mark.parametrize("generator, options", independent_worlds(4))
def test_the_independent_worlds_are_read_as_released_data(tmp_path, generator, options):
    """Each generator written apart from kuai_assets.synth (benchmarks/) writes the released layout
    that the strict readers accept, and a ground truth for exactly the test rows; it refuses to write
    into a folder in use."""
    import importlib

    import duckdb

    from kuai_assets.formats import layout
    from kuai_assets.formats.released import read_faces, read_ground_truth, read_interactions, read_text

    world = importlib.import_module(f"benchmarks.{generator}")
    data = tmp_path / "world"
    assert world.main(["--out", str(data), *options]) == 0
    assert layout.layout_problem(data) is None
    con = duckdb.connect()
    report = read_interactions(con, data, tmp_path / "raw_interactions.parquet")
    assert report.rows["train"] > 0 and report.rows["test"] > 0
    con.execute(f"create table photos as select distinct photo_id, split from "
                f"read_parquet('{tmp_path / 'raw_interactions.parquet'}')")
    read_faces(con, data, "photos", tmp_path / "raw_faces.parquet")
    read_text(con, data, "photos", tmp_path / "raw_text.parquet")
    assert read_ground_truth(con, data / "ground_truth" / "test_ground_truth.txt") == report.rows["test"]
    unmatched = con.execute(
        f"select count(*) from read_parquet('{tmp_path / 'raw_interactions.parquet'}') r "
        "anti join ground_truth g using (user_id, photo_id) where r.split = 'test'"
    ).fetchall()[0][0]
    assert unmatched == 0
    assert world.main(["--out", str(data), *options]) == 2


@pytest.mark.parametrize("generator, options", independent_worlds(5))
def test_the_independent_worlds_give_the_true_click_probability_of_every_train_row(tmp_path, generator, options):
    """ground_truth/train_p_click.txt holds one line per train row, in the train file's order, with its
    keys and time, so a validation's scored rows can be read against their own oracle."""
    import importlib

    import pandas as pd

    world = importlib.import_module(f"benchmarks.{generator}")
    data = tmp_path / "world"
    assert world.main(["--out", str(data), *options]) == 0
    train = pd.read_csv(data / "train" / "train_interaction.txt", sep="\t", header=None)
    truth = pd.read_csv(data / "ground_truth" / "train_p_click.txt", sep="\t", header=None,
                        names=["user_id", "photo_id", "time", "p_click"])
    assert len(truth) == len(train)
    assert (truth["user_id"].to_numpy() == train[0].to_numpy()).all()
    assert (truth["photo_id"].to_numpy() == train[1].to_numpy()).all()
    assert (truth["time"].to_numpy() == train[5].to_numpy()).all()
    assert truth["p_click"].between(0, 1).all()
    # the clicks follow their probabilities: clicked rows have the higher true probability
    assert truth["p_click"][train[2] == 1].mean() > truth["p_click"][train[2] == 0].mean() + 0.03


def test_quality_reads_the_oracle_on_the_validations_own_rows(tmp_path):
    """With every train row's true probability beside the data, the oracle is also read on exactly the
    validation's scored rows; without that file there is no such figure; a file out of the train
    file's order is refused by name."""
    import pandas as pd
    import pyarrow as pa

    from benchmarks.quality import validation_oracle_auc
    from kuai_assets.ml.metrics import roc_auc

    data, work = tmp_path / "data", tmp_path / "work"
    (data / "ground_truth").mkdir(parents=True)
    (work / "tables").mkdir(parents=True)
    n = 12
    train = pd.DataFrame({"row_id": range(n), "split": "train", "user_id": [1, 2] * 6,
                          "photo_id": range(100, 100 + n), "time": range(1000, 1000 + n),
                          "click": [1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1]})
    test = pd.DataFrame({"row_id": [n], "split": "test", "user_id": [1], "photo_id": [999], "time": [5000], "click": [None]})
    pq.write_table(pa.Table.from_pandas(pd.concat([train, test]), preserve_index=False),
                   work / "tables" / "raw_interactions.parquet")
    scored = [6, 7, 8, 9, 10, 11]
    pq.write_table(pa.table({"setup": ["validation"] * n + ["submission"], "role": ["fit"] * 6 + ["scored"] * 6 + ["scored"],
                             "row_id": list(range(n)) + [n]}), work / "tables" / "model_rows.parquet")
    assert validation_oracle_auc(data, work) is None
    p_click = [0.1, 0.9, 0.8, 0.2, 0.3, 0.7, 0.3, 0.9, 0.8, 0.2, 0.1, 0.7]  # the fit rows ranked backwards
    truth = train[["user_id", "photo_id", "time"]].assign(p_click=p_click)
    truth.to_csv(data / "ground_truth" / "train_p_click.txt", sep="\t", header=False, index=False)
    expected = roc_auc(train["click"].to_numpy()[scored], pd.Series(p_click).to_numpy()[scored])
    assert validation_oracle_auc(data, work) == pytest.approx(expected)
    assert expected != pytest.approx(roc_auc(train["click"].to_numpy(), pd.Series(p_click).to_numpy()))
    truth.iloc[::-1].to_csv(data / "ground_truth" / "train_p_click.txt", sep="\t", header=False, index=False)
    with pytest.raises(ValueError, match="train_p_click.txt: its lines are not the train rows"):
        validation_oracle_auc(data, work)


@pytest.mark.parametrize("candidate", ["knn_visual", "visual_taste_full_prior", "visual_neighbour_rate",
                                       "user_cluster_factors", "within_cluster_tastes"])
def test_candidate_reads_no_label_of_the_rows_own_fold(materialized, candidate):
    """The candidate's columns of a fit row of fold f never read a click of fold f: flipping every
    fold-0 click leaves the fold-0 rows' columns as they were, and moves other rows' columns."""
    from benchmarks.candidate_columns import CANDIDATES, workspace_connection

    compute, names = CANDIDATES[candidate]
    tables = Path(materialized["work"]) / "tables"
    con = workspace_connection(tables)
    before = compute(con).to_pandas().sort_values(["setup", "row_id"]).reset_index(drop=True)
    con.sql("create or replace view label_history as select * replace "
            "(case when fold = 0 then 1 - click else click end as click) "
            f"from read_parquet('{tables / 'label_history.parquet'}')")
    after = compute(con).to_pandas().sort_values(["setup", "row_id"]).reset_index(drop=True)
    folds = con.sql("select setup, row_id, fold from model_rows").to_df()
    con.close()
    fold = before.merge(folds, on=["setup", "row_id"])["fold"].to_numpy()
    assert (fold == 0).any() and (fold != 0).any()
    columns = list(names) if names else [c for c in before.columns if c not in ("setup", "row_id")]
    assert columns
    same = np.isclose(before[columns], after[columns], rtol=1e-5, atol=1e-7, equal_nan=True).all(axis=1)
    assert same[fold == 0].all(), "a fold-0 row's columns read a fold-0 click"
    assert not same[fold != 0].all(), "the flipped clicks moved no other row: the columns read no label"


def test_nearest_photos_are_the_most_similar_in_order(monkeypatch):
    """Chunked brute force (chunks smaller than the queries) against a full sort of every cosine."""
    from benchmarks import candidate_columns

    monkeypatch.setattr(candidate_columns, "QUERY_CHUNK", 7)
    rng = np.random.default_rng(3)
    base = rng.normal(size=(50, 8)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[[4, 9, 30]] + 0.05 * rng.normal(size=(3, 8)).astype(np.float32)
    queries = np.vstack([queries, rng.normal(size=(17, 8)).astype(np.float32)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    positions, cosines = candidate_columns.nearest_photos(queries, base, 5)
    expected = np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :5]
    assert (positions == expected).all()
    assert np.allclose(cosines, np.take_along_axis(queries @ base.T, expected, axis=1))
    assert positions[:3, 0].tolist() == [4, 9, 30]
    assert candidate_columns.nearest_photos(queries, base[:3], 5)[0].shape == (20, 3)  # fewer than k: all of them


def test_hard_threshold_keeps_the_signal_rank_and_low_rank_denoises():
    """A rank-3 matrix under white noise: the threshold keeps 3 singular values (a pure-noise matrix
    keeps none of note), and the truncated SVD is nearer the signal than the noisy matrix is."""
    from benchmarks.candidate_columns import hard_threshold_rank, low_rank

    rng = np.random.default_rng(1)
    signal = rng.normal(size=(300, 3)) @ rng.normal(size=(3, 80)) * 0.5
    noisy = signal + rng.normal(size=signal.shape)
    assert hard_threshold_rank(np.linalg.svd(noisy, compute_uv=False), noisy.shape) == 3
    assert hard_threshold_rank(np.linalg.svd(rng.normal(size=(300, 80)), compute_uv=False), (300, 80)) <= 1
    estimate, rank = low_rank(noisy)
    assert rank == 3
    assert np.linalg.norm(estimate - signal) < 0.5 * np.linalg.norm(noisy - signal)


def test_full_prior_finds_the_axis_along_which_users_differ():
    """Users' directions that differ from the pooled one along one axis only: EM's covariance puts
    nearly all its variance there, and its directions recover each user's better than its
    isotropic start does (the same posterior with no EM step)."""
    from benchmarks.candidate_columns import full_prior_directions

    rng = np.random.default_rng(0)
    users, axes, rows = 400, 6, 60
    w_global = np.array([0.3, -0.2, 0.1, 0.0, 0.05, 0.0])
    truth = w_global + rng.normal(0.0, 0.4, users)[:, None] * np.eye(axes)[0]
    x = rng.normal(0.0, 1.0, (users, rows, axes))
    y = np.einsum("urd,ud->ur", x, truth) + rng.normal(0.0, 0.5, (users, rows))  # noise 0.25 = p (1 - p) at 0.5
    n = np.full(users, float(rows))
    sy = n / 2  # the smoothed rate (sy + 1) / (n + 2) = 0.5: the function's noise is 0.25
    centred_x, centred_y = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    raw, sx = np.einsum("uri,urj->uij", x, x), x.sum(axis=1)
    s_user = np.einsum("urd,ur->ud", centred_x, centred_y)
    fitted, eigenvalues = full_prior_directions(raw, n, sx, sy, s_user, w_global, tau2=0.01)
    start, _ = full_prior_directions(raw, n, sx, sy, s_user, w_global, tau2=0.01, iterations=0)
    assert eigenvalues[0] > 10 * eigenvalues[1]
    assert eigenvalues[0] == pytest.approx(0.16, rel=0.3)

    def error(w: np.ndarray) -> float:
        return float(np.mean((w - truth) ** 2))

    assert error(fitted) < 0.5 * error(start)


def test_candidate_columns_trains_the_model_with_and_without_the_candidate(materialized, tiny_data, tmp_path):
    from benchmarks import candidate_columns

    assert candidate_columns.main(["--work", str(materialized["work"]), "--data", str(tiny_data), "--out",
                                   str(tmp_path)]) == 0
    figures = json.loads((tmp_path / "candidate_knn_visual.json").read_text())
    for variant in ("without", "with"):
        assert 0.5 < figures[variant]["valid_auc"] < 1 and 0.5 < figures[variant]["test_auc"] < 1
    matrix = pq.read_schema(tmp_path / "candidate_matrix.parquet")
    assert set(candidate_columns.KNN_NAMES) <= set(matrix.names)
    # the workspace's own training matrix is left as it was
    assert not set(candidate_columns.KNN_NAMES) & set(pq.read_schema(Path(materialized["work"]) / "tables" /
                                                                      "training_matrix.parquet").names)


def test_candidate_columns_replaces_a_group_with_its_variant(materialized, tiny_data, tmp_path):
    from benchmarks import candidate_columns

    with pytest.raises(SystemExit, match="--replace visual_tast: not a default feature group"):
        candidate_columns.main(["--work", str(materialized["work"]), "--data", str(tiny_data), "--out", str(tmp_path),
                                "--candidate", "visual_taste_full_prior", "--replace", "visual_tast"])
    assert candidate_columns.main(["--work", str(materialized["work"]), "--data", str(tiny_data), "--out",
                                   str(tmp_path), "--candidate", "visual_taste_full_prior",
                                   "--replace", "visual_taste"]) == 0
    figures = json.loads((tmp_path / "candidate_visual_taste_full_prior.json").read_text())
    assert figures["replaced"] == "visual_taste"
    assert "visual_taste" in figures["without"]["groups"]
    assert figures["with"]["groups"] == [g for g in figures["without"]["groups"] if g != "visual_taste"] + [
        "visual_taste_full_prior"]
    for variant in ("without", "with"):
        assert 0.5 < figures[variant]["valid_auc"] < 1 and 0.5 < figures[variant]["test_auc"] < 1


def test_gbdt_params_summary_gives_each_variants_changes_against_the_defaults():
    from benchmarks.gbdt_params import summary_rows

    figures = {
        "a": {"defaults": {"valid_auc": 0.70, "test_auc": 0.71, "seconds": 10.0},
              "num_leaves 31": {"valid_auc": 0.72, "test_auc": 0.72, "seconds": 20.0}},
        "b": {"defaults": {"valid_auc": 0.80, "test_auc": 0.80, "seconds": 10.0},
              "num_leaves 31": {"valid_auc": 0.80, "test_auc": 0.79, "seconds": 10.0}},
    }
    header, rule, row = summary_rows(figures)
    assert header == "| variant | a | b | mean valid / test | both up | seconds vs defaults |"
    assert rule.count("---") == 6
    assert row == "| num_leaves 31 | +0.0200 / +0.0100 | +0.0000 / -0.0100 | +0.0100 / +0.0000 | 1 of 2 | 1.50x |"


def test_gbdt_params_trains_the_defaults_and_a_variant(materialized, tiny_data, tmp_path, capsys):
    from benchmarks import gbdt_params

    with pytest.raises(SystemExit, match=r"unknown variant\(s\) \['leaves 31'\]"):
        gbdt_params.main(["--work", str(materialized["work"]), "--data", str(tiny_data), "--variants", "leaves 31"])
    assert gbdt_params.main(["--work", str(materialized["work"]), "--data", str(tiny_data),
                             "--variants", "num_leaves 7,num_leaves 15", "--out", str(tmp_path)]) == 0
    figures = json.loads((tmp_path / "gbdt_params.json").read_text())
    runs = figures[Path(materialized["work"]).name]
    assert list(runs) == ["defaults", "num_leaves 7"]  # 15 leaves are the defaults: not trained twice
    assert all(0.5 < run["valid_auc"] < 1 and 0.5 < run["test_auc"] < 1 for run in runs.values())
    out = capsys.readouterr().out
    assert "the defaults already are num_leaves 15: not run twice" in out
    assert "| num_leaves 7 |" in out and "| num_leaves 15 |" not in out
