import numpy as np
import pytest

from kuai_assets.ml.metrics import roc_auc


def brute_force_auc(label, score):
    pos = score[label == 1]
    neg = score[label == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, 400)
    score = np.round(rng.random(400) + 0.3 * label, 1)  # coarse rounding makes many ties
    assert roc_auc(label, score) == pytest.approx(brute_force_auc(label, score), abs=1e-12)


def test_auc_extremes_and_errors():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    with pytest.raises(ValueError):
        roc_auc(np.array([1, 1]), np.array([0.1, 0.2]))
