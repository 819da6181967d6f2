"""What the attention model reads: one content row per photo, and the target rows with context.

Photo content (no labels anywhere): the reduced visual vector (`pca_visual_features`), the
cluster id at every k (`video_clusters`), the first `words_per_photo` cover words hashed into
`word_buckets` buckets (`raw_text`), face summaries (`raw_faces`) and the duration
(`raw_interactions.duration_time`). Target rows: `model_rows` (for the time) joined to the
chosen context columns of `training_matrix` (never its label statistics: the attention model
learns user taste from the history itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kuai_assets.features.catalog import CatalogError
from kuai_assets.features.matrix import MATRIX, Feature, read_features
from kuai_assets.storage import WorkDir, check_identifier

FACE_COLUMNS = ["face_count", "face_share_total", "face_share_max", "face_male_share", "face_age_mean",
                "face_appearance_mean"]
PHOTO_TABLES = ["model_rows", "pca_visual_features", "video_clusters", "raw_text", "raw_faces", "raw_interactions"]


class AttentionInputError(CatalogError):
    """An input table lacks what the attention model needs (a photo's vector, a context column)."""


@dataclass
class PhotoTable:
    """Content of every photo of `model_rows`, row i describing photo_id[i] (sorted)."""

    photo_id: np.ndarray  # int64, sorted
    dense: np.ndarray  # (photos, dense) float32, raw values (the network standardises them)
    dense_names: list[str]
    clusters: np.ndarray  # (photos, len(cluster_ks)) int64: cluster + 1, 0 when unknown
    cluster_ks: list[int]
    words: np.ndarray  # (photos, words_per_photo) int64: hashed word bucket + 1, 0 = no word

    def index(self, photo_id: np.ndarray) -> np.ndarray:
        photo_id = np.asarray(photo_id, dtype=np.int64)
        position = np.minimum(np.searchsorted(self.photo_id, photo_id), len(self.photo_id) - 1)
        missing = self.photo_id[position] != photo_id
        if missing.any():
            raise AttentionInputError(f"photo_id {photo_id[missing][0]} has no content row ({int(missing.sum())} such rows)")
        return position


def load_photos(work: WorkDir, words_per_photo: int = 8, word_buckets: int = 1 << 15) -> PhotoTable:
    con = work.connect(PHOTO_TABLES)
    try:
        pcs = [c for (c,) in con.execute(
            "select column_name from (describe pca_visual_features) where column_name like 'pc\\_%' escape '\\' "
            "order by column_name").fetchall()]
        if not pcs:
            raise AttentionInputError("pca_visual_features has no pc_* columns")
        ks = [k for (k,) in con.execute("select distinct k from video_clusters order by k").fetchall()]
        cluster_columns = ", ".join(f"max(cluster) filter (where k = {int(k)}) as c_{int(k)}" for k in ks)
        word_columns = ", ".join(
            f"coalesce((hash(t.words[{i}]) % {int(word_buckets)}) + 1, 0)::bigint as w_{i}"
            for i in range(1, words_per_photo + 1)
        )
        con.execute("create temp table photos as select distinct photo_id from model_rows")
        table = con.execute(
            f"""
            with clusters as (select photo_id{', ' + cluster_columns if ks else ''} from video_clusters group by photo_id),
            faces as (
                select photo_id, count(*) as face_count, sum(share) as face_share_total, max(share) as face_share_max,
                       avg(gender) as face_male_share, avg(age) as face_age_mean, avg(appearance) as face_appearance_mean
                from raw_faces group by photo_id),
            durations as (select photo_id, max(duration_time) as duration_time from raw_interactions group by photo_id)
            select p.photo_id, v.photo_id is null as no_vector,
                   {', '.join('v.' + c for c in pcs)},
                   {', '.join(f'coalesce(f.{c}, 0) as {c}' for c in FACE_COLUMNS)},
                   ln(1 + greatest(coalesce(d.duration_time, 0), 0)) as log_duration,
                   (coalesce(d.duration_time, 0) = 0)::double as still_picture
                   {''.join(f', coalesce(c.c_{int(k)} + 1, 0) as c_{int(k)}' for k in ks)},
                   {word_columns}
            from photos p
            left join pca_visual_features v using (photo_id)
            left join clusters c using (photo_id)
            left join faces f using (photo_id)
            left join durations d using (photo_id)
            left join raw_text t using (photo_id)
            order by p.photo_id
            """
        ).fetchnumpy()
    finally:
        con.close()
    no_vector = np.asarray(table["no_vector"], dtype=bool)
    if no_vector.any():
        raise AttentionInputError(
            f"photo_id {table['photo_id'][no_vector][0]} has no row in pca_visual_features "
            f"({int(no_vector.sum())} photos of model_rows lack one)"
        )
    dense_names = pcs + FACE_COLUMNS + ["log_duration", "still_picture"]
    dense = np.stack([np.asarray(table[c], dtype=np.float32) for c in dense_names], axis=1)
    clusters = (np.stack([np.asarray(table[f"c_{int(k)}"], dtype=np.int64) for k in ks], axis=1)
                if ks else np.zeros((len(dense), 0), dtype=np.int64))
    words = np.stack([np.asarray(table[f"w_{i}"], dtype=np.int64) for i in range(1, words_per_photo + 1)], axis=1)
    return PhotoTable(np.asarray(table["photo_id"], dtype=np.int64), dense, dense_names, clusters, [int(k) for k in ks], words)


@dataclass
class Targets:
    """The rows of one (setup, role): what is predicted, and each row's context columns."""

    setup: str
    role: str
    row_id: np.ndarray
    user_id: np.ndarray
    photo_id: np.ndarray
    time: np.ndarray
    click: np.ndarray | None  # None for test rows
    context: np.ndarray  # (rows, len(context_names)) float32, NaN where missing

    def __len__(self) -> int:
        return len(self.row_id)


def context_features(work: WorkDir, groups: list[str]) -> list[Feature]:
    """The training matrix's columns of the chosen groups; groups using labels are refused."""
    features = read_features(work.require_table(MATRIX))
    known = sorted({f.group for f in features})
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise AttentionInputError(f"context group(s) {unknown} are not in the training matrix; it has: {', '.join(known)}")
    chosen = [f for f in features if f.group in groups]
    labelled = sorted({f.group for f in chosen if f.uses_labels})
    if labelled:
        raise AttentionInputError(
            f"context group(s) {labelled} use labels; the attention model takes only label-free context "
            "(user taste comes from the history)"
        )
    return chosen


def load_targets(work: WorkDir, setup: str, role: str, features: list[Feature]) -> Targets:
    columns = "".join(f", m.{check_identifier(f.name, 'feature')}" for f in features)
    con = work.connect(["model_rows", MATRIX])
    try:
        table = con.execute(
            f"select m.row_id, m.user_id, m.photo_id, r.time, m.click{columns} from {MATRIX} m "
            "join model_rows r on r.setup = m.setup and r.row_id = m.row_id "
            "where m.setup = ? and m.role = ? order by m.row_id",
            [setup, role],
        ).fetchnumpy()
    finally:
        con.close()
    n = len(table["row_id"])
    if n == 0:
        raise AttentionInputError(f"the training matrix has no {role} rows in setup {setup!r}")
    context = np.empty((n, len(features)), dtype=np.float32)
    for i, f in enumerate(features):
        values = table[f.name]
        context[:, i] = np.ma.filled(np.ma.asarray(values, dtype=np.float64), np.nan)
    click = table["click"]
    masked = np.ma.getmaskarray(click)
    if masked.all():
        labels = None
    elif masked.any():
        raise AttentionInputError(f"{int(masked.sum())} {role} rows of setup {setup!r} have no click label")
    else:
        labels = np.asarray(click, dtype=np.float32)
    return Targets(setup, role, np.asarray(table["row_id"], dtype=np.int64), np.asarray(table["user_id"], dtype=np.int64),
                   np.asarray(table["photo_id"], dtype=np.int64), np.asarray(table["time"], dtype=np.int64), labels, context)
