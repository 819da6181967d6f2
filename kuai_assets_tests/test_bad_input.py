"""Damaged datasets in the released layout: every damage gets a deliberate behaviour, asserted.

Each case copies a small handmade dataset (6 users, 4-d vectors), damages one thing and says what
must happen: either a `DataFormatError` naming the file, the line or photo_id and what is wrong,
or acceptance with the damage counted in what becomes the asset's `accepted_and_counted`
metadata. The cases run the readers directly (what the raw and visual assets call); a few run
through the real Dagster assets, to show the message reaches the user and the previously
materialized output is left intact. README.md, "What the platform guarantees and rejects", is
the table of these cases.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dagster as dg
import duckdb
import numpy as np
import pytest

from kuai_assets.formats import layout
from kuai_assets.formats.released import DataFormatError, read_faces, read_interactions, read_text
from kuai_assets.visual.stage import consolidate
from kuai_assets_tests.conftest import make_resources
from kuai_assets_tests.handmade import npy_bytes, write_dataset

DIM = 4
SMALL = dict(n_users=6, n_train_photos=60, n_test_photos=20, rows_per_user=15, dim=DIM)

TRAIN_I = "train/train_interaction.txt"
TEST_I = "test/test_interaction.txt"
TRAIN_F = "train/train_face.txt"
TRAIN_T = "train/train_text.txt"
TRAIN_Z = "train/final_visual_train.zip"


@dataclass
class Rejected:
    """The read stops with a DataFormatError naming `file` (relative to the data root)."""

    file: str
    problem: str  # a regex the message's problem part must match
    line: int | None = None
    photo_id: int | None = None
    member: str | None = None  # a zip member named in the message


@dataclass
class Accepted:
    """The read succeeds; each key of `counted` grows by its value over the undamaged dataset."""

    counted: dict[str, int] = field(default_factory=dict)
    verify: Callable[[Path, Path], None] = lambda out, pristine_out: None  # looks at what was written


# -- editing released files ----------------------------------------------------------------


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def write_lines(path: Path, rows: list[str]) -> None:
    path.write_text("\n".join(rows) + "\n")


def edit_line(path: Path, number: int, change: Callable[[list[str]], list[str]]) -> list[str]:
    """Replace 1-based line `number`'s tab-separated fields by change(fields); return the new fields."""
    rows = lines(path)
    fields = change(rows[number - 1].split("\t"))
    rows[number - 1] = "\t".join(fields)
    write_lines(path, rows)
    return fields


def field_of(path: Path, number: int, index: int) -> str:
    return lines(path)[number - 1].split("\t")[index]


def rewrite_zip(path: Path, replace: dict[str, bytes | None] | None = None, rename=lambda name: name, compression=zipfile.ZIP_STORED):
    """Rewrite a zip: members in `replace` get new bytes (None drops them), every name goes through `rename`."""
    replace = replace or {}
    with zipfile.ZipFile(path) as z:
        members = [(info.filename, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members:
            data = replace.get(name, data)
            if data is not None:
                z.writestr(rename(name), data)


def table(out: Path, name: str, sql: str) -> list[tuple]:
    con = duckdb.connect()
    try:
        return con.execute(sql.replace("{t}", f"read_parquet('{out / (name + '.parquet')}')")).fetchall()
    finally:
        con.close()


# -- the cases -----------------------------------------------------------------------------

CASES = []


def case(fn):
    CASES.append(pytest.param(fn, id=fn.__name__))
    return fn


@case
def interactions_wrong_number_of_columns(root):
    edit_line(root / TRAIN_I, 4, lambda f: f[:7])
    return Rejected(TRAIN_I, r"^expected 8 tab-separated columns, found 7; the line reads", line=4)


@case
def interactions_extra_column(root):
    edit_line(root / TEST_I, 2, lambda f: f + ["1"])
    return Rejected(TEST_I, r"^expected 4 tab-separated columns, found 5", line=2)


@case
def interactions_non_integer_id(root):
    edit_line(root / TRAIN_I, 3, lambda f: ["u" + f[0]] + f[1:])
    return Rejected(TRAIN_I, r"^column 'user_id' must be an integer, got 'u\d+'", line=3)


@case
def interactions_decimal_id(root):  # DuckDB's own cast would read it as the next integer up
    edit_line(root / TEST_I, 3, lambda f: [f[0], f[1] + ".5"] + f[2:])
    return Rejected(TEST_I, r"^column 'photo_id' must be an integer, got '\d+\.5'", line=3)


@case
def interactions_exponent_time(root):  # DuckDB's own cast would read it as 760000000000
    edit_line(root / TRAIN_I, 5, lambda f: f[:5] + ["7.6e11"] + f[6:])
    return Rejected(TRAIN_I, r"^column 'time' must be an integer, got '7.6e11'", line=5)


@case
def interactions_empty_file(root):
    (root / TEST_I).write_text("")
    return Rejected(TEST_I, r"^file is empty$")


@case
def interactions_truncated_last_line(root):
    path = root / TRAIN_I
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    time_starts = len(text.rstrip("\n")) - len(last) + len("\t".join(last.split("\t")[:5])) + 1
    path.write_text(text[: time_starts + 4])  # cut in the middle of `time`, no final newline
    return Rejected(
        TRAIN_I, r"^expected 8 tab-separated columns, found 6 \(the last line looks truncated\)", line=len(lines(path))
    )


@case
def interactions_repeated_pair(root):
    path = root / TRAIN_I
    rows = lines(path)
    rows.append(rows[5])
    write_lines(path, rows)
    user, photo = rows[5].split("\t")[:2]
    return Rejected(
        TRAIN_I, rf"^the pair user_id {user}, photo_id {photo} repeats on lines 6, {len(rows)}", line=len(rows)
    )


@case
def interactions_test_photo_also_in_train(root):
    photo = int(field_of(root / TRAIN_I, 1, 1))
    edit_line(root / TEST_I, 5, lambda f: [f[0], str(photo)] + f[2:])
    return Rejected(
        TEST_I,
        rf"^photo_id {photo} also appears in train_interaction.txt \(line 1\); train and test photos must be disjoint",
        line=5,
        photo_id=photo,
    )


@case
def interactions_test_user_without_history(root):
    edit_line(root / TEST_I, 4, lambda f: ["999999"] + f[1:])

    def verify(out, pristine_out):
        assert table(out, "raw_interactions", "select split, line from {t} where user_id = 999999") == [("test", 4)]

    return Accepted({"test users without training history": 1}, verify)


@case
def interactions_negative_time(root):
    edit_line(root / TRAIN_I, 4, lambda f: f[:5] + ["-" + f[5]] + f[6:])
    return Rejected(TRAIN_I, r"^time must be a positive millisecond timestamp, got -\d+$", line=4)


@case
def interactions_missing_time(root):
    edit_line(root / TEST_I, 4, lambda f: f[:2] + [""] + f[3:])
    return Rejected(TEST_I, r"^time is missing \(empty field\)$", line=4)


@case
def interactions_playing_time_outlier(root):  # real: the format notes a maximum of 1,912,441 seconds
    edit_line(root / TRAIN_I, 4, lambda f: f[:2] + ["1"] + f[3:6] + ["1912441"] + f[7:])

    def verify(out, pristine_out):
        assert table(out, "raw_interactions", "select playing_time from {t} where split = 'train' and line = 4") == [
            (1912441,)
        ]

    return Accepted({"train rows with playing_time over 10x duration (outliers, kept)": 1}, verify)


@case
def interactions_blank_line(root):  # DuckDB alone would skip it and shift every later line number
    path = root / TRAIN_I
    rows = lines(path)
    rows.insert(3, "")
    write_lines(path, rows)
    return Rejected(TRAIN_I, r"^the line is blank", line=4)


@case
def interactions_click_not_0_or_1(root):
    edit_line(root / TRAIN_I, 7, lambda f: f[:2] + ["2"] + f[3:])
    return Rejected(TRAIN_I, r"^click must be 0 or 1, got 2$", line=7)


def vector(*values) -> bytes:
    return npy_bytes(np.array([values], dtype=np.float32))


@case
def visual_vector_of_wrong_length(root):
    rewrite_zip(root / TRAIN_Z, {"final_visual_train/15": npy_bytes(np.ones((1, DIM + 1), np.float32))})
    return Rejected(TRAIN_Z, rf"vector has {DIM + 1} values.* {DIM}", member="final_visual_train/15")


@case
def visual_first_vector_of_wrong_length(root):  # the message says which length came first
    rewrite_zip(root / TRAIN_Z, {"final_visual_train/10": npy_bytes(np.ones((1, DIM + 1), np.float32))})
    return Rejected(
        TRAIN_Z, rf"^vector has {DIM} values, but the first vector read.* has {DIM + 1}", member="final_visual_train/11"
    )


@case
def visual_vector_of_wrong_shape(root):
    rewrite_zip(root / TRAIN_Z, {"final_visual_train/15": npy_bytes(np.ones((2, DIM), np.float32))})
    return Rejected(TRAIN_Z, rf"^vector shape must be \[1, D\], got \[2, {DIM}\]", member="final_visual_train/15")


@case
def visual_nan(root):
    rewrite_zip(root / TRAIN_Z, {"final_visual_train/15": vector(1, np.nan, 0, 0)})
    return Rejected(TRAIN_Z, r"^vector contains NaN or infinity", photo_id=15)


@case
def visual_infinity_in_a_deflated_zip(root):
    rewrite_zip(root / TRAIN_Z, {"final_visual_train/16": vector(1, 0, -np.inf, 0)}, compression=zipfile.ZIP_DEFLATED)
    return Rejected(TRAIN_Z, r"^vector contains NaN or infinity", photo_id=16)


@case
def visual_member_not_a_numpy_array(root):
    rewrite_zip(root / TRAIN_Z, {"final_visual_train/15": b"P2\n4 1\n255\n0 1 2 3\n"})
    return Rejected(TRAIN_Z, r"^not a numpy \.npy array", member="final_visual_train/15")


@case
def visual_zip_with_another_folder_prefix(root):
    rewrite_zip(root / TRAIN_Z, rename=lambda name: "vectors/2018/" + name.rsplit("/", 1)[1])

    def verify(out, pristine_out):
        for name in ("photo_id.npy", "split.npy", "vectors.npy"):
            assert np.array_equal(np.load(out / "store" / name), np.load(pristine_out / "store" / name)), name

    return Accepted({}, verify)


def face_line(root, number: int, faces: str) -> int:
    """Replace the face list of line `number` of train_face.txt; return its photo_id."""
    return int(edit_line(root / TRAIN_F, number, lambda f: [f[0], faces])[0])


@case
def faces_malformed_json(root):
    photo = face_line(root, 3, "[[0.2, 1, 20, 50]")
    return Rejected(TRAIN_F, r"^the face list is not valid JSON: '\[\[0.2, 1, 20, 50\]'", line=3, photo_id=photo)


@case
def faces_gender_not_0_or_1(root):
    photo = face_line(root, 3, "[[0.2, 2, 20, 50]]")
    return Rejected(
        TRAIN_F, r"^gender must be 0 \(female\) or 1 \(male\); face 1 is \[0.2, 2, 20, 50\]", line=3, photo_id=photo
    )


@case
def faces_share_not_positive(root):
    photo = face_line(root, 5, "[[0.3, 1, 20, 50], [0, 0, 30, 60]]")
    return Rejected(TRAIN_F, r"^share of the cover must be in \(0, 1\]; face 2 is \[0, 0, 30, 60\]", line=5, photo_id=photo)


@case
def faces_share_negative(root):
    photo = face_line(root, 2, "[[-0.1, 1, 20, 50]]")
    return Rejected(TRAIN_F, r"^share of the cover must be in \(0, 1\]; face 1 is \[-0.1, 1, 20, 50\]", line=2, photo_id=photo)


@case
def faces_not_a_list_of_faces(root):  # valid JSON, but an object: once read as a cover without faces
    photo = face_line(root, 4, '{"share": 0.2, "gender": 1}')
    return Rejected(TRAIN_F, r"^the face list must be a JSON list of faces", line=4, photo_id=photo)


@case
def faces_face_with_three_values(root):
    photo = face_line(root, 3, "[[0.2, 1, 20]]")
    return Rejected(
        TRAIN_F, r"^face 1 must be \[share, gender, age, appearance\] \(4 numbers\), got \[0.2,1,20\]", line=3, photo_id=photo
    )


@case
def faces_row_for_unknown_photo(root):
    path = root / TRAIN_F
    write_lines(path, lines(path) + ["777777\t[[0.2, 1, 20, 50]]"])

    def verify(out, pristine_out):
        assert table(out, "raw_faces", "select count(*) from {t} where photo_id = 777777") == [(0,)]

    return Accepted({"train: face rows for photos not in train_interaction.txt (dropped)": 1}, verify)


@case
def text_non_integer_token(root):
    photo = int(edit_line(root / TRAIN_T, 3, lambda f: [f[0], "12,abc,5"])[0])
    return Rejected(TRAIN_T, r"^cover word 'abc' is not a word id .*the value reads '12,abc,5'", line=3, photo_id=photo)


@case
def text_decimal_token(root):  # try_cast would have read it as word 6
    photo = int(edit_line(root / TRAIN_T, 6, lambda f: [f[0], "12,5.5"])[0])
    return Rejected(TRAIN_T, r"^cover word '5.5' is not a word id", line=6, photo_id=photo)


@case
def text_empty_value(root):
    shown = int(field_of(root / TRAIN_I, 1, 1))  # a photo of the interactions, so it is in raw_text
    number = next(i for i, row in enumerate(lines(root / TRAIN_T), 1) if row.split("\t")[0] == str(shown))
    edit_line(root / TRAIN_T, number, lambda f: [f[0], ""])

    def verify(out, pristine_out):
        assert table(out, "raw_text", f"select words, n_words from {{t}} where photo_id = {shown}") == [([], 0)]

    return Accepted({"train: rows with an empty value (read as no text)": 1}, verify)


@case
def faces_empty_file(root):  # no photo of the split has a detected face
    shown = {row.split("\t")[1] for row in lines(root / TRAIN_I)}
    dropped = sum(row.split("\t")[0] not in shown for row in lines(root / TRAIN_F))
    (root / TRAIN_F).write_text("")

    def verify(out, pristine_out):
        assert table(out, "raw_faces", "select count(*) from {t} where split = 'train'") == [(0,)]
        assert table(out, "raw_faces", "select count(*) from {t} where split = 'test'") == table(
            pristine_out, "raw_faces", "select count(*) from {t} where split = 'test'"
        )

    return Accepted(
        {
            "train: train_face.txt has no rows (no photo with a face)": 1,
            "train: face rows for photos not in train_interaction.txt (dropped)": -dropped,
        },
        verify,
    )


@case
def text_empty_file(root):  # no photo of the split has cover words
    shown = {row.split("\t")[1] for row in lines(root / TRAIN_I)}
    rows = [row.split("\t") for row in lines(root / TRAIN_T)]
    (root / TRAIN_T).write_text("")

    def verify(out, pristine_out):
        assert table(out, "raw_text", "select count(*), max(n_words) from {t} where split = 'train'") == table(
            pristine_out, "raw_text", "select count(*), 0 from {t} where split = 'train'"
        )

    return Accepted(
        {
            "train: train_text.txt has no rows (no photo with cover words)": 1,
            "train: photos without a text row (read as no text)": sum(r[0] in shown for r in rows),
            "train: text rows for photos not in train_interaction.txt (dropped)": -sum(r[0] not in shown for r in rows),
            "train: rows with an empty value (read as no text)": -sum(not r[1:] or not r[1].strip() for r in rows),
        },
        verify,
    )


# -- running the readers -------------------------------------------------------------------


def read_released(root: Path, out: Path) -> dict[str, int]:
    """Every reader, as the raw assets and video_embeddings call them; the accepted counts."""
    out.mkdir(parents=True)
    con = duckdb.connect()
    try:
        accepted = dict(read_interactions(con, root, out / "raw_interactions.parquet").accepted)
        con.execute(
            f"create table photos as select distinct photo_id, split from read_parquet('{out / 'raw_interactions.parquet'}')"
        )
        accepted.update(read_faces(con, root, "photos", out / "raw_faces.parquet").accepted)
        accepted.update(read_text(con, root, "photos", out / "raw_text.parquet").accepted)
    finally:
        con.close()
    (out / "store").mkdir()
    consolidate({s: layout.find_visual_source_checked(root, s) for s in layout.SPLITS}, out / "store", "float32")
    return accepted


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pristine") / "data", **SMALL)


@pytest.fixture(scope="module")
def pristine_read(pristine) -> tuple[Path, dict[str, int]]:
    out = pristine.parent / "pristine_out"
    return out, read_released(pristine, out)


@pytest.fixture
def damaged(pristine, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    return root


def check_rejection(error: DataFormatError, expected: Rejected, root: Path, message: str) -> None:
    """The message names the file, the line or photo, and what is wrong; nothing else."""
    assert type(error) is DataFormatError
    assert message.startswith(str(root / expected.file)), message
    assert error.line == expected.line, message
    assert error.photo_id == expected.photo_id, message
    assert re.search(expected.problem, error.problem), message
    if expected.line is not None:
        assert f", line {expected.line}" in message
    if expected.photo_id is not None:
        assert f"photo_id {expected.photo_id}" in message
    if expected.member is not None:
        assert f"member '{expected.member}'" in message
    assert expected.line or expected.photo_id or expected.member or expected.file.endswith(".txt")


@pytest.mark.parametrize("damage", CASES)
def test_damaged_dataset(damage, damaged, pristine, pristine_read, tmp_path):
    pristine_out, pristine_accepted = pristine_read
    expected = damage(damaged)
    out = tmp_path / "out"
    if isinstance(expected, Rejected):
        with pytest.raises(DataFormatError) as caught:
            read_released(damaged, out)
        check_rejection(caught.value, expected, damaged, str(caught.value))
    else:
        accepted = read_released(damaged, out)
        assert set(accepted) == set(pristine_accepted)
        for key, before in pristine_accepted.items():
            assert accepted[key] == before + expected.counted.get(key, 0), key
        expected.verify(out, pristine_out)


def test_the_undamaged_dataset_reads_cleanly(pristine_read):
    """The baseline the accepted cases count against: only the handmade generator's own quirks."""
    _, accepted = pristine_read
    assert accepted["test users without training history"] == 0
    assert accepted["train rows with playing_time over 10x duration (outliers, kept)"] == 0
    assert accepted["train: rows with an empty value (read as no text)"] == 0


# -- through the real Dagster assets -------------------------------------------------------


def photo_without_vector(root):
    """Only the asset can see this one: the vectors alone do not say which photos are needed."""
    photo = int(field_of(root / TRAIN_I, 1, 1))
    rewrite_zip(root / TRAIN_Z, {f"final_visual_train/{photo}": None})
    return Rejected(TRAIN_Z, rf"^1 photo\(s\) in the interactions have no vector, e\.g\. photo_id {photo}$", photo_id=photo)


def raw_and_visual_assets() -> dict[str, dg.AssetsDefinition]:
    """Each raw asset, and video_embeddings' multi-asset (the visual stage: select the key alone)."""
    from kuai_assets.defs.raw import raw_faces, raw_interactions, raw_text
    from kuai_assets.defs.visual import visual_stage

    found = {a.key.to_user_string(): a for a in (raw_interactions, raw_faces, raw_text)}
    return {**found, "video_embeddings": visual_stage}


# the step each asset runs in
STEP = {"video_embeddings": "visual_stage"}


@pytest.fixture(scope="module")
def good_work(pristine, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("good") / "work"
    assets = raw_and_visual_assets()
    result = dg.materialize(list(assets.values()), selection=list(assets), resources=make_resources(pristine, work))
    assert result.success
    return work


def outputs(work: Path) -> dict[str, bytes | str]:
    """Every published file under tables/ and stores/ (store links by target), and nothing else there."""
    found: dict[str, bytes | str] = {}
    for path in sorted([*work.glob("tables/**/*"), *work.glob("stores/**/*"), *work.glob("stores/.*/**/*")]):
        name = str(path.relative_to(work))
        if path.name.endswith(".lock"):
            continue  # a lock is not an output
        if path.is_symlink():
            found[name] = "-> " + str(path.readlink())
        elif path.is_file():
            found[name] = path.read_bytes()
    return found


ASSET_CASES = [
    pytest.param("raw_interactions", interactions_repeated_pair, id="raw_interactions-repeated_pair"),
    pytest.param("raw_interactions", interactions_truncated_last_line, id="raw_interactions-truncated_last_line"),
    pytest.param("raw_faces", faces_gender_not_0_or_1, id="raw_faces-gender_not_0_or_1"),
    pytest.param("raw_text", text_non_integer_token, id="raw_text-non_integer_token"),
    pytest.param("video_embeddings", photo_without_vector, id="video_embeddings-photo_without_vector"),
    pytest.param("video_embeddings", visual_nan, id="video_embeddings-nan"),
]


@pytest.mark.parametrize("asset, damage", ASSET_CASES)
def test_failed_asset_names_the_problem_and_keeps_the_previous_output(asset, damage, damaged, good_work, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(good_work, work, symlinks=True)
    before = outputs(work)
    assert f"tables/{asset}.parquet" in before or f"stores/{asset}" in before
    expected = damage(damaged)

    result = dg.materialize(
        [raw_and_visual_assets()[asset]], selection=[asset], resources=make_resources(damaged, work), raise_on_error=False
    )

    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == STEP.get(asset, asset)
    # a dagster Failure raised by clear_failures, not an exception escaping from DuckDB or numpy
    assert failure.step_failure_data.error.cls_name == "Failure"
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith(f"{asset}: ")
    prefix = len(f"{asset}: ")
    check_rejection(_parse(description[prefix:]), expected, damaged, description[prefix:])
    # nothing was published and nothing half-written was left beside the previous output
    assert outputs(work) == before
    if asset == "video_embeddings":
        from kuai_assets.visual.store import VectorStore

        assert len(VectorStore.open(work / "stores" / asset)) == SMALL["n_train_photos"] + SMALL["n_test_photos"]
    else:
        assert table(work / "tables", asset, "select count(*) from {t}")[0][0] > 0


@pytest.mark.parametrize(
    "config, problem",
    [
        ({"ks": [4, 10**6]}, r"ks: cannot make 1000000 clusters of [\d,]+ photos \(each k must be 2 to the number of photos\)"),
        ({"ks": [4, 9], "dimensions": 10**4}, r"dimensions must be between 1 and \d+ \(the vectors' length\), got 10000"),
        ({"encoding": "int4"}, r"encoding must be one of bfloat16, float16, float32, not 'int4'"),
    ],
)
def test_a_visual_setting_that_cannot_work_fails_clearly_and_keeps_the_previous_outputs(pristine, good_work, tmp_path, config, problem):
    from kuai_assets.defs.visual import visual_stage

    work = tmp_path / "work"
    shutil.copytree(good_work, work, symlinks=True)
    before = outputs(work)
    result = dg.materialize(
        [visual_stage],
        resources=make_resources(pristine, work),
        run_config={"ops": {"visual_stage": {"config": config}}},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_failure_data.error.cls_name == "Failure"  # raised by clear_failures, with no traceback to read
    description = failure.step_failure_data.user_failure_data.description
    assert re.fullmatch(r"video_embeddings, pca_visual_features, video_clusters: " + problem, description), description
    assert outputs(work) == before


def _parse(message: str) -> DataFormatError:
    """Rebuild the DataFormatError from its message (`<path>[, line N][, photo_id P]: problem`)."""
    match = re.match(r"^(?P<path>.+?)(?:, line (?P<line>\d+))?(?:, photo_id (?P<photo>\d+))?: (?P<problem>.*)$", message)
    assert match, message
    line, photo = match["line"], match["photo"]
    return DataFormatError(
        match["path"], match["problem"], int(line) if line else None, int(photo) if photo else None
    )


def test_accepted_damage_is_counted_in_the_asset_metadata(damaged, pristine_read, tmp_path):
    _, pristine_accepted = pristine_read
    accepted_cases = [
        interactions_test_user_without_history,
        interactions_playing_time_outlier,
        faces_row_for_unknown_photo,
        text_empty_value,
    ]
    counted = {}
    for damage in accepted_cases:
        counted.update(damage(damaged).counted)
    assets = raw_and_visual_assets()
    result = dg.materialize(
        [assets["raw_interactions"], assets["raw_faces"], assets["raw_text"]],
        resources=make_resources(damaged, tmp_path / "work"),
    )
    assert result.success
    shown = {}
    for event in result.get_asset_materialization_events():
        shown.update(event.materialization.metadata["accepted_and_counted"].value)
    assert set(shown) == set(pristine_accepted)
    for key, delta in counted.items():
        assert shown[key] == pristine_accepted[key] + delta, key


def test_a_step_failing_after_it_wrote_leaves_the_previous_table(damaged, good_work, tmp_path, monkeypatch):
    """The readers reject before writing; this proves the storage too: a failure after the new
    file was (half-)written publishes nothing and leaves no temporary file behind."""
    from kuai_assets.defs import raw

    work = tmp_path / "work"
    shutil.copytree(good_work, work, symlinks=True)
    before = outputs(work)

    def write_half_then_fail(con, root, out):
        out.write_bytes(b"PAR1 half a parquet file")
        raise DataFormatError(root / TRAIN_I, "simulated failure after writing", line=1)

    monkeypatch.setattr(raw, "read_interactions", write_half_then_fail)
    result = dg.materialize([raw.raw_interactions], resources=make_resources(damaged, work), raise_on_error=False)
    assert not result.success
    assert "simulated failure after writing" in result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert outputs(work) == before
    assert table(work / "tables", "raw_interactions", "select count(*) from {t}")[0][0] == len(lines(damaged / TRAIN_I)) + len(
        lines(damaged / TEST_I)
    )


DISK_FULL = (
    r"the disk is full \(no space left on device\) while writing under {work}; \d+\.\d [MGT]iB free there now\. "
    r"Nothing already materialized was changed: free space on that disk, or point KUAI_WORK_DIR at a larger one"
)


def test_a_disk_that_fills_up_fails_the_step_in_one_line_and_keeps_the_previous_table(pristine, good_work, tmp_path, monkeypatch):
    """raw_interactions' COPY half-writes its file, then DuckDB raises what it raises on a full
    disk (its class and words, which carry no errno). One line, no traceback; the previous table
    stays published and no temporary is left. (/dev/full cannot stand in for a full disk: on some
    virtual machines its writes succeed.)"""
    from kuai_assets.defs import raw

    work = tmp_path / "work"
    shutil.copytree(good_work, work, symlinks=True)
    before = outputs(work)

    def fill_the_disk(con, root, out):
        out.write_bytes(b"PAR1 half a parquet file")
        raise duckdb.IOException(
            f'IO Error: Async write failed for range [offset=0, size=27]: {{"exception_type":"IO","exception_message":'
            f'"Could not write file \\"{out}\\": No space left on device","errno":"28"}}'
        )

    monkeypatch.setattr(raw, "read_interactions", fill_the_disk)
    result = dg.materialize([raw.raw_interactions], resources=make_resources(pristine, work), raise_on_error=False)

    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_failure_data.error.cls_name == "Failure"
    description = failure.step_failure_data.user_failure_data.description
    assert re.fullmatch("raw_interactions: " + DISK_FULL.format(work=re.escape(str(work.absolute()))), description), description
    assert outputs(work) == before


def test_pyarrows_and_the_systems_disk_full_errors_are_one_line_and_other_errors_pass_through(tmp_path):
    from kuai_assets.defs.metadata import clear_failures
    from kuai_assets.storage import disk_full

    with pytest.raises(dg.Failure) as caught:
        with clear_failures("some_table", tmp_path):  # pyarrow's words on a full disk
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert re.fullmatch("some_table: " + DISK_FULL.format(work=re.escape(str(tmp_path))), caught.value.description)

    with pytest.raises(dg.Failure, match="^some_store: the disk is full"):
        with clear_failures("some_store", tmp_path):
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as exc:  # raised again as another library's error
                raise RuntimeError("could not save the model") from exc

    assert not disk_full(OSError(errno.EACCES, os.strerror(errno.EACCES)))
    with pytest.raises(ZeroDivisionError):
        with clear_failures("some_table", tmp_path):
            1 / 0
