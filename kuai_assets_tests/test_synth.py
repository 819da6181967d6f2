"""The synthetic generator writes exactly the released layout, with marginals close to the real ones."""

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
