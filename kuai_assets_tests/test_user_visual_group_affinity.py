"""user_visual_group_affinity: user x group rates over the finest clusters merged by average
linkage, at cuts chosen out of fold.

The rates equal a brute-force count over the fit rows left after removing the folds asked for;
the merge recovers planted visual modes; the cut the fit rows choose is the planted modes' count
when users' tastes follow the modes; a fold's clicks never reach the cuts its own rows get; and on
the tiny data the group's table equals a pandas reference computed from its upstream tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kuai_assets.groups.user_visual_group_affinity import (
    POPULATION_WEIGHT,
    USER_WEIGHT,
    _CutRates,
    candidate_counts,
    choose_cuts,
    merged_groups,
)
from kuai_assets_tests.test_feature_reference import assert_same_table, tables  # noqa: F401 (fixture)


def planted(rng, n_modes=8, clusters_per_mode=8, n_users=60, rows_per_user=400, n_folds=5):
    """Clusters whose centres sit around `n_modes` well-separated modes; each user likes a few
    modes (every cluster of a mode alike). Returns (cluster centres, mode of each cluster, fit rows
    as user, fold, click, cluster)."""
    n_clusters = n_modes * clusters_per_mode
    mode_centre = rng.standard_normal((n_modes, 16)) * 10
    mode = np.repeat(np.arange(n_modes), clusters_per_mode)
    centres = mode_centre[mode] + rng.standard_normal((n_clusters, 16))
    likes = rng.random((n_users, n_modes)) < 0.3
    user = np.repeat(np.arange(n_users), rows_per_user)
    cluster = rng.integers(0, n_clusters, len(user))
    p = np.where(likes[user, mode[cluster]], 0.45, 0.1)
    click = (rng.random(len(user)) < p).astype(np.float64)
    fold = rng.integers(0, n_folds, len(user))
    return centres, mode, (user, fold, click, cluster)


def test_candidate_counts_halve_down_to_the_smallest_cut():
    assert candidate_counts(500) == [250, 125, 62, 31, 15]
    assert candidate_counts(64) == [32, 16, 8]
    assert candidate_counts(20) == [10, 5, 2]  # a small k: down to two groups
    assert candidate_counts(5) == [2] and candidate_counts(3) == []


def test_the_merge_recovers_planted_modes():
    centres, mode, _ = planted(np.random.default_rng(0))
    group = merged_groups(centres, [8, 16])[8]
    # one group per mode: every cluster of a mode together, no two modes together
    assert len(set(zip(group, mode))) == 8 == len(set(group))


def test_rates_match_a_brute_force_count():
    rng = np.random.default_rng(1)
    n_users, n_groups, n_folds = 7, 4, 3
    user = rng.integers(0, n_users, 600)
    fold = rng.integers(0, n_folds, 600)
    click = (rng.random(600) < 0.3).astype(np.float64)
    group = rng.integers(-1, n_groups, 600)  # -1: a photo without a group
    cut = _CutRates(user, fold, click, group, n_users, n_groups, n_folds)
    q_user, q_group = rng.integers(0, n_users, 50), rng.integers(-1, n_groups, 50)
    first, second = rng.integers(-1, n_folds, 50), rng.integers(-1, n_folds, 50)
    n, rate, prior = cut.at(q_user, q_group, first, second)
    for i in range(50):
        seen = (fold != first[i]) & (fold != second[i])
        population = click[seen].mean()
        mine = seen & (user == q_user[i])
        expected_prior = (click[mine].sum() + POPULATION_WEIGHT * population) / (mine.sum() + POPULATION_WEIGHT)
        assert prior[i] == pytest.approx(expected_prior, rel=1e-9)
        cell = mine & (group == q_group[i]) if q_group[i] >= 0 else np.zeros_like(mine)
        assert n[i] == cell.sum()
        if cell.sum():
            expected = (click[cell].sum() + USER_WEIGHT * expected_prior) / (cell.sum() + USER_WEIGHT)
            assert rate[i] == pytest.approx(expected, rel=1e-6)
        else:
            assert np.isnan(rate[i])


def choose(rows, mode_groups, n_folds=5):
    user, fold, click, cluster = rows
    n_users = int(user.max()) + 1
    groups = {n: g[cluster] for n, g in mode_groups.items()}
    cuts = {n: _CutRates(user, fold, click, groups[n], n_users, n, n_folds) for n in groups}
    return choose_cuts(cuts, user, fold, click, groups, n_folds)


def test_the_fit_rows_choose_the_cut_the_tastes_follow():
    rng = np.random.default_rng(2)
    centres, _, rows = planted(rng)
    kept, losses = choose(rows, merged_groups(centres, candidate_counts(len(centres))))
    # tastes live on the 8 modes: pooling over each whole mode beats its halves and quarters
    for slot_kept, slot_loss in zip(kept, losses):
        assert min(slot_loss, key=slot_loss.get) == 8
        assert slot_kept == (8, 16)


def test_a_folds_clicks_never_reach_the_cuts_its_rows_get():
    rng = np.random.default_rng(3)
    centres, _, (user, fold, click, cluster) = planted(rng)
    mode_groups = merged_groups(centres, candidate_counts(len(centres)))
    kept, losses = choose((user, fold, click, cluster), mode_groups)
    shuffled = click.copy()
    in_fold = np.flatnonzero(fold == 2)
    shuffled[in_fold] = rng.permutation(shuffled[in_fold])
    kept_after, losses_after = choose((user, fold, shuffled, cluster), mode_groups)
    assert kept_after[2] == kept[2] and losses_after[2] == losses[2]
    # the probe can fail: every other slot reads fold 2's clicks
    assert all(losses_after[slot] != losses[slot] for slot in (0, 1, 3, 4, 5))


def reference_rates(fit: pd.DataFrame, rows: pd.DataFrame, group_of_photo: pd.Series) -> pd.DataFrame:
    """rows (user_id, photo_id) with impressions, rate and prior from the fit rows `fit`, by pandas."""
    population = fit["click"].mean()
    users = fit.groupby("user_id")["click"].agg(["sum", "size"])
    prior = (users["sum"] + POPULATION_WEIGHT * population) / (users["size"] + POPULATION_WEIGHT)
    fit = fit.assign(group=group_of_photo.reindex(fit["photo_id"]).to_numpy())
    cells = fit[fit["group"] >= 0].groupby(["user_id", "group"])["click"].agg(["sum", "size"])
    out = rows[["user_id", "photo_id"]].copy()
    out["group"] = group_of_photo.reindex(out["photo_id"]).to_numpy()
    out["prior"] = prior.reindex(out["user_id"]).fillna(population).to_numpy()
    found = cells.reindex(pd.MultiIndex.from_arrays([out["user_id"], out["group"]]))
    out["impressions"] = np.where(out["group"] >= 0, found["size"].fillna(0).to_numpy(), 0.0)
    out["rate"] = np.where(
        out["impressions"] > 0,
        (found["sum"].to_numpy() + USER_WEIGHT * out["prior"]) / (out["impressions"] + USER_WEIGHT), np.nan,
    )
    return out


def test_table_matches_reference_on_the_tiny_data(tables):
    """Every step again from the upstream tables with pandas: centres, cuts chosen fold by fold
    on the fit rows outside the fold (each scored without its own fold), and the rates."""
    pca, clusters = tables("pca_visual_features"), tables("video_clusters")
    label_history, model_rows = tables("label_history"), tables("model_rows")
    components = sorted(c for c in pca.columns if c.startswith("pc_"))
    finest = clusters[clusters["k"] == clusters["k"].max()]
    photos = pca[["photo_id", *components]].merge(finest[["photo_id", "cluster"]], on="photo_id", how="left")
    centres = photos.dropna(subset=["cluster"]).groupby("cluster")[components].mean().sort_index()
    candidates = merged_groups(centres.to_numpy(), candidate_counts(len(centres)))
    of_cluster = {n: pd.Series(g, index=centres.index) for n, g in candidates.items()}
    group_of_photo = {
        n: pd.Series(g.reindex(photos["cluster"]).fillna(-1).to_numpy(), index=photos["photo_id"])
        for n, g in of_cluster.items()
    }
    parts = []
    for setup, scored in model_rows.groupby("setup"):
        fit = label_history[label_history["setup"] == setup]
        n_folds = int(scored["fold"].max()) + 1
        chosen = {}
        for slot in [*range(n_folds), -1]:
            loss = {}
            for n, groups in group_of_photo.items():
                scored_fit = []
                for g in range(n_folds):
                    if g == slot:
                        continue
                    own = fit[fit["fold"] == g]
                    got = reference_rates(fit[(fit["fold"] != g) & (fit["fold"] != slot)], own, groups)
                    p = np.clip(got["rate"].fillna(got["prior"]).to_numpy(), 1e-6, 1 - 1e-6)
                    y = own["click"].to_numpy(float)
                    scored_fit.append(-(y * np.log(p) + (1 - y) * np.log1p(-p)))
                loss[n] = np.concatenate(scored_fit).mean()
            chosen[slot] = sorted(sorted(loss, key=lambda n: (loss[n], n))[:2])
        for fold, rows in scored.groupby("fold"):
            part = pd.DataFrame({"setup": setup, "row_id": rows["row_id"].to_numpy()})
            for cut, n in zip(("coarse", "fine"), chosen[fold]):
                got = reference_rates(fit[fit["fold"] != fold], rows, group_of_photo[n])
                part[f"user_visual_group_impressions_{cut}"] = got["impressions"].to_numpy()
                part[f"user_visual_group_click_rate_{cut}"] = got["rate"].to_numpy()
            parts.append(part)
    expected = pd.concat(parts, ignore_index=True)
    actual = tables("user_visual_group_affinity")
    assert_same_table(actual, expected, ["setup", "row_id"], "user_visual_group_affinity")
    assert actual["user_visual_group_click_rate_fine"].notna().mean() > 0.5


def test_one_candidate_cut_is_both_cuts():
    rng = np.random.default_rng(4)
    centres, _, rows = planted(rng, n_modes=2, clusters_per_mode=2)  # 4 clusters: one candidate, 2 groups
    counts = candidate_counts(len(centres))
    assert counts == [2]
    kept, _ = choose(rows, merged_groups(centres, counts))
    assert all(slot_kept == (2, 2) for slot_kept in kept)
