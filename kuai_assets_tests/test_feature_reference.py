"""Four feature tables agree with a brute-force pandas/Python reference on the tiny dataset.

The pipeline computes impression_context, user_cluster_affinity, user_word_affinity and
published_baseline with windows, subtractions of totals and joins written for scale. Each test
here recomputes the table from its definition with plain Python loops and pandas group-bys
(never SQL, never by subtracting a fold from a total), from the materialized input tables
(raw_interactions, raw_text, model_rows, label_history, video_clusters), and compares every row
and column. The tables are read from the work dir the session `materialized` fixture filled, so
whichever implementation the catalog names (SQL or Python) is the one under test.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from kuai_assets.storage import WorkDir

RTOL = 1e-5  # the tables store float32
ATOL = 1e-9  # exact zeros stay exact; this only absorbs rounding noise right at zero

HOUR_MS = 3_600_000

# smoothing constants of the definitions
CLUSTER_PRIOR_WEIGHT = 20  # population rate -> user prior (user_cluster_affinity)
CLUSTER_RATE_WEIGHT = 10  # user prior -> user x cluster rate
WORD_PRIOR_CLICKS, WORD_PRIOR_IMPRESSIONS = 2, 10  # user prior (user_word_affinity)
WORD_RATE_WEIGHT = 5  # user prior -> user x word rate


# -- reading and comparing --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tables(materialized):
    work = WorkDir(materialized["work"])
    cache: dict[str, pd.DataFrame] = {}

    def read(name: str) -> pd.DataFrame:
        if name not in cache:
            cache[name] = pd.read_parquet(work.require_table(name))
        return cache[name].copy()

    return read


def assert_same_table(
    actual: pd.DataFrame, expected: pd.DataFrame, keys: list[str], what: str, atol: float = ATOL
) -> None:
    """Same key set, and every non-key column equal within RTOL (or `atol`), nulls equal to nulls."""
    assert sorted(actual.columns) == sorted(expected.columns), f"{what}: columns differ"
    assert not actual.duplicated(keys).any(), f"{what}: the pipeline's grain {keys} is not unique"
    assert not expected.duplicated(keys).any(), f"{what}: the reference's grain {keys} is not unique"
    for key in keys:  # align key dtypes (e.g. int32 fold vs int64) before merging
        if pd.api.types.is_integer_dtype(actual[key]):
            actual = actual.astype({key: "int64"})
            expected = expected.astype({key: "int64"})
        else:
            actual = actual.astype({key: "object"})
            expected = expected.astype({key: "object"})
    merged = actual.merge(expected, on=keys, how="outer", suffixes=("_pipeline", "_reference"), indicator=True)
    only_pipeline = merged[merged["_merge"] == "left_only"]
    only_reference = merged[merged["_merge"] == "right_only"]
    assert only_pipeline.empty and only_reference.empty, (
        f"{what}: row sets differ: {len(only_pipeline)} rows only in the pipeline, e.g.\n"
        f"{only_pipeline[keys].head(5).to_string()}\n"
        f"{len(only_reference)} rows only in the reference, e.g.\n{only_reference[keys].head(5).to_string()}"
    )
    assert len(merged) > 0, f"{what}: no rows at all"
    problems = []
    for column in sorted(set(expected.columns) - set(keys)):
        got = merged[f"{column}_pipeline"].to_numpy(dtype="float64")
        want = merged[f"{column}_reference"].to_numpy(dtype="float64")
        same = np.isclose(got, want, rtol=RTOL, atol=atol, equal_nan=True)
        if not same.all():
            bad = merged.loc[~same, [*keys, f"{column}_pipeline", f"{column}_reference"]]
            problems.append(f"{column}: {len(bad)} of {len(merged)} rows differ, e.g.\n{bad.head(8).to_string()}")
    assert not problems, f"{what}:\n" + "\n".join(problems)


# -- impression_context -----------------------------------------------------------------------


def reference_impression_context(raw: pd.DataFrame) -> pd.DataFrame:
    records = []
    for split, log in raw.groupby("split"):
        split_hours = max((log["time"].max() - log["time"].min()) / HOUR_MS, 1.0)
        photo_times = {photo: rows["time"].to_numpy() for photo, rows in log.groupby("photo_id")}
        for user, rows in log.groupby("user_id"):
            times = rows["time"].to_numpy()
            row_ids = rows["row_id"].to_numpy()
            batch_times = sorted(set(times.tolist()))
            for row_id, photo, t in zip(row_ids, rows["photo_id"], times):
                in_batch = times == t
                b = batch_times.index(t)
                previous = batch_times[b - 1] if b > 0 else None
                following = batch_times[b + 1] if b + 1 < len(batch_times) else None
                shown = photo_times[photo]
                records.append(
                    {
                        "row_id": row_id,
                        "batch_size": in_batch.sum(),
                        "position_in_batch": 1 + (row_ids[in_batch] < row_id).sum(),
                        "seconds_since_previous_batch": np.nan if previous is None else (t - previous) / 1000,
                        "seconds_until_next_batch": np.nan if following is None else (following - t) / 1000,
                        "impressions_previous_1min": ((times >= t - 60_000) & (times <= t - 1)).sum(),
                        "impressions_previous_10min": ((times >= t - 600_000) & (times <= t - 1)).sum(),
                        "impressions_next_1min": ((times >= t + 1) & (times <= t + 60_000)).sum(),
                        "impressions_next_10min": ((times >= t + 1) & (times <= t + 600_000)).sum(),
                        "impressions_before_in_log": (times < t).sum(),
                        "impressions_remaining_in_log": (times > t).sum(),
                        "user_impressions_per_hour": len(times) / split_hours,
                        "photo_impressions_in_log": len(shown),
                        "photo_impressions_per_hour": len(shown) / ((shown.max() - shown.min()) / HOUR_MS + 1),
                        "hours_since_photo_first_shown": (t - shown.min()) / HOUR_MS,
                        "is_first_batch": int(previous is None),
                        "is_last_batch": int(following is None),
                    }
                )
    return pd.DataFrame.from_records(records)


def test_impression_context_matches_reference(tables):
    raw = tables("raw_interactions")
    expected = reference_impression_context(raw)
    assert len(expected) == len(raw)
    # the tiny data must exercise the interesting cases, or the comparison proves little
    assert (expected["batch_size"] > 1).any() and expected["seconds_since_previous_batch"].isna().any()
    assert (expected["impressions_next_1min"] > 0).any() and set(raw["split"]) == {"train", "test"}
    assert_same_table(tables("impression_context"), expected, ["row_id"], "impression_context")


# -- user_cluster_affinity --------------------------------------------------------------------


def reference_user_cluster_affinity(label_history, video_clusters, model_rows) -> pd.DataFrame:
    history = label_history.merge(video_clusters[["photo_id", "k", "cluster"]], on="photo_id")
    history = history.astype({"click": "int64", "playing_time": "int64", "duration_time": "int64"})
    history["playing_seconds"] = np.minimum(history["playing_time"], 2 * history["duration_time"] + 60)
    parts = []
    for (setup, fold), _ in model_rows.groupby(["setup", "fold"]):
        # every fold present in model_rows (-1 for the scored rows) sees its setup's other folds
        out_of_fold = history[(history["setup"] == setup) & (history["fold"] != fold)]
        for k, at_k in out_of_fold.groupby("k"):
            population_rate = at_k["click"].sum() / len(at_k)
            users = at_k.groupby("user_id").agg(user_impressions=("click", "size"), user_clicks=("click", "sum"))
            users["prior"] = (users["user_clicks"] + CLUSTER_PRIOR_WEIGHT * population_rate) / (
                users["user_impressions"] + CLUSTER_PRIOR_WEIGHT
            )
            cells = at_k.groupby(["user_id", "cluster"]).agg(
                impressions=("click", "size"), clicks=("click", "sum"), playing_seconds=("playing_seconds", "sum")
            )
            cells = cells.reset_index().merge(users["prior"].reset_index(), on="user_id", how="left")
            rate = (cells["clicks"] + CLUSTER_RATE_WEIGHT * cells["prior"]) / (
                cells["impressions"] + CLUSTER_RATE_WEIGHT
            )
            parts.append(
                pd.DataFrame(
                    {
                        "setup": setup,
                        "fold": fold,
                        "user_id": cells["user_id"],
                        "k": k,
                        "cluster": cells["cluster"],
                        "user_cluster_impressions": cells["impressions"],
                        "user_cluster_click_rate": rate,
                        "user_cluster_click_lift": rate / cells["prior"],
                        "user_cluster_playing_seconds": cells["playing_seconds"] / cells["impressions"],
                    }
                )
            )
    return pd.concat(parts, ignore_index=True)


def test_user_cluster_affinity_matches_reference(tables):
    label_history, video_clusters, model_rows = tables("label_history"), tables("video_clusters"), tables("model_rows")
    assert not label_history[["click", "playing_time", "duration_time"]].isna().any().any()
    assert not video_clusters.duplicated(["photo_id", "k"]).any(), "one cluster per photo and k"
    expected = reference_user_cluster_affinity(label_history, video_clusters, model_rows)
    assert set(expected["fold"]) == {-1, 0, 1, 2, 3, 4} and set(expected["setup"]) == {"validation", "submission"}
    # some playing times are capped, or the cap is untested
    capped = label_history["playing_time"] > 2 * label_history["duration_time"] + 60
    assert capped.any()
    keys = ["setup", "fold", "user_id", "k", "cluster"]
    assert_same_table(tables("user_cluster_affinity"), expected, keys, "user_cluster_affinity")


# -- user_word_affinity -----------------------------------------------------------------------


def reference_user_word_affinity(label_history, raw_text, model_rows) -> pd.DataFrame:
    """A word listed twice on a cover is two words, everywhere (as unnesting the list reads it).

    So a scored photo's repeated word counts twice in the mean and in user_word_impressions, and a
    history impression of a photo listing w twice counts as two impressions (and its click as two
    clicks) of w. The second is what the pipeline does; counting such a history row once instead
    changes about 13,000 of the 46,000 tiny rows (about 200 tiny covers repeat a word).
    """
    words_of = {
        photo: [] if words is None else list(words) for photo, words in zip(raw_text["photo_id"], raw_text["words"])
    }
    records = []
    for (setup, fold), rows in model_rows.groupby(["setup", "fold"]):
        setup_history = label_history[label_history["setup"] == setup]
        users_with_history = set(setup_history["user_id"])
        out_of_fold = setup_history[setup_history["fold"] != fold]
        user_counts = defaultdict(lambda: [0, 0])  # user -> [impressions, clicks]
        word_counts = defaultdict(lambda: [0, 0])  # (user, word) -> [impressions, clicks]
        for user, photo, click in zip(out_of_fold["user_id"], out_of_fold["photo_id"], out_of_fold["click"]):
            user_counts[user][0] += 1
            user_counts[user][1] += int(click)
            for word in words_of.get(photo, []):
                word_counts[user, word][0] += 1
                word_counts[user, word][1] += int(click)
        for row_id, user, photo in zip(rows["row_id"], rows["user_id"], rows["photo_id"]):
            words = words_of.get(photo, [])
            if user not in users_with_history or not words:
                continue
            if user in user_counts:
                impressions, clicks = user_counts[user]
                prior = (clicks + WORD_PRIOR_CLICKS) / (impressions + WORD_PRIOR_IMPRESSIONS)
            else:
                prior = None
            values, impressions_sum = [], 0
            for word in words:
                impressions, clicks = word_counts.get((user, word), (0, 0))
                impressions_sum += impressions
                if prior is not None:
                    values.append((clicks + WORD_RATE_WEIGHT * prior) / (impressions + WORD_RATE_WEIGHT))
            records.append(
                {
                    "setup": setup,
                    "row_id": row_id,
                    "user_word_click_rate_mean": sum(values) / len(values) if values else np.nan,
                    "user_word_click_rate_max": max(values) if values else np.nan,
                    "user_word_impressions": impressions_sum,
                }
            )
    return pd.DataFrame.from_records(records)


def test_user_word_affinity_matches_reference(tables):
    label_history, raw_text, model_rows = tables("label_history"), tables("raw_text"), tables("model_rows")
    assert set(model_rows["fold"]) == {-1, 0, 1, 2, 3, 4}
    expected = reference_user_word_affinity(label_history, raw_text, model_rows)
    # the tiny data must include photos without words and words shared between photos
    assert (raw_text["words"].map(len) == 0).any()
    assert len(expected) < len(model_rows) and (expected["user_word_impressions"] > 0).mean() > 0.1
    assert_same_table(tables("user_word_affinity"), expected, ["setup", "row_id"], "user_word_affinity")


# -- published_baseline -----------------------------------------------------------------------


def mean_labels(history: pd.DataFrame, rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per row of `rows`: the count and mean click and playing_time of the `history` rows sharing its keys.

    NaN where there are none (a row whose key is NaN has none: group-by drops NaN keys).
    """
    stats = history.groupby(keys).agg(
        n=("click", "size"), click=("click", "mean"), playing_time=("playing_time", "mean")
    )
    return rows[keys].merge(stats.reset_index(), on=keys, how="left")


def reference_published_baseline(label_history, video_clusters, model_rows, raw_interactions) -> pd.DataFrame:
    levels = {"coarse": video_clusters["k"].min(), "fine": video_clusters["k"].max()}
    cluster_of = {
        level: video_clusters[video_clusters["k"] == k].set_index("photo_id")["cluster"].astype("float64")
        for level, k in levels.items()
    }
    duration_of = raw_interactions.set_index("row_id")["duration_time"]
    history = label_history.astype({"click": "float64", "playing_time": "float64"})
    parts = []
    for (setup, fold), rows in model_rows.groupby(["setup", "fold"]):
        setup_history = history[history["setup"] == setup]
        out_of_fold = setup_history[setup_history["fold"] != fold]  # the scored rows (fold -1) see it all
        rows = rows.reset_index(drop=True)
        user = mean_labels(out_of_fold, rows, ["user_id"])
        part = pd.DataFrame({"setup": setup, "row_id": rows["row_id"]})
        part["baseline_user_click"] = user["click"]
        part["baseline_user_playing_time"] = user["playing_time"]
        # 0 when all the user's history is in this fold, NaN when the user has none in this setup
        part["baseline_user_rows"] = user["n"].fillna(0).where(rows["user_id"].isin(setup_history["user_id"]))
        for level, clusters in cluster_of.items():
            rows["cluster"] = rows["photo_id"].map(clusters)
            in_clusters = out_of_fold.assign(cluster=out_of_fold["photo_id"].map(clusters))
            cluster = mean_labels(in_clusters, rows, ["cluster"])
            pair = mean_labels(in_clusters, rows, ["user_id", "cluster"])
            for label in ["click", "playing_time"]:
                part[f"baseline_cluster_{label}_{level}"] = cluster[label]
                # a pair without history out of fold falls back to the user's mean; no cluster, no value
                fallback = pair[label].fillna(user[label])
                part[f"baseline_user_cluster_{label}_{level}"] = fallback.where(rows["cluster"].notna())
        part["baseline_hour"] = rows["time"] // HOUR_MS % 24
        part["baseline_duration_time"] = rows["row_id"].map(duration_of)
        parts.append(part)
    expected = pd.concat(parts, ignore_index=True)
    return expected.astype({column: "float32" for column in expected.columns if column.startswith("baseline_")})


def test_published_baseline_matches_reference(tables):
    label_history, video_clusters, model_rows = tables("label_history"), tables("video_clusters"), tables("model_rows")
    raw = tables("raw_interactions")
    assert not raw["row_id"].duplicated().any() and set(model_rows["fold"]) == {-1, 0, 1, 2, 3, 4}
    expected = reference_published_baseline(label_history, video_clusters, model_rows, raw)
    assert len(expected) == len(model_rows) and expected["baseline_cluster_click_fine"].isna().any()
    # the tiny data must hold (user, fine cluster) pairs whose whole history is in the row's own fold
    # (the pair's mean is undefined there, and the user's mean stands in)
    fine = video_clusters[video_clusters["k"] == video_clusters["k"].max()].set_index("photo_id")["cluster"]
    keys = ["setup", "user_id", "cluster"]
    pairs = label_history.assign(cluster=label_history["photo_id"].map(fine))
    rows = model_rows.assign(cluster=model_rows["photo_id"].map(fine))
    rows = rows.join(pairs.groupby([*keys, "fold"]).size().rename("in_fold"), on=[*keys, "fold"], how="inner")
    rows = rows.join(pairs.groupby(keys).size().rename("total"), on=keys)
    assert (rows["in_fold"] == rows["total"]).any()
    assert_same_table(tables("published_baseline"), expected, ["setup", "row_id"], "published_baseline")


# -- the edge cases the tiny data lacks --------------------------------------------------------


def rematerialize(materialized, tmp_path, edited: dict[str, pd.DataFrame], names: list[str]) -> WorkDir:
    """A work dir holding the fixture's tables, the `edited` ones replaced, and `names` recomputed.

    The tables are computed by whatever the catalog names (SQL or Python), in the order given.
    """
    from kuai_assets.features.catalog import load_catalog
    from kuai_assets.features.runner import materialize_table_model

    source, work = WorkDir(materialized["work"]), WorkDir(tmp_path / "work")
    work.tables.mkdir(parents=True)
    catalog = load_catalog()
    needed = {t for name in names for t in catalog[name].upstream} - set(names) - set(edited)
    for name in sorted(needed):
        (work.tables / f"{name}.parquet").write_bytes(source.require_table(name).read_bytes())
    for name, table in edited.items():
        table.to_parquet(work.table_path(name), index=False)
    for name in names:
        materialize_table_model(catalog[name], work)
    return work


def drop_submission_history(model_rows: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """model_rows where one user's submission fit rows are all in fold 0 and another user has none."""
    submission_fit = (model_rows["setup"] == "submission") & (model_rows["role"] == "fit")
    users = sorted(model_rows["user_id"].unique())
    one_fold_user, no_history_user = users[0], users[1]
    drop = submission_fit & (
        ((model_rows["user_id"] == one_fold_user) & (model_rows["fold"] != 0))
        | (model_rows["user_id"] == no_history_user)
    )
    return model_rows[~drop].reset_index(drop=True), one_fold_user, no_history_user


def test_label_affinities_match_reference_for_users_without_out_of_fold_history(materialized, tmp_path, tables):
    """One user's submission history lies in fold 0 alone, another's submission history is empty.

    On the tiny data every user has history in every fold of both setups, so neither case occurs
    there; this edits model_rows (and so label_history) to make both occur, then recomputes.
    """
    edited, one_fold_user, no_history_user = drop_submission_history(tables("model_rows"))
    names = ["label_history", "user_cluster_affinity", "user_word_affinity"]
    work = rematerialize(materialized, tmp_path, {"model_rows": edited}, names)
    read = lambda name: pd.read_parquet(work.require_table(name))  # noqa: E731
    label_history, raw_text, video_clusters = read("label_history"), tables("raw_text"), tables("video_clusters")
    submission_history = label_history[label_history["setup"] == "submission"]
    assert set(submission_history.loc[submission_history["user_id"] == one_fold_user, "fold"]) == {0}
    assert not (submission_history["user_id"] == no_history_user).any()

    # the edited rows the two cases concern must exist and have words, or nothing is tested
    has_words = set(raw_text.loc[raw_text["words"].map(len) > 0, "photo_id"])
    edited_submission = edited[(edited["setup"] == "submission") & edited["photo_id"].isin(has_words)]
    one_fold_rows = edited_submission[
        (edited_submission["user_id"] == one_fold_user) & (edited_submission["fold"] == 0)
    ]
    no_history_rows = edited_submission[edited_submission["user_id"] == no_history_user]
    assert len(one_fold_rows) > 0 and len(no_history_rows) > 0

    words = reference_user_word_affinity(label_history, raw_text, edited)
    actual_words = read("user_word_affinity")
    assert_same_table(actual_words, words, ["setup", "row_id"], "user_word_affinity (edited rows)")
    # spelled out: no prior where no history out of fold, no row where no history at all
    actual_words = actual_words[actual_words["setup"] == "submission"].set_index("row_id")
    null_prior = actual_words.loc[one_fold_rows["row_id"]]
    assert null_prior["user_word_click_rate_mean"].isna().all() and null_prior["user_word_click_rate_max"].isna().all()
    assert (null_prior["user_word_impressions"] == 0).all()
    assert not actual_words.index.isin(no_history_rows["row_id"]).any()

    clusters = reference_user_cluster_affinity(label_history, video_clusters, edited)
    actual_clusters = read("user_cluster_affinity")
    keys = ["setup", "fold", "user_id", "k", "cluster"]
    assert_same_table(actual_clusters, clusters, keys, "user_cluster_affinity (edited rows)")
    submission = actual_clusters[actual_clusters["setup"] == "submission"]
    assert set(submission.loc[submission["user_id"] == one_fold_user, "fold"]) == {-1, 1, 2, 3, 4}
    assert not (submission["user_id"] == no_history_user).any()


def test_published_baseline_matches_reference_on_edited_rows(materialized, tmp_path, tables):
    """The users of the test above, plus a photo without any cluster and one without a fine cluster.

    On the tiny data every photo has a cluster at every k; this drops one photo from video_clusters
    and another from its finest k.
    """
    edited, one_fold_user, no_history_user = drop_submission_history(tables("model_rows"))
    video_clusters = tables("video_clusters")
    no_cluster_photo, coarse_only_photo = edited["photo_id"].value_counts().index[:2]
    fine = video_clusters["k"] == video_clusters["k"].max()
    video_clusters = video_clusters[
        (video_clusters["photo_id"] != no_cluster_photo) & ~(fine & (video_clusters["photo_id"] == coarse_only_photo))
    ]
    edits = {"model_rows": edited, "video_clusters": video_clusters}
    work = rematerialize(materialized, tmp_path, edits, ["label_history", "published_baseline"])
    label_history = pd.read_parquet(work.require_table("label_history"))
    expected = reference_published_baseline(label_history, video_clusters, edited, tables("raw_interactions"))
    actual = pd.read_parquet(work.require_table("published_baseline"))
    assert_same_table(actual, expected, ["setup", "row_id"], "published_baseline (edited rows)")

    # spelled out, on rows that must exist: no user, no user mean, no cluster, no fine cluster
    rows = actual.merge(edited, on=["setup", "row_id"])
    user_columns = [c for c in rows if c.startswith("baseline_user_") and c != "baseline_user_rows"]
    submission = rows[rows["setup"] == "submission"]
    no_history = submission[submission["user_id"] == no_history_user]
    assert len(no_history) > 0 and no_history[[*user_columns, "baseline_user_rows"]].isna().all().all()
    one_fold = submission[(submission["user_id"] == one_fold_user) & (submission["fold"] == 0)]
    assert len(one_fold) > 0 and (one_fold["baseline_user_rows"] == 0).all()
    assert one_fold[user_columns].isna().all().all()
    no_cluster = rows.loc[rows["photo_id"] == no_cluster_photo, [c for c in rows if "_cluster_" in c]]
    assert len(no_cluster) > 0 and no_cluster.isna().all().all()
    coarse_only = rows[rows["photo_id"] == coarse_only_photo]
    assert coarse_only[[c for c in rows if "_cluster_" in c and c.endswith("_fine")]].isna().all().all()
    assert len(coarse_only) > 0 and coarse_only["baseline_cluster_click_coarse"].notna().all()


@pytest.mark.parametrize("name", ["published_baseline", "user_cluster_affinity"])
def test_chunks_of_users_give_the_same_table_as_one_chunk(materialized, tmp_path, tables, monkeypatch, name):
    """The (user, cluster) sums counted a few users at a time give the table counted at once."""
    from kuai_assets.features import fold_statistics
    from kuai_assets.features.catalog import load_catalog
    from kuai_assets.features.runner import materialize_table_model

    model = load_catalog()[name]
    source, work = WorkDir(materialized["work"]), WorkDir(tmp_path / "work")
    work.tables.mkdir(parents=True)
    for upstream in model.upstream:
        (work.tables / f"{upstream}.parquet").write_bytes(source.require_table(upstream).read_bytes())
    users = tables("label_history").groupby("setup")["user_id"].nunique().min()
    # about five users per chunk at k=500 and five folds
    monkeypatch.setattr(fold_statistics, "CELLS_PER_CHUNK", 5 * 5 * 500)
    messages: list[str] = []
    materialize_table_model(model, work, log=messages.append)
    chunks = [int(m.split("(")[1].split(" chunk")[0]) for m in messages if "chunk(s) of users" in m]
    assert chunks and min(chunks) >= users // 5, messages
    in_chunks = pd.read_parquet(work.require_table(name))
    assert_same_table(in_chunks, tables(name), list(model.grain), f"{name} in chunks of users")


def test_numpy_groups_write_null_not_nan_for_users_without_clicks(materialized, tmp_path, tables):
    """A user who never clicked has no clicked centroid: visual_similarity_clicked is null (missing
    by design, as training_matrix's check requires), never NaN; likewise in the other numpy groups."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    label_history = tables("label_history")
    user = sorted(label_history["user_id"].unique())[0]
    label_history.loc[label_history["user_id"] == user, "click"] = 0
    names = ["visual_similarity", "user_cluster_affinity", "published_baseline", "user_word_affinity"]
    work = rematerialize(materialized, tmp_path, {"label_history": label_history}, names)
    for name in names:
        table = pq.read_table(work.require_table(name))
        floats = [f.name for f in table.schema if f.type in ("float", "double")]
        nan_values = {c: pc.sum(pc.is_nan(table[c])).as_py() for c in floats}
        assert floats and not any(nan_values.values()), f"{name} wrote NaN instead of null: {nan_values}"
    rows = pd.read_parquet(work.require_table("visual_similarity")).merge(tables("model_rows")[["setup", "row_id", "user_id"]])
    assert rows.loc[rows["user_id"] == user, "visual_similarity_clicked"].isna().all()
    assert rows.loc[rows["user_id"] != user, "visual_similarity_clicked"].notna().any()
