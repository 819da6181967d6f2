import numpy as np
import pytest

from kuai_assets.ml.metrics import adjusted_rand_index, matched_share, paired_auc_difference, roc_auc


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


def test_adjusted_rand_index_against_values_worked_by_hand():
    # pairs of [0, 0, 1, 1] vs [0, 0, 1, 2]: 1 together in both, 2 in the first, 1 in the second,
    # of 6: expected 2 * 1 / 6, so (1 - 1/3) / (1.5 - 1/3) = 4/7
    assert adjusted_rand_index(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2])) == pytest.approx(4 / 7, abs=1e-12)
    # 7 pairs together in the first, 3 in the second, 3 in both, of 15: (3 - 7 * 3 / 15) / (5 - 1.4) = 4/9
    assert adjusted_rand_index(np.array([0, 0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 2, 2])) == pytest.approx(4 / 9, abs=1e-12)
    # the labels' names do not matter, only the grouping
    assert adjusted_rand_index(np.array([0, 0, 1, 1, 2]), np.array([7, 7, -3, -3, 5])) == 1.0


def test_adjusted_rand_index_is_about_zero_for_unrelated_groupings_and_falls_with_moved_items():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, 100_000)
    assert abs(adjusted_rand_index(a, rng.integers(0, 50, 100_000))) < 1e-3
    moved = a.copy()
    moved[:5_000] = rng.integers(0, 50, 5_000)
    near = adjusted_rand_index(a, moved)
    moved[:20_000] = rng.integers(0, 50, 20_000)
    assert 0.85 < near < 0.95 and adjusted_rand_index(a, moved) < near - 0.1
    with pytest.raises(ValueError, match="same items"):
        adjusted_rand_index(a, a[:10])


def test_matched_share_counts_the_items_in_the_cluster_most_of_theirs_went_to():
    # cluster 0 went to 5 (two of three), cluster 1 to 6 (both): 4 of 5 items
    assert matched_share(np.array([0, 0, 0, 1, 1]), np.array([5, 5, 6, 6, 6])) == pytest.approx(0.8)
    assert matched_share(np.array([0, 0, 1, 1]), np.array([3, 3, 2, 2])) == 1.0


def brute_force_delong(label, score_a, score_b):
    """DeLong's variance of AUC(a) - AUC(b) from its definition: per clicked row the share of
    unclicked rows it outranks (ties one half), per unclicked row the share of clicked rows above it."""
    components = []
    for score in (score_a, score_b):
        pos, neg = score[label == 1], score[label == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        components.append((psi.mean(axis=1), psi.mean(axis=0), psi.mean()))
    (v10a, v01a, auc_a), (v10b, v01b, auc_b) = components
    m, n = len(v10a), len(v01a)
    s10, s01 = np.cov(np.vstack([v10a, v10b])), np.cov(np.vstack([v01a, v01b]))
    variance = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return auc_a - auc_b, np.sqrt(variance)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_paired_auc_difference_and_its_error_follow_delongs_definition(seed):
    rng = np.random.default_rng(seed)
    label = (rng.random(150) < 0.4).astype(int)
    score_a = np.round(label + rng.normal(size=150), 1)  # rounded: ties within and across classes
    score_b = np.round(score_a + rng.normal(scale=0.8, size=150), 1)
    difference, error = paired_auc_difference(label, score_a, score_b)
    expected_difference, expected_error = brute_force_delong(label, score_a, score_b)
    assert difference == pytest.approx(roc_auc(label, score_a) - roc_auc(label, score_b), abs=1e-12)
    assert difference == pytest.approx(expected_difference, abs=1e-12)
    assert error == pytest.approx(expected_error, rel=1e-9)
    assert error > 0


def test_the_paired_error_is_zero_for_one_score_twice_and_refuses_a_lone_class_row():
    rng = np.random.default_rng(3)
    label = (rng.random(200) < 0.5).astype(int)
    score = label + rng.normal(size=200)
    assert paired_auc_difference(label, score, 2 * score + 1) == (0.0, 0.0)  # same order: same AUC, no error
    with pytest.raises(ValueError, match="two clicked and two unclicked"):
        paired_auc_difference(np.array([1, 0, 0, 0]), np.arange(4.0), np.arange(4.0))


def test_scoring_the_test_rows_refuses_predictions_that_miss_a_row_naming_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kuai_assets.features.spec import CatalogError
    from kuai_assets.ml.evaluation import score_predictions

    truth = tmp_path / "test_ground_truth.txt"
    truth.write_text("1\t10\t1\t0.9\n1\t11\t0\t0.2\n2\t12\t0\t0.4\n2\t13\t1\t0.3\n")
    predictions = tmp_path / "predictions.parquet"
    pq.write_table(pa.table({"user_id": [1, 1, 2, 2], "photo_id": [10, 11, 12, 13], "p_click": [0.8, 0.1, 0.7, 0.6]}),
                   predictions)
    score = score_predictions(truth, predictions=predictions)
    assert (score.auc, score.oracle_auc) == (0.75, 0.75)
    submission = tmp_path / "submission.txt"
    submission.write_text("1\t10\t0.8\n1\t11\t0.1\n2\t12\t0.7\n")
    with pytest.raises(CatalogError, match=f"{submission}: only 3 of 4 ground-truth rows have a prediction"):
        score_predictions(truth, submission_file=submission)
