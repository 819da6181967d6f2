"""The readers take the released files exactly as released, in every form the format allows."""

import time
import zipfile

import duckdb
import numpy as np
import pytest

from kuai_assets.formats import layout
from kuai_assets.formats.released import read_faces, read_interactions, read_text
from kuai_assets.formats.visual import open_vectors
from kuai_assets.visual.stage import consolidate
from kuai_assets.visual.store import VectorStore
from kuai_assets_tests.handmade import npy_bytes, write_dataset


def read_all(root, tmp_path):
    con = duckdb.connect()
    read_interactions(con, root, tmp_path / "raw_interactions.parquet")
    con.execute(f"create table photos as select distinct photo_id, split from '{tmp_path / 'raw_interactions.parquet'}'")
    faces_report = read_faces(con, root, "photos", tmp_path / "raw_faces.parquet")
    text_report = read_text(con, root, "photos", tmp_path / "raw_text.parquet")
    return con, faces_report, text_report


def test_interactions_typed_with_row_ids(tmp_path):
    root = write_dataset(tmp_path / "d")
    con, _, _ = read_all(root, tmp_path)
    rows = con.execute(f"select split, count(*), min(row_id), max(row_id), avg(click) from '{tmp_path / 'raw_interactions.parquet'}' group by 1 order by 1").fetchall()
    (test_split, n_test, test_min, test_max, test_click), (train_split, n_train, train_min, train_max, _) = rows
    assert (train_split, test_split) == ("train", "test")
    assert train_min == 0 and train_max == n_train - 1 and test_min == n_train and test_max == n_train + n_test - 1
    assert test_click is None
    first = open(layout.interaction_file(root, "train")).readline().split("\t")
    got = con.execute(f"select user_id, photo_id, click, time from '{tmp_path / 'raw_interactions.parquet'}' where row_id = 0").fetchone()
    assert got == (int(first[0]), int(first[1]), int(first[2]), int(first[5]))


def test_text_zero_conventions(tmp_path):
    root = write_dataset(tmp_path / "d")
    con, _, report = read_all(root, tmp_path)
    words = dict(con.execute(f"select photo_id, words from '{tmp_path / 'raw_text.parquet'}'").fetchall())
    for line in open(layout.text_file(root, "train")):
        photo, value = line.rstrip("\n").split("\t")
        expected = [] if value == "0" else [int(w) for w in value.split(",")]
        if int(photo) in words:  # photos never shown are not works of the interactions
            assert words[int(photo)] == expected
    assert len(words) > 700
    assert any(0 in w and len(w) > 1 for w in words.values()), "0 inside a longer list stays a word"
    assert any(w == [] for w in words.values()), "the lone token 0 means no text"
    assert report.accepted["train: photos without a text row (read as no text)"] == 0


def test_faces_only_for_photos_with_faces(tmp_path):
    root = write_dataset(tmp_path / "d")
    con, _, _ = read_all(root, tmp_path)
    faces = con.execute(f"select photo_id, face_index, share, gender, age, appearance from '{tmp_path / 'raw_faces.parquet'}' order by photo_id").fetchall()
    face_lines = [l.split("\t") for l in open(layout.face_file(root, "train"))] + [
        l.split("\t") for l in open(layout.face_file(root, "test"))
    ]
    shown = {r[0] for r in con.execute(f"select distinct photo_id from '{tmp_path / 'raw_interactions.parquet'}'").fetchall()}
    assert {f[0] for f in faces} == {int(l[0]) for l in face_lines} & shown
    assert len(faces) > 200
    assert all(f[1] == 1 and 0 < f[2] <= 1 and f[3] in (0, 1) for f in faces)


def test_missing_text_rows_and_empty_values_read_as_no_text(tmp_path):
    root = write_dataset(tmp_path / "d")
    path = layout.text_file(root, "train")
    lines = open(path).read().splitlines()
    dropped = lines[0].split("\t")[0]
    emptied = lines[1].split("\t")[0]
    path.write_text("\n".join([f"{emptied}\t"] + lines[2:]) + "\n")
    con, _, report = read_all(root, tmp_path)
    words = dict(con.execute(f"select photo_id, words from '{tmp_path / 'raw_text.parquet'}'").fetchall())
    assert words[int(dropped)] == [] and words[int(emptied)] == []
    assert report.accepted["train: photos without a text row (read as no text)"] == 1
    assert report.accepted["train: rows with an empty value (read as no text)"] == 1


def zip_ids_and_vectors(path):
    archive = np.load(path)
    return {int(k.rsplit("/", 1)[1]): archive[k][0] for k in archive.files}


@pytest.mark.parametrize(
    "visual, prefix, compression",
    [
        ("zip", "final_visual", zipfile.ZIP_DEFLATED),
        ("zip", "final_visual", zipfile.ZIP_STORED),
        ("zip", "preliminary_visual", zipfile.ZIP_STORED),
        ("folder", "final_visual", None),
    ],
)
def test_visual_vectors_in_every_released_form(tmp_path, visual, prefix, compression):
    root = write_dataset(tmp_path / "d", visual=visual, prefix=prefix, compression=compression or zipfile.ZIP_STORED)
    source = layout.find_visual_source(root, "train")
    assert source.kind == visual
    got = {}
    for chunk in open_vectors(source).chunks(chunk_vectors=100):
        got.update(zip(chunk.photo_id.tolist(), chunk.vectors))
    expected_ids = {int(l.split("\t")[1]) for l in open(layout.interaction_file(root, "train"))}
    assert expected_ids <= set(got)
    if visual == "zip":
        reference = zip_ids_and_vectors(source.path)
        assert all(np.array_equal(got[k], reference[k]) for k in reference)


def test_zip_with_another_folder_prefix_and_flat_members(tmp_path):
    path = tmp_path / "final_visual_train.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("some_other_folder/", b"")
        z.writestr("some_other_folder/17", npy_bytes(np.ones((1, 8), np.float32)))
        z.writestr("19", npy_bytes(np.full((1, 8), 2, np.float32)))
        z.writestr("__MACOSX/._19", b"junk")
    chunks = list(open_vectors(layout.VisualSource(path, "zip")).chunks())
    assert chunks[0].photo_id.tolist() == [17, 19]
    assert chunks[0].vectors[:, 0].tolist() == [1.0, 2.0]


def test_consolidated_store_matches_sources_in_every_encoding(tmp_path):
    root = write_dataset(tmp_path / "d")
    sources = {s: layout.find_visual_source(root, s) for s in ("train", "test")}
    reference = {}
    for source in sources.values():
        reference.update(zip_ids_and_vectors(source.path))
    for encoding, tolerance in (("float32", 0.0), ("float16", 1e-3), ("bfloat16", 4e-3)):
        out = tmp_path / encoding
        out.mkdir()
        meta = consolidate(sources, out, encoding)
        store = VectorStore.open(out)
        assert meta["vectors"] == len(reference) == len(store)
        assert store.encoding == encoding
        assert (out / "vectors.npy").stat().st_size < 128 + len(store) * store.dim * (4 if encoding == "float32" else 2) + 1
        rows = np.arange(0, len(store), 97)
        decoded = store.rows(rows)
        for i, vector in zip(rows, decoded):
            np.testing.assert_allclose(vector, reference[int(store.photo_id[i])], rtol=tolerance, atol=tolerance)
        blocks = np.concatenate([b for _, b in store.row_blocks(rows=50)])
        np.testing.assert_array_equal(blocks[rows], decoded)
        assert set(store.split.tolist()) == {0, 1}


def test_zip_chunks_with_reused_arrays_hold_what_a_fresh_read_holds(tmp_path, monkeypatch):
    """Blocks are decoded ahead on the read threads into arrays taken in turn: a caller holding
    `reuse_after` chunks at once must never see one of them overwritten by a block read ahead."""
    from kuai_assets.formats import visual_zip

    root = write_dataset(tmp_path / "d", compression=zipfile.ZIP_STORED)
    source = layout.find_visual_source(root, "train")
    reader = open_vectors(source)
    fresh = [(c.photo_id.copy(), c.vectors.copy()) for c in reader.chunks(chunk_vectors=7)]
    assert len(fresh) > 2 * (visual_zip.READ_AHEAD + 2)  # enough chunks to take every array several times
    held = []
    for k, chunk in enumerate(reader.chunks(chunk_vectors=7, reuse_after=2)):
        held.append(chunk)
        time.sleep(0.002)  # the read threads run ahead meanwhile
        for back, earlier in enumerate(held[-2:][::-1]):  # this chunk and the one before, as the pass holds them
            ids, vectors = fresh[k - back]
            assert np.array_equal(earlier.photo_id, ids) and np.array_equal(earlier.vectors, vectors), (k, back)
    assert len(held) == len(fresh)
    # and it can fail: the arrays are reused, so a chunk held longer than promised is overwritten
    assert not all(np.array_equal(c.vectors, v) for c, (_, v) in zip(held, fresh))


def test_zip_members_with_another_npy_header_among_equally_spaced_ones_are_read_too(tmp_path):
    """The fast path compares each member's .npy header with the first one's, run by run; a
    member whose header differs (here a 1-d array of the same length) is decoded on its own."""
    path = tmp_path / "final_visual_train.zip"
    rng = np.random.default_rng(0)
    vectors = {photo_id: rng.normal(size=(1, 16)).astype(np.float32) for photo_id in range(100, 140)}
    with zipfile.ZipFile(path, "w") as z:
        for photo_id, v in vectors.items():
            z.writestr(f"final_visual_train/{photo_id}", npy_bytes(v.reshape(16) if photo_id in (107, 131) else v))
    chunks = list(open_vectors(layout.VisualSource(path, "zip")).chunks(chunk_vectors=25))
    got = np.concatenate([c.vectors for c in chunks])
    assert np.concatenate([c.photo_id for c in chunks]).tolist() == list(vectors)
    assert np.array_equal(got, np.concatenate(list(vectors.values())))


def test_the_vector_check_stops_on_nan_or_infinity_and_not_on_a_sum_that_overflows():
    from kuai_assets.formats.released import DataFormatError
    from kuai_assets.visual.codec import check_vectors

    photo_id = np.array([5, 6, 7])
    big = np.full((3, 8), 3e38, dtype=np.float32)  # every row's sum overflows float32
    for encoding in ("bfloat16", "float32"):
        check_vectors(big, photo_id, "here", encoding)
        for bad in (np.nan, np.inf, -np.inf):
            vectors = big.copy()
            vectors[1, 3] = bad
            with pytest.raises(DataFormatError, match="NaN or infinity") as raised:
                check_vectors(vectors, photo_id, "here", encoding)
            assert raised.value.photo_id == 6
    both = np.zeros((3, 8), dtype=np.float32)
    both[2, :2] = [np.inf, -np.inf]  # the sum is NaN
    with pytest.raises(DataFormatError) as raised:
        check_vectors(both, photo_id, "here", "bfloat16")
    assert raised.value.photo_id == 7


def test_a_finite_value_that_bfloat16_rounds_to_infinity_is_stopped_naming_the_photo(tmp_path):
    """bfloat16 keeps float32's range, except the last half step: 3.4e38 rounds up to infinity."""
    from kuai_assets.formats.released import DataFormatError

    path = tmp_path / "final_visual_train.zip"
    with zipfile.ZipFile(path, "w") as z:
        for photo_id, value in ((21, 1.0), (22, 3.38e38), (23, 3.4e38)):
            z.writestr(f"final_visual_train/{photo_id}", npy_bytes(np.full((1, 8), value, np.float32)))
    sources = {"train": layout.VisualSource(path, "zip")}
    (tmp_path / "store_bf16").mkdir()
    with pytest.raises(DataFormatError, match="exceed the bfloat16 range") as raised:
        consolidate(sources, tmp_path / "store_bf16", "bfloat16")
    assert raised.value.photo_id == 23
    (tmp_path / "store_f32").mkdir()
    meta = consolidate(sources, tmp_path / "store_f32", "float32")  # float32 keeps them
    assert meta["vectors"] == 3
