"""The impression embedding: photos shown to the same users land together; the group is found,
declared and written like any other (its leak probe is the one every group gets)."""

import numpy as np

from kuai_assets.groups.impression_embedding import embed


def test_photos_shown_to_the_same_users_are_close():
    rng = np.random.default_rng(0)
    # two communities of 40 users, each shown mostly its own 100 photos
    users, photos = [], []
    for u in range(80):
        own = 0 if u < 40 else 100
        shown = np.concatenate([rng.choice(100, 30, replace=False) + own, rng.choice(200, 3, replace=False)])
        shown = np.unique(shown)
        users += [u] * len(shown)
        photos += shown.tolist()
    user_vectors, photo_vectors = embed(np.array(users), np.array(photos), 80, 200)
    assert np.allclose(np.linalg.norm(photo_vectors, axis=1), 1, atol=1e-5)
    similarity = photo_vectors @ photo_vectors.T
    same = similarity[:100, :100][np.triu_indices(100, 1)].mean()
    across = similarity[:100, 100:].mean()
    assert same > across + 0.2, (same, across)  # about 0.29 against 0.01 here
    # a user is closer to the photos of their community than to the others
    user_to_photo = user_vectors @ photo_vectors.T
    assert (user_to_photo[:40, :100].mean(axis=1) > user_to_photo[:40, 100:].mean(axis=1)).all()


def test_the_group_is_discovered_and_reads_labels_only_through_label_history(materialized):
    import pyarrow.parquet as pq

    from kuai_assets.features.catalog import load_catalog

    group = load_catalog()["impression_embedding"]
    assert group.is_feature_group and group.uses_labels and "label_history" in group.upstream
    table = pq.read_table(materialized["work"] / "tables" / "impression_embedding.parquet")
    assert table.num_rows == pq.read_metadata(materialized["work"] / "tables" / "model_rows.parquet").num_rows
    user = table.column("impression_embedding_user").to_numpy(zero_copy_only=False)
    assert np.isfinite(user).all() and (np.abs(user) <= 1 + 1e-5).all()
