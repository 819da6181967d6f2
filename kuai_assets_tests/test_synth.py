"""The synthetic generator writes exactly the released layout, with marginals close to the real ones."""

import io
import json
import zipfile

import numpy as np
import pytest

from kuai_assets.formats import layout
from kuai_assets.ml.metrics import roc_auc


def read_tsv(path):
    return [line.rstrip("\n").split("\t") for line in open(path)]


def test_layout_is_exactly_the_released_one(tiny_data):
    names = sorted(str(p.relative_to(tiny_data)) for p in tiny_data.rglob("*") if p.is_file())
    assert names == [
        "ground_truth/summary.json",
        "ground_truth/test_ground_truth.txt",
        "test/final_visual_test.zip",
        "test/test_face.txt",
        "test/test_interaction.txt",
        "test/test_text.txt",
        "train/final_visual_train.zip",
        "train/train_face.txt",
        "train/train_interaction.txt",
        "train/train_text.txt",
    ]


def test_interaction_files(tiny_data):
    train = np.array(read_tsv(layout.interaction_file(tiny_data, "train")), dtype=np.int64)
    test = np.array(read_tsv(layout.interaction_file(tiny_data, "test")), dtype=np.int64)
    assert train.shape[1] == 8 and test.shape[1] == 4
    user, photo, click, like, follow, time, playing, duration = train.T
    assert set(np.unique(click)) == {0, 1} and set(np.unique(like)) <= {0, 1}
    assert 0.15 < click.mean() < 0.25
    assert (playing[click == 0] == 0).all()
    assert (duration == 0).any(), "still pictures (duration 0) occur"
    assert 7.5e11 < time.min() < 7.7e11, "milliseconds shifted into 1994"
    assert (time.max() - time.min()) / 3.6e6 == pytest.approx(36, abs=1.5)
    assert (test[:, 2].min() - time.max()) >= 0
    pairs = user * 10**9 + photo
    assert len(np.unique(pairs)) == len(pairs), "no (user_id, photo_id) pair repeats"
    assert test[:, 1].min() > photo.max(), "test photo ids are all higher than train photo ids"
    assert set(test[:, 0]) <= set(user), "every test user has training history"
    # batches: several works shown to one user share exactly the same time
    _, batch_sizes = np.unique(user * 10**13 + time, return_counts=True)
    assert batch_sizes.max() > 1 and (batch_sizes == 1).any()


def test_faces_and_text(tiny_data):
    train_photos = {int(r[1]) for r in read_tsv(layout.interaction_file(tiny_data, "train"))}
    faces = read_tsv(layout.face_file(tiny_data, "train"))
    texts = read_tsv(layout.text_file(tiny_data, "train"))
    assert {int(r[0]) for r in faces} <= train_photos
    assert 0.25 < len(faces) / len(train_photos) < 0.5, "faces on about 38% of works"
    for _, value in faces[:200]:
        for share, gender, age, appearance in json.loads(value):
            assert 0 < share <= 1 and gender in (0, 1) and 0 <= appearance <= 99 and age > 0
    assert {int(r[0]) for r in texts} == train_photos, "every work has a text row"
    no_text = sum(r[1] == "0" for r in texts) / len(texts)
    assert 0.4 < no_text < 0.7, "about 54% of works have no cover text"
    assert any("0" in r[1].split(",") and r[1] != "0" for r in texts), "0 also appears inside longer lists"


def test_visual_zip_is_numpy_loadable(tiny_data):
    archive = np.load(tiny_data / "train" / "final_visual_train.zip")
    key = archive.files[0]
    assert key.startswith("final_visual_train/") and key.split("/")[1].isdigit()
    vector = archive[key]
    assert vector.shape == (1, 2048) and vector.dtype == np.float32
    with zipfile.ZipFile(tiny_data / "test" / "final_visual_test.zip") as z:
        test_ids = {int(n.split("/")[1]) for n in z.namelist()}
    assert test_ids == {int(r[1]) for r in read_tsv(layout.interaction_file(tiny_data, "test"))}


def test_ground_truth_and_oracle(tiny_data):
    truth = read_tsv(layout.ground_truth_file(tiny_data))
    test = read_tsv(layout.interaction_file(tiny_data, "test"))
    assert [r[:2] for r in truth] == [r[:2] for r in test]
    click = np.array([int(r[2]) for r in truth])
    p = np.array([float(r[3]) for r in truth])
    summary = json.loads((tiny_data / "ground_truth" / "summary.json").read_text())
    assert summary["oracle_auc"] == pytest.approx(roc_auc(click, p), abs=2e-3)
    assert summary["oracle_auc"] > 0.65


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    from kuai_assets.synth import generate, get_size

    spec = get_size("tiny").with_vector_dim(16)
    generate(tmp_path / "a", spec, seed=3)
    generate(tmp_path / "b", spec, seed=3)
    generate(tmp_path / "c", spec, seed=4)
    read = lambda name: (tmp_path / name / "train" / "train_interaction.txt").read_bytes()  # noqa: E731
    assert read("a") == read("b")
    assert read("a") != read("c")
    with pytest.raises(FileExistsError):
        generate(tmp_path / "a", spec, seed=3)


# -- worlds ----------------------------------------------------------------------------------------
#
# Every world must be readable by the platform, keep a true ground truth, and show its mechanism in
# what it writes. Each mechanism test runs over every world and asserts the mechanism is visible
# exactly where the world switches it on, so it fails on `demo` (and on any world without it).

import hashlib

from kuai_assets.synth import WORLDS, SizeSpec, generate, get_size

WORLD_SPEC = get_size("tiny").with_vector_dim(64)
# few users with many rows each over many photos: each user's topic mix per 12 hours is well measured
DENSE_SPEC = SizeSpec("dense", 60, 40_000, 6_000, 90_000, 7_500, 8_000, vector_dim=64, users_per_block=60)

# The tiny dataset (seed 11, 2048-d) as the generator wrote it before worlds existed. The text files
# by sha256. The vectors' float32 bytes depend on the machine's BLAS kernel (an AVX-512 OpenBLAS
# kernel rounds about 1% of them one float32 step away from a Haswell one), so the zips are held
# to their member names (in order) and to three sums over every value (plain, squared, and along a
# fixed random direction), which a changed generator moves by far more than that rounding (~1e-11
# of the sum).
DEMO_TINY_SHA256 = {
    "ground_truth/test_ground_truth.txt": "b4cef02db07b501824d1eb15fbc33a66026308c86794d6e4c08bf539e1c3087f",
    "test/test_face.txt": "7246e5174e86bd174e998a6b98183ac29d1bed4144f2103c62247b3ea2b61245",
    "test/test_interaction.txt": "8c0fd2b327c865075090d10269c4a1d2e86187542f319d4e231184694e4c06f1",
    "test/test_text.txt": "6a1f77a417ea3eafe1de802cd56d5be3f942704c5419d6c2d299da2a01fb0ba7",
    "train/train_face.txt": "9ed425e7c3233216d0df5f10bafaaa8fc78dbb3c56003e595f957007830c2cfa",
    "train/train_interaction.txt": "e4a1c50871f86b768b5025deb35b0abbbc08a67da973973226047d46ae2354ad",
    "train/train_text.txt": "66efb5459ab9310324e17e73120f35b7b275c3832768580e21bcd38ecd3581b1",
}
# split: (sha256 of the member names joined by newlines, sum, sum of squares, sum along the direction)
DEMO_TINY_VECTORS = {
    "train": ("26bc5981fc811d45b5e96c8919f205281adac357a7ff570a371df361ecf873eb",
              3672077.9551295466, 4638935.598773589, -122768.28887856705),
    "test": ("52c7988545c6f5687195fe7ff62c4b90a677bc8c2d86d3f1e9afa1c8ae516914",
             877318.2816722174, 1111608.8278411357, -29342.138992471027),
}


def vector_fingerprint(zip_path):
    """(sha256 of the member names in order, sum, sum of squares, sum along a seeded direction) of
    the float32 [1, D] arrays in a released-style visual zip."""
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        arrays = [np.load(io.BytesIO(archive.read(name))) for name in names]
    assert {(a.dtype, a.shape) for a in arrays} == {(np.dtype("float32"), (1, 2048))}
    vectors = np.concatenate(arrays).astype(np.float64)
    direction = np.random.default_rng(0).standard_normal(vectors.shape[1])
    return (hashlib.sha256("\n".join(names).encode()).hexdigest(), float(vectors.sum()),
            float((vectors * vectors).sum()), float((vectors @ direction).sum()))


@pytest.fixture(scope="session")
def world_data(tmp_path_factory):
    """world_data(name, spec=WORLD_SPEC): that world's dataset, generated once per session (seed 11)."""
    base = tmp_path_factory.mktemp("worlds")
    made = {}

    def get(name, spec=WORLD_SPEC):
        root = base / f"{spec.name}-{name}"
        if root not in made:
            made[root] = generate(root, spec, seed=11, world=name)
        return root

    return get


def train_rows(root):
    return np.loadtxt(layout.interaction_file(root, "train"), dtype=np.int64, ndmin=2)


def train_vectors(root):
    archive = np.load(root / "train" / "final_visual_train.zip")
    ids = np.array([int(name.split("/")[1]) for name in archive.files])
    vectors = np.stack([archive[name][0] for name in archive.files])
    order = np.argsort(ids)
    return ids[order], vectors[order]


def topic_clusters(vectors, k=40):
    from sklearn.cluster import KMeans

    km = KMeans(k, n_init=1, random_state=0).fit(vectors)
    return km.labels_, km.cluster_centers_


def test_demo_world_writes_what_the_generator_wrote_before_worlds(tiny_data, tmp_path):
    digests = {
        str(p.relative_to(tiny_data)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(tiny_data.rglob("*"))
        if p.is_file() and p.name != "summary.json" and p.suffix != ".zip"
    }
    assert digests == DEMO_TINY_SHA256
    assert sorted(str(p.relative_to(tiny_data)) for p in tiny_data.rglob("*.zip")) == [
        "test/final_visual_test.zip", "train/final_visual_train.zip"]
    for split, (names, *sums) in DEMO_TINY_VECTORS.items():
        found_names, *found_sums = vector_fingerprint(tiny_data / split / f"final_visual_{split}.zip")
        assert found_names == names, f"{split}: the zip's members differ"
        assert found_sums == pytest.approx(sums, rel=1e-9, abs=1e-6), f"{split}: the vectors differ"
    assert json.loads((tiny_data / "ground_truth" / "summary.json").read_text())["world"] == "demo"
    spec = get_size("tiny").with_vector_dim(16)
    generate(tmp_path / "default", spec, seed=5)
    generate(tmp_path / "named", spec, seed=5, world="demo")
    for name in ("train/train_interaction.txt", "ground_truth/test_ground_truth.txt", "train/final_visual_train.zip"):
        assert (tmp_path / "default" / name).read_bytes() == (tmp_path / "named" / name).read_bytes()


def test_unknown_world_is_refused_with_the_choices(tmp_path, capsys):
    from kuai_assets.synth.__main__ import main

    with pytest.raises(ValueError, match="Unknown world 'calm'; choose one of demo, click_blind_timeline"):
        generate(tmp_path / "x", WORLD_SPEC, world="calm")
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(["--size", "tiny", "--world", "calm", "--out", str(tmp_path / "y")])
    assert "invalid choice: 'calm'" in capsys.readouterr().err and not (tmp_path / "y").exists()


@pytest.mark.parametrize("world", list(WORLDS))
def test_every_world_is_read_by_the_platform_with_a_true_ground_truth(world, world_data, tmp_path):
    import duckdb

    from kuai_assets.formats.released import read_faces, read_interactions, read_text

    root = world_data(world)
    con = duckdb.connect()
    read_interactions(con, root, tmp_path / "raw_interactions.parquet")
    con.execute(f"create table photos as select distinct photo_id, split from '{tmp_path / 'raw_interactions.parquet'}'")
    read_faces(con, root, "photos", tmp_path / "raw_faces.parquet")
    read_text(con, root, "photos", tmp_path / "raw_text.parquet")
    (train_clicks, test_rows, photos) = con.execute(
        f"select avg(click) filter (where split = 'train'), count(*) filter (where split = 'test'), "
        f"count(distinct photo_id) from '{tmp_path / 'raw_interactions.parquet'}'"
    ).fetchone()
    assert 0.15 < train_clicks < 0.25
    with zipfile.ZipFile(root / "train" / "final_visual_train.zip") as z, zipfile.ZipFile(
        root / "test" / "final_visual_test.zip"
    ) as t:
        assert len(z.namelist()) + len(t.namelist()) == photos, "one vector per photo shown"

    summary = json.loads((root / "ground_truth" / "summary.json").read_text())
    assert summary["world"] == world and summary["world_switches"] == json.loads(json.dumps(WORLDS[world].switches()))
    truth = read_tsv(layout.ground_truth_file(root))
    assert len(truth) == test_rows
    click = np.array([int(r[2]) for r in truth])
    p = np.array([float(r[3]) for r in truth])
    assert summary["oracle_auc"] == pytest.approx(roc_auc(click, p), abs=2e-3)
    # p_click is the true probability under the world: clicks are calibrated to it decile by decile
    deciles = np.array_split(np.argsort(p), 10)
    observed = np.array([click[d].mean() for d in deciles])
    expected = np.array([p[d].mean() for d in deciles])
    assert np.abs(observed - expected).max() < 0.06, (observed, expected)


def gap_click_correlation(root) -> float:
    """Correlation of the clicks in a batch with the pause before the user's next batch (under 10 min)."""
    rows = train_rows(root)
    user, click, time = rows[:, 0], rows[:, 2], rows[:, 5]
    order = np.lexsort((time, user))
    user, click, time = user[order], click[order], time[order]
    new = np.ones(len(user), dtype=bool)
    new[1:] = (user[1:] != user[:-1]) | (time[1:] != time[:-1])
    batch = np.cumsum(new) - 1
    clicks = np.bincount(batch, weights=click)
    batch_user, batch_time = user[new], time[new]
    gap = np.append(np.diff(batch_time), 0) / 1000
    same_session = np.append(batch_user[1:] == batch_user[:-1], False) & (gap < 600)
    return float(np.corrcoef(clicks[same_session], gap[same_session])[0, 1])


@pytest.mark.parametrize("world", list(WORLDS))
def test_the_pause_before_the_next_batch_follows_clicks_unless_the_timeline_is_click_blind(world, world_data):
    r = gap_click_correlation(world_data(world))
    if WORLDS[world].click_blind_timeline:
        assert abs(r) < 0.05, f"{world}: the pause correlates with the batch's clicks (r={r:.3f})"
    else:
        assert r > 0.1, f"{world}: the pause should follow what was watched (r={r:.3f})"


def topic_mix_shift(root) -> float:
    """How much more a user's mix of shown clusters differs between hours 0-12 and 24-36 of train than
    between two random halves of hours 0-12 (mean total variation over users, same row counts)."""
    rows = train_rows(root)
    ids, vectors = train_vectors(root)
    labels, _ = topic_clusters(vectors)
    label = labels[np.searchsorted(ids, rows[:, 1])]
    hours = (rows[:, 5] - rows[:, 5].min()) / 3.6e6
    rng = np.random.default_rng(0)
    within, between = [], []
    mix = lambda idx: np.bincount(label[idx], minlength=40) / len(idx)  # noqa: E731
    for u in np.unique(rows[:, 0]):
        mine = rows[:, 0] == u
        for _ in range(5):  # several random halves: less noise from the split itself
            first = rng.permutation(np.flatnonzero(mine & (hours < 12)))
            last = rng.permutation(np.flatnonzero(mine & (hours >= 24)))
            n = min(len(first) // 2, len(last))
            if n < 20:
                break
            within.append(0.5 * np.abs(mix(first[:n]) - mix(first[n : 2 * n])).sum())
            between.append(0.5 * np.abs(mix(first[:n]) - mix(last[:n])).sum())
    assert len(within) >= 5 * 40
    return float(np.mean(between) - np.mean(within))


@pytest.mark.parametrize("world", list(WORLDS))
def test_users_topic_mix_moves_over_time_only_when_interests_drift(world, world_data):
    shift = topic_mix_shift(world_data(world, DENSE_SPEC))
    if WORLDS[world].interest_drift > 0:
        assert shift > 0.02, f"{world}: the first and last 12 hours show the same topic mix (shift {shift:.4f})"
    else:
        assert shift < 0.01, f"{world}: interests are fixed, yet the topic mix moved (shift {shift:.4f})"


def within_cluster_taste(root) -> float:
    """Split-half agreement (mean cosine over users) of each user's click direction within clusters:
    clicked minus unclicked mean of (vector - its cluster centre), over two disjoint halves of the
    photos, after removing the direction common to all users."""
    rows = train_rows(root)
    ids, vectors = train_vectors(root)
    labels, centres = topic_clusters(vectors)
    residual = (vectors - centres[labels])[np.searchsorted(ids, rows[:, 1])]
    half = (np.random.default_rng(0).random(len(ids)) < 0.5)[np.searchsorted(ids, rows[:, 1])]
    user, click = rows[:, 0], rows[:, 2]

    def directions(selected):
        out = {}
        for u in np.unique(user):
            mine = (user == u) & selected
            if (mine & (click == 1)).sum() >= 5 and (mine & (click == 0)).sum() >= 5:
                out[u] = residual[mine & (click == 1)].mean(0) - residual[mine & (click == 0)].mean(0)
        return out

    a, b = directions(half), directions(~half)
    common_a, common_b = np.mean(list(a.values()), axis=0), np.mean(list(b.values()), axis=0)
    cosines = []
    for u in set(a) & set(b):
        x, y = a[u] - common_a, b[u] - common_b
        cosines.append(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y))
    assert len(cosines) >= 80
    return float(np.mean(cosines))


@pytest.mark.parametrize("world", list(WORLDS))
def test_taste_within_clusters_only_in_worlds_with_a_fine_visual_taste(world, world_data):
    agreement = within_cluster_taste(world_data(world))
    if WORLDS[world].fine_taste > 0:
        assert agreement > 0.07, f"{world}: no consistent per-user taste within clusters ({agreement:.3f})"
    else:
        assert agreement < 0.05, f"{world}: a per-user taste within clusters ({agreement:.3f})"


@pytest.mark.parametrize("world", list(WORLDS))
def test_face_and_text_shares_are_low_only_in_sparse_worlds(world, world_data):
    counts = json.loads((world_data(world) / "ground_truth" / "summary.json").read_text())["counts"]
    sparse = WORLDS[world].face_rate_scale < 0.5 and WORLDS[world].text_rate_scale < 0.5
    for split in ("train", "test"):
        faces = counts[split]["photos_with_faces"] / counts[split]["photos"]
        texts = counts[split]["photos_with_text"] / counts[split]["photos"]
        # the written files say the same as the summary
        assert len(read_tsv(layout.face_file(world_data(world), split))) == counts[split]["photos_with_faces"]
        if sparse:
            assert faces < 0.12 and texts < 0.12, (split, faces, texts)
        else:
            assert faces > 0.25 and texts > 0.35, (split, faces, texts)


@pytest.mark.parametrize("world", list(WORLDS))
def test_widely_shown_photos_are_clicked_more_only_with_popular_appeal(world, world_data):
    rows = train_rows(world_data(world))
    _, photo, shown = np.unique(rows[:, 1], return_inverse=True, return_counts=True)
    r = float(np.corrcoef(np.log(shown[photo]), rows[:, 2])[0, 1])
    if WORLDS[world].popular_appeal > 0:
        assert r > 0.04, f"{world}: clicks do not rise with impressions (r={r:.3f})"
    else:
        assert r < 0.02, f"{world}: clicks rise with impressions (r={r:.3f})"
