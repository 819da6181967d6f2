"""The feature-group ablation: every variant learns from its own groups' columns only, on Datasets
binned once, and reaches the model a Dataset of those columns alone would give."""

import lightgbm as lgb
import numpy as np
import pytest

from kuai_assets.features.matrix import Feature
from kuai_assets.ml.ablation import VariantResult, run_ablation, variants
from kuai_assets.ml.training import LightGbmParams, Rows, early_stopped, lightgbm_dataset, train_validation

# no column or row sampling: two fits on the same bins are then the same trees
EXACT = LightGbmParams(
    learning_rate=0.2, num_leaves=7, min_data_in_leaf=20, feature_fraction=1.0, bagging_fraction=1.0,
    bagging_freq=0, max_rounds=40, early_stopping_rounds=10, num_threads=1,
)
GROUPS = ["base", "strong", "weak", "noise"]
FEATURES = [Feature(f"{g}_{i}", g, "continuous", f"{g}_{i}") for g in GROUPS for i in range(2)]


def rows(n: int, seed: int) -> Rows:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    logit = 0.6 * x[:, 0] + 1.5 * x[:, 2] - 1.2 * x[:, 3] + 0.5 * x[:, 4]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    ids = np.arange(n)
    return Rows(x, y, ids, ids, ids)


FIT, SCORED = rows(4_000, 1), rows(2_000, 2)


def test_a_variant_on_shared_bins_is_the_model_of_its_columns_alone():
    train_set = lightgbm_dataset(FIT, FEATURES)
    valid_set = lightgbm_dataset(SCORED, FEATURES, reference=train_set)
    early_stopped(train_set, valid_set, FIT, SCORED, EXACT)  # the shared Datasets are binned by a first fit
    for chosen in (["base"], ["base", "weak"], ["strong", "noise"]):
        columns = [i for i, f in enumerate(FEATURES) if f.group in chosen]
        shared = early_stopped(train_set, valid_set, FIT, SCORED, EXACT, only_features=columns)
        alone = train_validation(
            Rows(FIT.x[:, columns], FIT.y, FIT.user_id, FIT.photo_id, FIT.row_id),
            Rows(SCORED.x[:, columns], SCORED.y, SCORED.user_id, SCORED.photo_id, SCORED.row_id),
            [FEATURES[i] for i in columns],
            EXACT,
        )
        assert shared.best_iteration == alone.best_iteration
        np.testing.assert_allclose(shared.prediction, alone.prediction, rtol=1e-6, atol=1e-9)
        used = np.flatnonzero(shared.booster.feature_importance("split"))
        assert set(used) <= set(columns)


def test_the_ablation_reads_which_group_carries_the_gain():
    seen = []
    results = run_ablation(FIT, SCORED, FEATURES, GROUPS, "base", EXACT, seen.append)
    assert [r.variant for r in results] == list(variants(GROUPS, "base")) == [r.variant for r in seen]
    auc = {r.variant: r.valid_auc for r in results}
    assert auc["all groups"] - auc["without strong"] > 0.05
    assert abs(auc["all groups"] - auc["without noise"]) < 0.01
    assert auc["base + strong"] - auc["base alone"] > 0.1
    assert auc["base + strong"] > auc["base + weak"] > auc["base alone"]


def test_a_variant_s_recorded_auc_is_that_of_its_prediction():
    """The ablation takes each variant's AUC from LightGBM's record at the best iteration rather
    than predicting the scored rows again; that is the AUC of the prediction, ties and all (a few
    shallow trees give many tied scores)."""
    coarse = EXACT.model_copy(update={"num_leaves": 3, "max_rounds": 4, "early_stopping_rounds": 2})
    train_set = lightgbm_dataset(FIT, FEATURES)
    valid_set = lightgbm_dataset(SCORED, FEATURES, reference=train_set)
    results = run_ablation(FIT, SCORED, FEATURES, GROUPS, "base", coarse)
    assert len(results) == len(variants(GROUPS, "base"))
    for result in results:
        columns = [i for i, f in enumerate(FEATURES) if f.group in result.groups]
        predicted = early_stopped(train_set, valid_set, FIT, SCORED, coarse, only_features=columns)
        assert predicted.prediction is not None and len(np.unique(predicted.prediction)) < len(SCORED.y) / 10
        assert result.best_iteration == predicted.best_iteration
        assert result.valid_auc == pytest.approx(predicted.auc, abs=1e-12)


def test_kept_variants_are_reported_as_given_and_the_rest_trained(monkeypatch):
    """`keep` is asked for every variant with the columns LightGBM keeps (a constant column is
    dropped: False); what it returns is reported as it is, in order, and only the rest is trained."""
    fit = Rows(FIT.x.copy(), FIT.y, FIT.user_id, FIT.photo_id, FIT.row_id)
    fit.x[:, 7] = 1.0  # noise_1, constant
    asked, reported = [], []

    def keep(variant, groups, used):
        asked.append((variant, used))
        if "strong" in groups:
            return None
        return VariantResult(variant, groups, 0.5, 1, kept_from="an earlier run")

    from kuai_assets.ml import ablation

    fits = []
    boost = ablation.early_stopped
    monkeypatch.setattr(ablation, "early_stopped", lambda *a, **k: fits.append(k["name"]) or boost(*a, **k))
    results = run_ablation(fit, SCORED, FEATURES, GROUPS, "base", EXACT, reported.append, keep)
    assert fits == [r.variant for r in results if "strong" in r.groups]
    assert [v for v, _ in asked] == [r.variant for r in results] == list(variants(GROUPS, "base"))
    assert all(used == (True,) * 7 + (False,) for _, used in asked)
    for r in results:
        assert (r.kept_from is None) == ("strong" in r.groups)
        assert (r.valid_auc == 0.5) == ("strong" not in r.groups)
    assert [r.variant for r in reported] == [r.variant for r in results]


def test_a_split_outside_the_variant_is_an_error(monkeypatch):
    """The restriction rests on LightGBM's interaction constraints; were they ever ignored, the
    ablation would say so rather than report the full model under a variant's name."""
    train = lgb.train

    def ignoring_constraints(params, *args, **kwargs):
        return train({k: v for k, v in params.items() if k != "interaction_constraints"}, *args, **kwargs)

    monkeypatch.setattr(lgb, "train", ignoring_constraints)
    expected = r"without base: LightGBM split on columns outside the 6 allowed \(\['base_0', 'base_1'\]\)"
    with pytest.raises(RuntimeError, match=expected):
        run_ablation(FIT, SCORED, FEATURES, GROUPS, "base", EXACT)
