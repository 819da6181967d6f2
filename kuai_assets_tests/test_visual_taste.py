"""visual_taste: each user's linear taste in a cover's detail beyond its cluster, out of fold.

A brute-force reference recomputes every user's directions from the fit rows themselves, slot by
slot and user by user (never a fold subtracted from a total, as the group does); planted tastes
are recovered; a fold's own clicks never reach its slot; and on the tiny data the group's table
equals the reference computed from its upstream tables with pandas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kuai_assets.groups.visual_taste import user_directions
from kuai_assets_tests.test_feature_reference import assert_same_table, tables  # noqa: F401 (fixture)


def reference_directions(user, fold, click, r, n_users, n_folds):
    """The docstring of groups/visual_taste.py, computed row subset by row subset."""
    axes = r.shape[1]
    slots = n_folds + 1
    w_user = np.zeros((n_users, slots, axes))
    w_global = np.zeros((slots, axes))
    margin = np.full((n_users, slots, axes), np.nan)
    between = np.zeros(slots)
    for slot in range(slots):
        seen = fold != slot  # slot n_folds: every fold
        S = np.zeros((n_users, axes, axes))
        s = np.zeros((n_users, axes))
        diag, noise, sq = np.zeros((n_users, axes)), np.zeros(n_users), np.zeros((n_users, axes))
        for u in range(n_users):
            rows = seen & (user == u)
            x, y = r[rows], click[rows]
            rate = (y.sum() + 1) / (len(y) + 2)
            noise[u] = rate * (1 - rate)
            if len(y) == 0:
                continue
            xc, yc = x - x.mean(axis=0), y - y.mean()
            S[u], s[u] = xc.T @ xc, xc.T @ yc
            diag[u], sq[u] = (xc**2).sum(axis=0), (x**2).sum(axis=0)
            if 0 < y.sum() < len(y):
                margin[u, slot] = x[y == 1].mean(axis=0) - x[y == 0].mean(axis=0)
        n_seen = seen.sum()
        variance = np.trace(S.sum(axis=0)) / (axes * n_seen) if n_seen else 0.0
        ridge = variance if variance > 0 else 1.0
        w_global[slot] = np.linalg.solve(S.sum(axis=0) + ridge * np.eye(axes), s.sum(axis=0))
        informative = diag > 1e-12 * np.maximum(sq, 1e-300)
        num = den = 0.0
        for u in range(n_users):
            for j in range(axes):
                if informative[u, j]:
                    weight = diag[u, j] / noise[u]
                    num += weight * ((s[u, j] / diag[u, j] - w_global[slot, j]) ** 2 - noise[u] / diag[u, j])
                    den += weight
        between[slot] = max(num / den if den else 0.0, 1e-12)
        for u in range(n_users):
            ridge_user = noise[u] / between[slot]
            w_user[u, slot] = np.linalg.solve(S[u] + ridge_user * np.eye(axes), s[u] + ridge_user * w_global[slot])
    return w_user, w_global, margin, between


def fit_rows(rng, n_users, rows_per_user, detail, taste, common=None, base=-1.0):
    user = np.repeat(np.arange(n_users), rows_per_user)
    photo = rng.integers(0, len(detail), len(user))
    logit = base + np.einsum("nd,nd->n", detail[photo], taste[user])
    if common is not None:
        logit += detail[photo] @ common
    click = (rng.random(len(user)) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    fold = rng.integers(0, 5, len(user))
    return user, fold, click, photo


def test_directions_match_the_brute_force_reference():
    rng = np.random.default_rng(3)
    n_users, axes = 9, 3
    detail = rng.standard_normal((40, axes))
    user, fold, click, photo = fit_rows(rng, n_users, 30, detail, rng.standard_normal((n_users, axes)))
    # the cases a log holds: a user only in fold 2, one who never clicked, one with no fit row, one with one
    fold[user == 0] = 2
    click[user == 1] = 0
    keep = (user != 2) & ~((user == 3) & (np.arange(len(user)) != np.flatnonzero(user == 3)[0]))
    user, fold, click, photo = user[keep], fold[keep], click[keep], photo[keep]
    got = user_directions(user, fold, click, photo, detail, n_users, 5)
    want = reference_directions(user, fold, click, detail[photo], n_users, 5)
    for name, a, b in zip(["w_user", "w_global", "margin", "between"], got, want):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10, err_msg=name)
    w_user, w_global, margin, _ = got
    assert np.isnan(margin[1]).all()  # never clicked
    assert np.isnan(margin[0, 2]).all() and not np.isnan(margin[0, [0, 1, 3, 4, 5]]).any()  # only in fold 2
    np.testing.assert_allclose(w_user[2], w_global)  # no fit row: the pooled direction


def test_the_reference_can_fail():
    """One click flipped for the reference only: its directions differ from the group's."""
    rng = np.random.default_rng(4)
    detail = rng.standard_normal((30, 2))
    user, fold, click, photo = fit_rows(rng, 4, 25, detail, rng.standard_normal((4, 2)))
    got = user_directions(user, fold, click, photo, detail, 4, 5)
    flipped = click.copy()
    flipped[0] = 1 - flipped[0]
    want = reference_directions(user, fold, flipped, detail[photo], 4, 5)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(got[0], want[0], rtol=1e-7, atol=1e-10)


def test_planted_tastes_are_recovered():
    rng = np.random.default_rng(0)
    n_users, axes = 60, 8
    detail = rng.standard_normal((3000, axes))
    taste = rng.standard_normal((n_users, axes))
    taste /= np.linalg.norm(taste, axis=1, keepdims=True)
    common = np.zeros(axes)
    common[0] = 0.8
    user, fold, click, photo = fit_rows(rng, n_users, 800, detail, taste, common)
    w_user, w_global, margin, between = user_directions(user, fold, click, photo, detail, n_users, 5)

    def cosine(a, b):
        return np.einsum("ud,ud->u", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    # the user's own part, beyond the pooled direction, points at the planted one
    assert np.median(cosine(w_user[:, 5] - w_global[5], taste)) > 0.8
    assert np.median(cosine(margin[:, 5], taste + common)) > 0.7
    # the pooled direction is the common part
    assert w_global[5, 0] > 0.1 and np.abs(w_global[5, 1:]).max() < 0.3 * w_global[5, 0]
    assert (between > 0.002).all()
    # with no user-specific taste the spread is far smaller: the users are pulled onto w_g
    user, fold, click, photo = fit_rows(rng, n_users, 800, detail, np.zeros((n_users, axes)), common)
    _, _, _, no_spread = user_directions(user, fold, click, photo, detail, n_users, 5)
    assert no_spread.max() < 0.1 * between.min()


def test_a_folds_own_clicks_never_reach_its_slot():
    rng = np.random.default_rng(1)
    detail = rng.standard_normal((200, 4))
    user, fold, click, photo = fit_rows(rng, 12, 150, detail, rng.standard_normal((12, 4)))
    before = user_directions(user, fold, click, photo, detail, 12, 5)
    shuffled = click.copy()
    in_fold = fold == 0
    shuffled[in_fold] = rng.permutation(click[in_fold])
    after = user_directions(user, fold, shuffled, photo, detail, 12, 5)
    for a, b in zip(before[:3], after[:3]):
        slot_axis = 1 if a.ndim == 3 else 0
        np.testing.assert_allclose(np.take(a, 0, axis=slot_axis), np.take(b, 0, axis=slot_axis), rtol=1e-9, atol=1e-12)
        assert not np.allclose(np.take(a, 1, axis=slot_axis), np.take(b, 1, axis=slot_axis), equal_nan=True)


def test_table_matches_reference_on_the_tiny_data(tables):
    pca, clusters = tables("pca_visual_features"), tables("video_clusters")
    label_history, model_rows = tables("label_history"), tables("model_rows")
    components = sorted(c for c in pca.columns if c.startswith("pc_"))
    finest = clusters[clusters["k"] == clusters["k"].max()][["photo_id", "cluster"]]
    photos = pca[["photo_id", *components]].merge(finest, on="photo_id", how="left")
    photos["cluster"] = photos["cluster"].fillna(-1)
    vectors = photos[components].astype("float64")
    detail = (vectors - vectors.groupby(photos["cluster"]).transform("mean")).set_index(photos["photo_id"])
    parts = []
    for setup, scored in model_rows.groupby("setup"):
        fit = label_history[label_history["setup"] == setup]
        users = np.unique(np.concatenate([fit["user_id"], scored["user_id"]]))
        n_folds = int(scored["fold"].max()) + 1
        w_user, w_global, margin, _ = reference_directions(
            np.searchsorted(users, fit["user_id"].to_numpy()), fit["fold"].to_numpy(), fit["click"].to_numpy(float),
            detail.loc[fit["photo_id"]].to_numpy(), len(users), n_folds,
        )
        u = np.searchsorted(users, scored["user_id"].to_numpy())
        slot = np.where(scored["fold"] < 0, n_folds, scored["fold"])
        r = detail.loc[scored["photo_id"]].to_numpy()
        parts.append(pd.DataFrame({
            "setup": setup, "row_id": scored["row_id"].to_numpy(),
            "visual_taste_score": (r * w_user[u, slot]).sum(axis=1),
            "visual_taste_global": (r * w_global[slot]).sum(axis=1),
            "visual_taste_margin": (r * margin[u, slot]).sum(axis=1),
        }))
    expected = pd.concat(parts, ignore_index=True)
    actual = tables("visual_taste")
    # float32 in the table; a projection near 0 has no relative precision
    assert_same_table(actual, expected, ["setup", "row_id"], "visual_taste", atol=1e-6)
    assert actual["visual_taste_margin"].notna().mean() > 0.9 and actual["visual_taste_score"].notna().all()
