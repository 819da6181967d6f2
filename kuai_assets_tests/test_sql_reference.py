"""The SQL feature groups, visual_similarity and session_context agree with a brute-force pandas reference on the
tiny data.

Each reference recomputes one table from the description in its header (the SQL file's comment,
the Python group's docstring), reading the SQL only to pin exact definitions (smoothing weights,
caps, which rows have a row), with pandas group-bys and plain loops, from the upstream tables of
the session's materialized work dir, and is compared with the pipeline's table: same keys, every
value within RTOL (test_feature_reference.assert_same_table). Out-of-fold statistics are counted
by brute force: for each (setup, fold) of model_rows, the fit rows of label_history whose fold
differs are aggregated afresh (never a fold subtracted from a total, as the SQL does).

A word listed twice on a cover counts twice wherever the cover's words are unnested (the
convention of test_feature_reference.reference_user_word_affinity).

test_reference_can_fail changes one input row given to each reference (never the pipeline's
tables) and requires the comparison to fail on the column that row feeds, and
test_reference_constants_are_pinned moves each smoothing weight or threshold by one, so no
reference passes whatever it computes. The last test recomputes the label groups on inputs edited
to hold what the tiny data lacks: a user whose history lies in one fold, one without history, one
who never clicked.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from kuai_assets_tests.test_feature_reference import ATOL, assert_same_table, tables  # noqa: F401 (fixture)

Read = Callable[[str], pd.DataFrame]

# the definitions' constants, as the headers and the SQL state them
USER_PRIOR_WEIGHT = 20  # user_behaviour: pseudo-impressions at the population's rates
USER_PLAYING_SECONDS_PER_PSEUDO = 20  # ... each pseudo-impression watched 20 s of clicked duration
LIKE_PER_CLICK_PRIOR = (1, 20)  # user_behaviour: (likes + 1) / (clicks + 20)
CLUSTER_PRIOR_WEIGHT = 50  # cluster_stats
CLUSTER_PLAYING_SECONDS_PER_PSEUDO = 20
FACE_RATE_WEIGHT = 10  # user_face_preference: pseudo-impressions at the user's own rate
FACE_USER_PRIOR = (2, 10)  # the user's own rate: (clicks + 2) / (impressions + 10)
ATTRACTIVE_APPEARANCE = 70  # the highest appearance score on the cover, at least this
TEXT_RATE_WEIGHT = 10  # user_attribute_taste: pseudo-impressions at the user's own rate
TEXT_USER_PRIOR = (2, 10)  # the user's own rate: (clicks + 2) / (impressions + 10)
DURATION_SLOPE_PSEUDO = 30  # ... impressions' worth of the population's log-duration variance
WITHIN_SLOPE_PSEUDO = 30  # user_taste_within_clusters: rows' worth of the population's within-cell variance
WORD_RATE_WEIGHT = 30  # word_click_rates
RARE_WORD_PHOTOS = 5  # text_stats: a word on fewer covers than this is rare
PHOTO_VISUAL_COMPONENTS = 16
# visual_similarity computes its cosines in float32 (unit vectors and centroids stored as float32):
# a cosine near 0 has no relative precision, so cosines compare within this absolute difference
# (at most 2e-7 on the tiny data) as well as within RTOL
COSINE_ATOL = 1e-6


def out_of_fold_histories(label_history: pd.DataFrame, model_rows: pd.DataFrame):
    """(setup, fold, the setup's fit rows of every other fold) for each (setup, fold) of model_rows.

    Scored rows have fold -1, which no fit row has: they see every fit row of their setup.
    """
    for (setup, fold), _ in model_rows.groupby(["setup", "fold"]):
        history = label_history[(label_history["setup"] == setup) & (label_history["fold"] != fold)]
        yield setup, fold, history


def with_playing_seconds(label_history: pd.DataFrame) -> pd.DataFrame:
    """Integer labels, and the watching time every statistic reads: playing_time capped at twice
    the duration plus a minute (recomputed here, not read from label_history's own column)."""
    history = label_history.astype({c: "int64" for c in ["click", "like", "follow", "playing_time", "duration_time"]})
    history["playing_seconds"] = np.minimum(history["playing_time"], 2 * history["duration_time"] + 60)
    history["clicked_duration"] = history["duration_time"] * history["click"]
    return history.drop(columns=["playing_time"])


def words_of(raw_text: pd.DataFrame) -> dict[int, list[int]]:
    return {photo: [] if words is None else list(words) for photo, words in zip(raw_text["photo_id"], raw_text["words"])}


# -- user_behaviour ---------------------------------------------------------------------------


def reference_user_behaviour(read: Read) -> pd.DataFrame:
    label_history, model_rows = read("label_history"), read("model_rows")
    history = with_playing_seconds(label_history.drop(columns=["playing_seconds"]))
    parts = []
    for setup, fold, rows in out_of_fold_histories(history, model_rows):
        click_rate = rows["click"].sum() / len(rows)
        like_rate = rows["like"].sum() / len(rows)
        follow_rate = rows["follow"].sum() / len(rows)
        playing_ratio = rows["playing_seconds"].sum() / max(rows["clicked_duration"].sum(), 1)
        u = rows.groupby("user_id").agg(
            n=("click", "size"),
            clicks=("click", "sum"),
            likes=("like", "sum"),
            follows=("follow", "sum"),
            playing_seconds=("playing_seconds", "sum"),
            clicked_duration=("clicked_duration", "sum"),
            shown_duration=("duration_time", "sum"),
        )
        w, s = USER_PRIOR_WEIGHT, USER_PLAYING_SECONDS_PER_PSEUDO
        clicks_or_one = u["clicks"].clip(lower=1)
        parts.append(
            pd.DataFrame(
                {
                    "setup": setup,
                    "fold": fold,
                    "user_id": u.index,
                    "user_impressions": u["n"],
                    "user_click_rate": (u["clicks"] + w * click_rate) / (u["n"] + w),
                    "user_like_rate": (u["likes"] + w * like_rate) / (u["n"] + w),
                    "user_follow_rate": (u["follows"] + w * follow_rate) / (u["n"] + w),
                    "user_like_per_click": (u["likes"] + LIKE_PER_CLICK_PRIOR[0]) / (u["clicks"] + LIKE_PER_CLICK_PRIOR[1]),
                    "user_playing_ratio": (u["playing_seconds"] + w * s * playing_ratio) / (u["clicked_duration"] + w * s),
                    "user_playing_seconds_per_click": u["playing_seconds"] / clicks_or_one,
                    "user_clicked_duration": u["clicked_duration"] / clicks_or_one,
                    "user_duration_click_lift": (u["clicked_duration"] / clicks_or_one)
                    / (u["shown_duration"] / u["n"]).clip(lower=1),
                }
            ).reset_index(drop=True)
        )
    return pd.concat(parts, ignore_index=True)


# -- cluster_stats ----------------------------------------------------------------------------


def reference_cluster_stats(read: Read) -> pd.DataFrame:
    label_history, model_rows, video_clusters = read("label_history"), read("model_rows"), read("video_clusters")
    history = with_playing_seconds(label_history.drop(columns=["playing_seconds"]))
    # a photo without a cluster at k counts nowhere at k, not even in the population
    history = history.merge(video_clusters[["photo_id", "k", "cluster"]], on="photo_id")
    parts = []
    for setup, fold, rows in out_of_fold_histories(history, model_rows):
        for k, at_k in rows.groupby("k"):
            click_rate = at_k["click"].sum() / len(at_k)
            like_rate = at_k["like"].sum() / len(at_k)
            playing_ratio = at_k["playing_seconds"].sum() / max(at_k["clicked_duration"].sum(), 1)
            c = at_k.groupby("cluster").agg(
                n=("click", "size"),
                clicks=("click", "sum"),
                likes=("like", "sum"),
                playing_seconds=("playing_seconds", "sum"),
                clicked_duration=("clicked_duration", "sum"),
            )
            w, s = CLUSTER_PRIOR_WEIGHT, CLUSTER_PLAYING_SECONDS_PER_PSEUDO
            parts.append(
                pd.DataFrame(
                    {
                        "setup": setup,
                        "fold": fold,
                        "k": k,
                        "cluster": c.index,
                        "cluster_impressions": c["n"],
                        "cluster_click_rate": (c["clicks"] + w * click_rate) / (c["n"] + w),
                        "cluster_like_rate": (c["likes"] + w * like_rate) / (c["n"] + w),
                        "cluster_playing_ratio": (c["playing_seconds"] + w * s * playing_ratio)
                        / (c["clicked_duration"] + w * s),
                    }
                ).reset_index(drop=True)
            )
    return pd.concat(parts, ignore_index=True)


# -- user_face_preference ---------------------------------------------------------------------


def face_categories(raw_faces: pd.DataFrame) -> pd.DataFrame:
    """Per photo with a face: the cover's categories, from its faces' mean gender and age and best appearance."""
    photos = raw_faces.groupby("photo_id").agg(
        male_share=("gender", "mean"), age=("age", "mean"), appearance=("appearance", "max")
    )
    return pd.DataFrame(
        {
            "face": True,
            "female": photos["male_share"] == 0,
            "male": photos["male_share"] == 1,
            "under_20": photos["age"] < 20,
            "20_30": (photos["age"] >= 20) & (photos["age"] < 30),
            "over_30": photos["age"] >= 30,
            "attractive": photos["appearance"] >= ATTRACTIVE_APPEARANCE,
        },
        index=photos.index,
    )


FACE_COLUMNS = {
    "face": "user_click_rate_with_face",
    "female": "user_click_rate_female_face",
    "male": "user_click_rate_male_face",
    "under_20": "user_click_rate_face_under_20",
    "20_30": "user_click_rate_face_20_30",
    "over_30": "user_click_rate_face_over_30",
    "attractive": "user_click_rate_attractive_face",
}


def reference_user_face_preference(read: Read) -> pd.DataFrame:
    label_history, model_rows, raw_faces = read("label_history"), read("model_rows"), read("raw_faces")
    categories = face_categories(raw_faces)
    history = label_history.astype({"click": "int64"}).join(categories, on="photo_id")
    history[list(FACE_COLUMNS)] = history[list(FACE_COLUMNS)].fillna(False).astype(bool)  # no face: no category
    history["no_face"] = ~history["face"]
    columns = {**FACE_COLUMNS, "no_face": "user_click_rate_without_face"}
    for category in columns:  # impressions and clicks of the category
        history[f"clicked_{category}"] = history[category] * history["click"]
    parts = []
    for setup, fold, rows in out_of_fold_histories(history, model_rows):
        users = rows.groupby("user_id").sum(numeric_only=True)
        n = rows.groupby("user_id").size()
        prior = (users["click"] + FACE_USER_PRIOR[0]) / (n + FACE_USER_PRIOR[1])
        part = pd.DataFrame({"setup": setup, "fold": fold, "user_id": n.index}, index=n.index)
        for category, column in columns.items():
            part[column] = (users[f"clicked_{category}"] + FACE_RATE_WEIGHT * prior) / (
                users[category] + FACE_RATE_WEIGHT
            )
        part["user_face_click_lift"] = part["user_click_rate_with_face"] - part["user_click_rate_without_face"]
        parts.append(part.reset_index(drop=True))
    return pd.concat(parts, ignore_index=True)


# -- user_face_match --------------------------------------------------------------------------


def photo_face_kinds(raw_faces: pd.DataFrame, photo_ids) -> pd.DataFrame:
    """Per photo, the kind of face its cover shows by gender, age band and appearance ('none'
    without a face), and the three at once."""
    photos = raw_faces.groupby("photo_id").agg(
        male_share=("gender", "mean"), age=("age", "mean"), appearance=("appearance", "max")
    ).reindex(pd.Index(sorted(set(photo_ids)), name="photo_id"))
    face = photos["male_share"].notna()
    kinds = pd.DataFrame(index=photos.index)
    kinds["gender"] = np.select(
        [~face, photos["male_share"] == 0, photos["male_share"] == 1], ["none", "female", "male"], "both")
    kinds["age"] = np.select([~face, photos["age"] < 20, photos["age"] < 30], ["none", "under_20", "20_30"], "over_30")
    kinds["appearance"] = np.select([~face, photos["appearance"] >= ATTRACTIVE_APPEARANCE], ["none", "high"], "low")
    kinds["kind"] = kinds["gender"] + "/" + kinds["age"] + "/" + kinds["appearance"]
    return kinds


def reference_user_face_match(read: Read) -> pd.DataFrame:
    """Per row, the user's out-of-fold click rate on covers of the row's photo's face kind (each
    dimension, and all at once), smoothed toward the user's own rate, and its lift over it."""
    label_history, model_rows, raw_faces = read("label_history"), read("model_rows"), read("raw_faces")
    kinds = photo_face_kinds(raw_faces, model_rows["photo_id"])
    history = label_history.astype({"click": "int64"}).join(kinds, on="photo_id")
    parts = []
    for (setup, fold), rows in model_rows.groupby(["setup", "fold"]):
        seen = history[(history["setup"] == setup) & (history["fold"] != fold)]
        users = seen.groupby("user_id")["click"].agg(["sum", "size"])
        prior = (users["sum"] + FACE_USER_PRIOR[0]) / (users["size"] + FACE_USER_PRIOR[1])
        part = rows[["setup", "row_id"]].copy()
        row_prior = rows["user_id"].map(prior)
        for dimension in ["gender", "age", "appearance", "kind"]:
            counts = seen.groupby(["user_id", dimension])["click"].agg(["sum", "size"])
            key = pd.MultiIndex.from_arrays([rows["user_id"], rows["photo_id"].map(kinds[dimension])])
            clicks = counts["sum"].reindex(key).fillna(0).to_numpy()
            n = counts["size"].reindex(key).fillna(0).to_numpy()
            rate = (clicks + FACE_RATE_WEIGHT * row_prior.to_numpy()) / (n + FACE_RATE_WEIGHT)
            part[f"face_match_rate_{dimension}"] = rate
            part[f"face_match_lift_{dimension}"] = rate - row_prior.to_numpy()
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


# -- user_attribute_taste ---------------------------------------------------------------------


def reference_user_attribute_taste(read: Read) -> pd.DataFrame:
    label_history, model_rows, raw_text = read("label_history"), read("model_rows"), read("raw_text")
    with_words = set(raw_text.loc[raw_text["words"].map(len) > 0, "photo_id"])
    history = label_history.astype({"click": "int64"})
    history["text"] = history["photo_id"].isin(with_words)
    history["x"] = np.log1p(history["duration_time"].astype(float))
    parts = []
    for setup, fold, rows in out_of_fold_histories(history, model_rows):
        population_variance = rows["x"].var(ddof=0)  # over every fit row outside the fold
        for user_id, mine in rows.groupby("user_id"):
            n, clicks = len(mine), mine["click"].sum()
            prior = (clicks + TEXT_USER_PRIOR[0]) / (n + TEXT_USER_PRIOR[1])
            text = mine[mine["text"]]
            plain = mine[~mine["text"]]
            with_text = (text["click"].sum() + TEXT_RATE_WEIGHT * prior) / (len(text) + TEXT_RATE_WEIGHT)
            without_text = (plain["click"].sum() + TEXT_RATE_WEIGHT * prior) / (len(plain) + TEXT_RATE_WEIGHT)
            x, y = mine["x"].to_numpy(), mine["click"].to_numpy(float)
            covariance = ((x - x.mean()) * (y - y.mean())).sum()
            variance = ((x - x.mean()) ** 2).sum()
            parts.append({
                "setup": setup, "fold": fold, "user_id": user_id,
                "user_click_rate_with_text": with_text, "user_click_rate_without_text": without_text,
                "user_text_click_lift": with_text - without_text,
                "user_log_duration_click_slope": covariance / (variance + DURATION_SLOPE_PSEUDO * population_variance),
            })
    return pd.DataFrame(parts)


# -- user_taste_within_clusters ---------------------------------------------------------------

WITHIN_ATTRIBUTES = ["has_face", "has_text", "log_duration", "male_share", "appearance"]
FACE_ONLY = {"male_share", "appearance"}


def photo_cover_attributes(read: Read) -> pd.DataFrame:
    """Per photo_id of raw_faces or raw_text: has_face, has_text, and on covers with faces the
    faces' mean gender (male_share) and the best face's appearance (NaN without faces)."""
    raw_faces, raw_text = read("raw_faces"), read("raw_text")
    faces = raw_faces.groupby("photo_id").agg(male_share=("gender", "mean"), appearance=("appearance", "max"))
    photos = pd.DataFrame(index=pd.Index(sorted(set(raw_faces["photo_id"]) | set(raw_text["photo_id"])), name="photo_id"))
    photos["has_face"] = photos.index.isin(faces.index).astype(float)
    photos["has_text"] = photos.index.isin(raw_text.loc[raw_text["words"].map(len) > 0, "photo_id"]).astype(float)
    return photos.join(faces.astype(float))


def reference_user_taste_within_clusters(read: Read) -> pd.DataFrame:
    """Per row: the user's slopes of click on each cover attribute inside their (user, coarse
    cluster) cells, each cell centred on its own means, pooled over the user's cells and shrunk
    toward the population's pooled slope; and the summed personal tilt for the row's photo."""
    label_history, model_rows, raw_interactions = read("label_history"), read("model_rows"), read("raw_interactions")
    clusters = read("video_clusters")
    coarse = clusters[clusters["k"] == clusters["k"].min()].set_index("photo_id")["cluster"]
    photos = photo_cover_attributes(read)
    history = label_history.astype({"click": "float64"})
    history["cluster"] = history["photo_id"].map(coarse).fillna(-1)
    history = history.join(photos, on="photo_id")
    history[["has_face", "has_text"]] = history[["has_face", "has_text"]].fillna(0.0)
    history["log_duration"] = np.log1p(history["duration_time"].astype(float))
    rows = model_rows.merge(raw_interactions[["row_id", "duration_time"]], on="row_id").join(photos, on="photo_id")
    rows[["has_face", "has_text"]] = rows[["has_face", "has_text"]].fillna(0.0)
    rows["log_duration"] = np.log1p(rows["duration_time"].astype(float))
    parts = []
    for setup, fold, seen in out_of_fold_histories(history, model_rows):
        part = rows[(rows["setup"] == setup) & (rows["fold"] == fold)]
        out = part[["setup", "row_id"]].copy()
        score = np.zeros(len(part))
        for attribute in WITHIN_ATTRIBUTES:
            on = seen[seen["has_face"] == 1] if attribute in FACE_ONLY else seen
            cell = on.groupby(["user_id", "cluster"])
            dx = on[attribute] - cell[attribute].transform("mean")
            dy = on["click"] - cell["click"].transform("mean")
            cross = (dx * dy).groupby(on["user_id"]).sum()
            square = (dx * dx).groupby(on["user_id"]).sum()
            if square.sum() == 0:
                out[f"within_cluster_slope_{attribute}"] = np.nan
                continue
            pooled = cross.sum() / square.sum()
            weight = WITHIN_SLOPE_PSEUDO * square.sum() / len(on)
            slope = (part["user_id"].map(cross).fillna(0) + weight * pooled) / (part["user_id"].map(square).fillna(0) + weight)
            out[f"within_cluster_slope_{attribute}"] = slope.to_numpy()
            tilt = (slope - pooled) * (part[attribute] - on[attribute].mean())
            score += tilt.fillna(0).to_numpy()  # NaN: a face attribute of a cover without faces
        out["within_cluster_taste_score"] = score
        parts.append(out)
    return pd.concat(parts, ignore_index=True)


# -- word_click_rates -------------------------------------------------------------------------


def reference_word_click_rates(read: Read) -> pd.DataFrame:
    label_history, model_rows, raw_text = read("label_history"), read("model_rows"), read("raw_text")
    words = raw_text[["photo_id", "words"]].explode("words").dropna().rename(columns={"words": "word_id"})
    history = label_history[["setup", "fold", "photo_id", "click"]].astype({"click": "int64"})
    history_words = history.merge(words, on="photo_id")  # one row per impression and word of its cover
    parts = []
    for setup, fold, rows in out_of_fold_histories(history, model_rows):
        population_rate = rows["click"].sum() / len(rows)  # every fit row, with words or not
        of_words = history_words[(history_words["setup"] == setup) & (history_words["fold"] != fold)]
        per_word = of_words.groupby("word_id")["click"].agg(["size", "sum"])
        scored = model_rows.loc[(model_rows["setup"] == setup) & (model_rows["fold"] == fold), ["photo_id"]]
        covers = scored.drop_duplicates().merge(words, on="photo_id")  # a photo without words has no row
        impressions = covers["word_id"].map(per_word["size"]).fillna(0)
        clicks = covers["word_id"].map(per_word["sum"]).fillna(0)
        covers["rate"] = (clicks + WORD_RATE_WEIGHT * population_rate) / (impressions + WORD_RATE_WEIGHT)
        covers["impressions"] = impressions
        part = covers.groupby("photo_id").agg(
            word_click_rate_mean=("rate", "mean"),
            word_click_rate_max=("rate", "max"),
            word_click_rate_min=("rate", "min"),
            word_impressions=("impressions", "sum"),
        )
        parts.append(part.reset_index().assign(setup=setup, fold=fold))
    return pd.concat(parts, ignore_index=True)


# -- face_stats -------------------------------------------------------------------------------


def reference_face_stats(read: Read) -> pd.DataFrame:
    raw_interactions, raw_faces = read("raw_interactions"), read("raw_faces")
    faces = raw_faces.astype({c: "float64" for c in ["share", "gender", "age", "appearance"]})
    per_photo = faces.groupby("photo_id").agg(
        face_count=("share", "size"),
        face_share_total=("share", "sum"),
        face_share_max=("share", "max"),
        face_male_share=("gender", "mean"),
        face_age_mean=("age", "mean"),
        face_age_min=("age", "min"),
        face_age_max=("age", "max"),
        face_appearance_mean=("appearance", "mean"),
        face_appearance_max=("appearance", "max"),
    )
    # 0 no face, 1 only women, 2 only men, 3 both
    per_photo["face_gender_mix"] = np.select(
        [per_photo["face_male_share"] == 0, per_photo["face_male_share"] == 1], [1, 2], default=3
    )
    photos = pd.DataFrame({"photo_id": raw_interactions["photo_id"].unique()})  # every shown photo, with a face or not
    expected = photos.join(per_photo, on="photo_id")
    no_face = expected["face_count"].isna()
    expected.loc[no_face, ["face_count", "face_share_total", "face_gender_mix"]] = 0
    return expected


# -- text_stats -------------------------------------------------------------------------------


def reference_text_stats(read: Read) -> pd.DataFrame:
    raw_text = read("raw_text")
    words = words_of(raw_text)
    photos_with = defaultdict(set)  # word -> the covers carrying it (train and test)
    for photo, cover in words.items():
        for word in cover:
            photos_with[word].add(photo)
    records = []
    for photo, cover in words.items():
        record = {"photo_id": photo, "has_text": int(len(cover) > 0), "n_words": len(cover)}
        if cover:
            photos = [len(photos_with[word]) for word in cover]
            logs = np.log(photos)
            record.update(
                {
                    "word_frequency_mean": logs.mean(),
                    "word_frequency_min": logs.min(),
                    "word_frequency_max": logs.max(),
                    "rare_word_share": np.mean([p < RARE_WORD_PHOTOS for p in photos]),
                }
            )
        records.append(record)
    return pd.DataFrame.from_records(records)


# -- photo_visual -----------------------------------------------------------------------------


def reference_photo_visual(read: Read) -> pd.DataFrame:
    pca = read("pca_visual_features")
    components = sorted((c for c in pca.columns if c.startswith("pc_")), key=lambda c: int(c[3:]))
    return pca[["photo_id", *components[:PHOTO_VISUAL_COMPONENTS]]]


# -- time_and_duration ------------------------------------------------------------------------


def reference_time_and_duration(read: Read) -> pd.DataFrame:
    raw = read("raw_interactions")
    user_mean = raw.groupby("user_id")["duration_time"].mean()  # over train and test: no labels
    mean = raw["user_id"].map(user_mean)
    minute_of_day = raw["time"] // 60_000 % 1440
    return pd.DataFrame(
        {
            "row_id": raw["row_id"],
            "duration_time": raw["duration_time"],
            "hour_of_day": minute_of_day / 60,
            "user_duration_mean": mean,
            "duration_vs_user_mean": raw["duration_time"] / mean.clip(lower=1),
            "is_still_picture": (raw["duration_time"] == 0).astype("int64"),
        }
    )


# -- user_cluster_exposure --------------------------------------------------------------------

EXPOSURE_WINDOW_MS = 6 * 3_600_000  # user_cluster_exposure: six hours either side of the row


def reference_user_cluster_exposure(read: Read) -> pd.DataFrame:
    """Per row, the user's other impressions of the same split, within the window and in all,
    and the share of them in the row's photo's cluster at the smallest and the largest k."""
    raw, clusters = read("raw_interactions"), read("video_clusters")
    rows = raw[["row_id", "split", "user_id", "photo_id", "time"]].copy()
    for level, k in (("coarse", clusters["k"].min()), ("fine", clusters["k"].max())):
        at_k = clusters[clusters["k"] == k].set_index("photo_id")["cluster"]
        rows[level] = rows["photo_id"].map(at_k)
    parts = []
    for _, own in rows.groupby(["split", "user_id"]):
        time = own["time"].to_numpy()
        near = np.abs(time[:, None] - time[None, :]) <= EXPOSURE_WINDOW_MS
        np.fill_diagonal(near, False)  # the row itself is left out
        everywhere = ~np.eye(len(own), dtype=bool)
        part = pd.DataFrame({"row_id": own["row_id"].to_numpy()})
        for level in ("coarse", "fine"):
            cluster = own[level].to_numpy()
            same = cluster[:, None] == cluster[None, :]  # NaN == NaN is False: no cluster, no share
            for name, mask in (("6h", near), ("log", everywhere)):
                total = mask.sum(axis=1).astype(float)
                share = (mask & same).sum(axis=1) / np.where(total > 0, total, np.nan)
                part[f"exposure_share_{name}_{level}"] = np.where(np.isnan(cluster.astype(float)), np.nan, share)
        part["exposure_rows_6h"] = near.sum(axis=1).astype(float)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


# -- visual_similarity ------------------------------------------------------------------------


def reference_visual_similarity(read: Read) -> pd.DataFrame:
    """Cosine between the row's photo and the mean direction of the user's (un)clicked photos out of fold."""
    label_history, model_rows, pca = read("label_history"), read("model_rows"), read("pca_visual_features")
    components = [c for c in pca.columns if c.startswith("pc_")]
    vectors = pca.set_index("photo_id")[components].astype("float64")
    vectors = vectors.div(np.linalg.norm(vectors.to_numpy(), axis=1), axis=0)  # unit length
    history = vectors.loc[label_history["photo_id"]].set_axis(label_history.index)
    history[["setup", "fold", "user_id", "click"]] = label_history[["setup", "fold", "user_id", "click"]]
    parts = []
    for setup, fold, seen in out_of_fold_histories(history, model_rows):
        scored = model_rows[(model_rows["setup"] == setup) & (model_rows["fold"] == fold)].reset_index(drop=True)
        photo = vectors.loc[scored["photo_id"]].to_numpy()
        part = pd.DataFrame({"setup": setup, "row_id": scored["row_id"]})
        for click, name in [(1, "clicked"), (0, "unclicked")]:
            centroid = seen[seen["click"] == click].groupby("user_id")[components].mean()
            centroid = centroid.div(np.linalg.norm(centroid.to_numpy(), axis=1), axis=0)
            # a user without such history out of fold has no centroid: NaN (null in the table)
            at_rows = centroid.reindex(scored["user_id"]).to_numpy()
            part[f"visual_similarity_{name}"] = (at_rows * photo).sum(axis=1)
        part["visual_similarity_margin"] = part["visual_similarity_clicked"] - part["visual_similarity_unclicked"]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


# -- session_context --------------------------------------------------------------------------

SESSION_WINDOWS = {  # session_context: name -> (side, minutes)
    "2min": ("around", 2), "10min": ("around", 10),
    "before_2min": ("before", 2), "before_10min": ("before", 10),
    "after_2min": ("after", 2), "after_10min": ("after", 10),
}


def reference_session_context(read: Read) -> pd.DataFrame:
    """Per row, the cosine between its photo's unit vector and the sum of the unit vectors of the
    user's other impressions of the same split in each window of its time: within the minutes
    either side (the row left out), or strictly before, or strictly after."""
    raw, pca = read("raw_interactions"), read("pca_visual_features")
    components = [c for c in pca.columns if c.startswith("pc_")]
    vectors = pca.set_index("photo_id")[components].astype("float64")
    vectors = vectors.div(np.linalg.norm(vectors.to_numpy(), axis=1), axis=0)
    parts = []
    for _, own in raw.groupby(["split", "user_id"]):
        time = own["time"].to_numpy()
        later = time[None, :] - time[:, None]  # [row, other]: how much later the other is
        photo = vectors.loc[own["photo_id"]].to_numpy()
        part = pd.DataFrame({"row_id": own["row_id"].to_numpy()})
        for name, (side, minutes) in SESSION_WINDOWS.items():
            window = minutes * 60_000
            if side == "around":
                near = np.abs(later) <= window
                np.fill_diagonal(near, False)  # the row itself is left out
            elif side == "before":
                near = (later >= -window) & (later < 0)
            else:
                near = (later > 0) & (later <= window)
            others = near.astype(float) @ photo
            length = np.linalg.norm(others, axis=1)
            cosine = (others * photo).sum(axis=1) / np.where(length > 0, length, np.nan)
            part[f"session_cosine_{name}"] = np.where(near.any(axis=1), cosine, np.nan)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


# -- the comparisons --------------------------------------------------------------------------

REFERENCES = {  # name: (reference, keys, absolute tolerance)
    "user_behaviour": (reference_user_behaviour, ["setup", "fold", "user_id"], ATOL),
    "cluster_stats": (reference_cluster_stats, ["setup", "fold", "k", "cluster"], ATOL),
    "user_face_preference": (reference_user_face_preference, ["setup", "fold", "user_id"], ATOL),
    "user_face_match": (reference_user_face_match, ["setup", "row_id"], ATOL),
    "user_attribute_taste": (reference_user_attribute_taste, ["setup", "fold", "user_id"], ATOL),
    "user_taste_within_clusters": (reference_user_taste_within_clusters, ["setup", "row_id"], ATOL),
    "word_click_rates": (reference_word_click_rates, ["setup", "fold", "photo_id"], ATOL),
    "face_stats": (reference_face_stats, ["photo_id"], ATOL),
    "text_stats": (reference_text_stats, ["photo_id"], ATOL),
    "photo_visual": (reference_photo_visual, ["photo_id"], ATOL),
    "time_and_duration": (reference_time_and_duration, ["row_id"], ATOL),
    "visual_similarity": (reference_visual_similarity, ["setup", "row_id"], COSINE_ATOL),
    "user_cluster_exposure": (reference_user_cluster_exposure, ["row_id"], ATOL),
    "session_context": (reference_session_context, ["row_id"], COSINE_ATOL),
}


def test_every_sql_group_visual_similarity_and_session_context_have_a_reference():
    from kuai_assets.features.catalog import load_catalog

    catalog = load_catalog()
    sql_groups = {name for name, model in catalog.items() if model.layer == "features" and model.compute is None}
    assert sql_groups | {"visual_similarity", "session_context"} == set(REFERENCES)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_table_matches_reference(tables, name):
    reference, keys, atol = REFERENCES[name]
    expected = reference(tables)
    assert_same_table(tables(name), expected, keys, name, atol=atol)


# -- each reference can fail ------------------------------------------------------------------


def first_row(table: pd.DataFrame, where: pd.Series | None = None) -> int:
    return table.index[0] if where is None else table.index[where.to_numpy()][0]


def has_face(read: Read) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda history: history["photo_id"].isin(read("raw_faces")["photo_id"])


def has_words(read: Read) -> Callable[[pd.DataFrame], pd.Series]:
    text = read("raw_text")
    return lambda history: history["photo_id"].isin(text.loc[text["words"].map(len) > 0, "photo_id"])


def flip(column: str, where=None):
    def change(table: pd.DataFrame, read: Read) -> pd.DataFrame:
        row = first_row(table, None if where is None else where(read)(table))
        table.loc[row, column] = 1 - table.loc[row, column]
        return table

    return change


def add(column: str, amount):
    def change(table: pd.DataFrame, read: Read) -> pd.DataFrame:
        table.loc[first_row(table), column] += amount
        return table

    return change


def new_first_word(table: pd.DataFrame, read: Read) -> pd.DataFrame:
    """The first cover with words gets a word no other cover carries in place of its first one."""
    row = first_row(table, table["words"].map(len) > 0)
    unused = max(max(words, default=0) for words in table["words"]) + 1
    table.at[row, "words"] = [unused, *list(table.at[row, "words"])[1:]]
    return table


# name: (the input table changed, how (one row), a column the change must move)
ONE_ROW_CHANGES = {
    "user_behaviour": ("label_history", flip("click"), "user_click_rate"),
    "cluster_stats": ("label_history", flip("like", where=lambda read: lambda h: h["like"] == 0), "cluster_like_rate"),
    "user_face_preference": ("label_history", flip("click", where=has_face), "user_click_rate_with_face"),
    "user_face_match": ("label_history", flip("click", where=has_face), "face_match_rate_gender"),
    "user_attribute_taste": ("label_history", add("duration_time", 500), "user_log_duration_click_slope"),
    "user_taste_within_clusters": ("label_history", flip("click", where=has_face), "within_cluster_slope_has_face"),
    "word_click_rates": ("label_history", flip("click", where=has_words), "word_click_rate_mean"),
    "face_stats": ("raw_faces", add("age", 7), "face_age_mean"),
    "text_stats": ("raw_text", new_first_word, "word_frequency_min"),
    "photo_visual": ("pca_visual_features", add("pc_00", 1.0), "pc_00"),
    "time_and_duration": ("raw_interactions", add("duration_time", 5), "duration_time"),
    "visual_similarity": ("label_history", flip("click"), "visual_similarity_clicked"),
    "user_cluster_exposure": ("raw_interactions", add("time", 7 * 3_600_000), "exposure_share_6h_coarse"),
    "session_context": ("raw_interactions", add("time", 7 * 3_600_000), "session_cosine_2min"),
}


def test_every_reference_has_a_one_row_change():
    assert set(ONE_ROW_CHANGES) == set(REFERENCES)


@pytest.mark.parametrize("name", sorted(ONE_ROW_CHANGES))
def test_reference_can_fail(tables, name):
    """One row of one input changed, for the reference only: the comparison fails on the column it feeds."""
    reference, keys, atol = REFERENCES[name]
    table, change, column = ONE_ROW_CHANGES[name]
    changed = change(tables(table), tables)
    assert not changed.equals(tables(table))
    read = lambda t: changed.copy() if t == table else tables(t)  # noqa: E731
    with pytest.raises(AssertionError, match=rf"(?m)^\s*{column}: \d+ of \d+ rows differ"):
        assert_same_table(tables(name), reference(read), keys, name, atol=atol)


@pytest.mark.parametrize(
    "name, constant, value",
    [
        ("user_behaviour", "USER_PRIOR_WEIGHT", 21),
        ("user_behaviour", "USER_PLAYING_SECONDS_PER_PSEUDO", 21),
        ("cluster_stats", "CLUSTER_PRIOR_WEIGHT", 51),
        ("user_face_preference", "FACE_USER_PRIOR", (2, 11)),
        ("user_face_preference", "ATTRACTIVE_APPEARANCE", 71),
        ("user_attribute_taste", "TEXT_RATE_WEIGHT", 11),
        ("user_attribute_taste", "TEXT_USER_PRIOR", (2, 11)),
        ("user_attribute_taste", "DURATION_SLOPE_PSEUDO", 31),
        ("user_taste_within_clusters", "WITHIN_SLOPE_PSEUDO", 31),
        ("word_click_rates", "WORD_RATE_WEIGHT", 31),
        ("text_stats", "RARE_WORD_PHOTOS", 4),
    ],
)
def test_reference_constants_are_pinned(tables, monkeypatch, name, constant, value):
    """Each smoothing weight and threshold, moved by one, makes the comparison fail."""
    monkeypatch.setitem(globals(), constant, value)
    reference, keys, atol = REFERENCES[name]
    with pytest.raises(AssertionError, match=r"rows differ"):
        assert_same_table(tables(name), reference(tables), keys, name, atol=atol)


# -- the edge cases the tiny data lacks --------------------------------------------------------

LABEL_GROUPS = ["user_behaviour", "cluster_stats", "user_face_preference", "user_attribute_taste", "word_click_rates",
                "visual_similarity", "user_taste_within_clusters"]


def test_label_statistics_match_reference_for_users_without_history_or_clicks(materialized, tmp_path, tables):
    """On the tiny data every user has fit rows in every fold and clicks somewhere. Here one user's
    submission history lies in fold 0 alone, another has none, and a third never clicked; label_history
    and the label groups are recomputed from those inputs and compared with the references."""
    from kuai_assets_tests.test_feature_reference import drop_submission_history, rematerialize

    model_rows, one_fold_user, no_history_user = drop_submission_history(tables("model_rows"))
    raw = tables("raw_interactions")
    never_clicked_user = sorted(set(raw["user_id"]) - {one_fold_user, no_history_user})[0]
    raw.loc[raw["user_id"] == never_clicked_user, ["click", "like", "follow", "playing_time"]] = 0
    edits = {"model_rows": model_rows, "raw_interactions": raw}
    work = rematerialize(materialized, tmp_path, edits, ["label_history", *LABEL_GROUPS])
    read = lambda name: pd.read_parquet(work.require_table(name))  # noqa: E731  (the edits and every upstream)

    for name in LABEL_GROUPS:
        reference, keys, atol = REFERENCES[name]
        assert_same_table(read(name), reference(read), keys, f"{name} (edited inputs)", atol=atol)

    # spelled out: no row out of a user's only fold, none for a user without history, no clicked centroid
    behaviour = read("user_behaviour")
    submission = behaviour[behaviour["setup"] == "submission"]
    assert set(submission.loc[submission["user_id"] == one_fold_user, "fold"]) == {-1, 1, 2, 3, 4}
    assert not (submission["user_id"] == no_history_user).any()
    assert (behaviour.loc[behaviour["user_id"] == never_clicked_user, "user_playing_ratio"] >= 0).all()
    similarity = read("visual_similarity").merge(model_rows[["setup", "row_id", "user_id"]])
    never_clicked = similarity[similarity["user_id"] == never_clicked_user]
    assert len(never_clicked) and never_clicked["visual_similarity_clicked"].isna().all()
    assert never_clicked["visual_similarity_unclicked"].notna().all()
    no_history = similarity[(similarity["setup"] == "submission") & (similarity["user_id"] == no_history_user)]
    assert len(no_history) and no_history[["visual_similarity_clicked", "visual_similarity_unclicked"]].isna().all().all()
