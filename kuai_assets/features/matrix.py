"""The training matrix: model_rows joined to every feature group, by the groups' declared grain.

The join is derived from the declarations alone: a group whose grain is a subset of
(setup, fold, row_id, user_id, photo_id) joins on those columns; a group with (k, cluster) in its
grain joins once per k through the photo's cluster at that k, its columns suffixed `_k<k>`.
Which columns are features, and of which kind, is written into the Parquet file's metadata so
the model and the ablation read them from the matrix itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kuai_assets.features.catalog import CLUSTER_KEYS, CatalogError, TableModel
from kuai_assets.features.fold_statistics import BackgroundParquetWriter
from kuai_assets.storage import (
    WorkDir,
    check_identifier,
    file_digests,
    remove_stale_temporaries,
    sql_string,
    temporary_sibling,
)

MATRIX = "training_matrix"
FEATURES_KEY = b"kuai_features"
PIECES_KEY = b"kuai_piece_keys"  # group -> piece_keys(...): what its columns were made of
PIECE_FORMAT = 1  # raise when the way a group is joined changes: no piece of an older matrix is kept
ID_COLUMNS = ("setup", "role", "row_id", "user_id", "photo_id", "fold", "click")


@dataclass(frozen=True)
class Feature:
    name: str  # column in the matrix
    group: str
    kind: str  # continuous | discrete
    source: str  # column in the group's table
    k: int | None = None
    uses_labels: bool = False
    uses_scored_window_log: bool = False


def build_training_matrix(
    work: WorkDir, groups: list[TableModel], log=lambda m: None, max_fit_rows_per_setup: int | None = None
) -> dict:
    """Join model_rows to every feature group; keep every scored row and at most `max_fit_rows_per_setup`
    fit rows of each setup (a uniform sample by hash of row_id; None keeps all).

    Built in stages so that memory stays bounded at any size: the chosen rows are written once,
    sorted by (setup, role, row_id); then each group is joined to them alone and written in the
    same order (one hash join at a time, not one per group at once, which at 24 million
    interactions needed 8 GB of memory and 28 GB of spill and still failed); then the pieces are
    stitched side by side, checking row by row that they line up.

    A group whose piece key (`piece_keys`: the content of its table, of model_rows and, at
    cluster grain, of video_clusters; its grain and declared columns) is the one the previous
    matrix recorded, over the same chosen rows in the same order, is not joined again: its
    columns are copied from the previous matrix, which holds exactly what the join would give.
    After an edit of one feature group only that group is joined; the result is byte-identical.
    """
    started = time.time()
    tables = ["model_rows", "raw_interactions"] + [g.name for g in groups]
    needs_clusters = any(at_cluster_grain(g) for g in groups)
    if needs_clusters:
        tables.append("video_clusters")
    remove_stale_temporaries(work.duckdb_tmp)
    pieces_dir = temporary_sibling(work.duckdb_tmp / "training_matrix_pieces")
    pieces_dir.mkdir(parents=True)
    con = work.connect(tables)
    try:
        ks = [int(r[0]) for r in con.execute("select distinct k from video_clusters order by k").fetchall()] if needs_clusters else []
        fit_rows = dict(con.execute("select setup, count(*) from model_rows where role = 'fit' group by setup").fetchall())
        keep = {
            setup: 1.0 if not max_fit_rows_per_setup or n <= max_fit_rows_per_setup else max_fit_rows_per_setup / n
            for setup, n in fit_rows.items()
        }
        where = ""
        if any(share < 1.0 for share in keep.values()):
            cases = " ".join(
                f"when r.setup = {sql_string(setup)} then {int(share * 1_000_000)}" for setup, share in sorted(keep.items())
            )
            where = f"where r.role = 'scored' or hash(r.row_id + 7919) % 1000000 < case {cases} else 1000000 end"
            log(
                "training_matrix: keeping "
                + ", ".join(f"{share:.1%} of the {fit_rows[s]:,} {s} fit rows" for s, share in sorted(keep.items()))
                + " (max_fit_rows_per_setup); every scored row"
            )
        order = "order by r.setup, r.role, r.row_id"
        base = pieces_dir / "rows.parquet"
        con.execute(
            f"copy (select r.setup, r.role, r.row_id, r.user_id, r.photo_id, r.fold, i.click "
            f"from model_rows as r join raw_interactions as i on i.row_id = r.row_id {where} {order}) "
            f"to {sql_string(base)} (format parquet)"
        )
        # each piece is written in the order of rows.parquet: by its row number in that file, one
        # integer to sort on rather than (setup, role, row_id) again (a quarter of the joins' time)
        con.execute(f"create view chosen_rows as select * from read_parquet({sql_string(base)}, file_row_number = true)")
        in_base_order = "order by r.file_row_number"
        n_rows = con.execute("select count(*) from chosen_rows").fetchone()[0]
        plans = [_plan(work, group, index, ks) for index, group in enumerate(groups)]
        features = [f for plan in plans for f in plan.features]
        names = [f.name for f in features]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise CatalogError(f"feature column(s) {repeated} are declared by more than one group")
        keys = piece_keys(work, plans, ks)
        previous, previous_keys = _previous_matrix(work.table_path(MATRIX), base, pieces_dir)
        pieces, kept = [_Piece(base, None, "row_id")], []
        for index, plan in enumerate(plans):
            if previous is not None and previous_keys.get(plan.group) == keys[plan.group]:
                pieces.append(_Piece(previous, [f.name for f in plan.features], "row_id"))
                kept.append(plan.group)
                continue
            piece = pieces_dir / f"{plan.group}.parquet"
            con.execute(
                f"copy (select {', '.join(plan.select)} from chosen_rows as r {' '.join(plan.joins)} {in_base_order}) "
                f"to {sql_string(piece)} (format parquet)"
            )
            pieces.append(_Piece(piece, None, "__row_id"))
            log(f"training_matrix: joined {plan.group} ({index + 1} of {len(groups)})")
        if kept:
            log(f"training_matrix: kept the columns of {len(kept)} of {len(groups)} groups from the previous matrix, "
                f"their tables and rows unchanged: {', '.join(kept)}")
        metadata = {FEATURES_KEY: json.dumps([asdict(f) for f in features]).encode(),
                    PIECES_KEY: json.dumps(keys, sort_keys=True).encode()}
        with work.writing_table(MATRIX) as tmp:
            _stitch(pieces, n_rows, tmp, metadata)
            counts = con.execute(
                f"select setup, role, count(*), avg(click) from read_parquet({sql_string(tmp)}) group by all order by all"
            ).fetchall()
    finally:
        con.close()
        shutil.rmtree(pieces_dir, ignore_errors=True)
    return {
        "features": features,
        "counts": counts,
        "fit_rows_before_sampling": fit_rows,
        "ks": ks,
        "kept_groups": kept,
        "seconds": round(time.time() - started, 2),
    }


@dataclass
class _GroupPlan:
    """How one group joins the chosen rows: its features, select list and joins."""

    group: str
    grain: list[str]
    features: list[Feature]
    select: list[str]
    joins: list[str]


def at_cluster_grain(group: TableModel | _GroupPlan) -> bool:
    """Whether the group's rows are per cluster (its grain holds k and cluster): it joins the
    chosen rows through each row's photo's cluster at every k of video_clusters."""
    return set(CLUSTER_KEYS) <= set(group.grain)


def _plan(work: WorkDir, group: TableModel, index: int, ks: list[int]) -> _GroupPlan:
    declared = group.check_columns(pq.read_schema(work.require_table(group.name)).names)
    name = check_identifier(group.name, "feature group")
    features: list[Feature] = []
    select, joins = ["r.row_id as __row_id"], []
    if at_cluster_grain(group):
        row_keys = [k for k in group.grain if k not in CLUSTER_KEYS]
        for k in ks:
            c_alias, g_alias = f"c{index}_{k}", f"g{index}_{k}"
            joins.append(f"left join video_clusters as {c_alias} on {c_alias}.photo_id = r.photo_id and {c_alias}.k = {k}")
            on = [f"{g_alias}.k = {k}", f"{g_alias}.cluster = {c_alias}.cluster"]
            on += [f"{g_alias}.{check_identifier(key)} = r.{key}" for key in row_keys]
            joins.append(f"left join {name} as {g_alias} on {' and '.join(on)}")
            for column, kind in declared:
                features.append(
                    Feature(f"{column}_k{k}", group.name, kind, column, k, group.uses_labels, group.uses_scored_window_log)
                )
                select.append(_typed(f"{g_alias}.{check_identifier(column)}", kind, f"{column}_k{k}"))
    else:
        alias = f"g{index}"
        on = [f"{alias}.{check_identifier(key)} = r.{key}" for key in group.grain]
        joins.append(f"left join {name} as {alias} on {' and '.join(on)}")
        for column, kind in declared:
            features.append(Feature(column, group.name, kind, column, None, group.uses_labels, group.uses_scored_window_log))
            select.append(_typed(f"{alias}.{check_identifier(column)}", kind, column))
    return _GroupPlan(group.name, list(group.grain), features, select, joins)


def piece_keys(work: WorkDir, plans: list[_GroupPlan], ks: list[int]) -> dict[str, str]:
    """Each group's piece key: a digest of what its columns in the matrix are made of besides
    which rows are chosen (the content of its table, of model_rows, of video_clusters at cluster
    grain; its grain and declared features; the join's format). Equal keys over the same chosen
    rows (which `_previous_matrix` compares), equal columns."""
    tables = ["model_rows", *(p.group for p in plans)] + (["video_clusters"] if any(at_cluster_grain(p) for p in plans) else [])
    digests = file_digests({t: work.require_table(t) for t in tables})
    keys = {}
    for plan in plans:
        made_of = {
            "format": PIECE_FORMAT,
            "model_rows": digests["model_rows"],
            "table": digests[plan.group],
            "grain": plan.grain,
            "features": [asdict(f) for f in plan.features],
            "video_clusters": digests["video_clusters"] if at_cluster_grain(plan) else None,
            "ks": ks if at_cluster_grain(plan) else None,
        }
        keys[plan.group] = hashlib.blake2b(json.dumps(made_of, sort_keys=True).encode(), digest_size=16).hexdigest()
    return keys


def _previous_matrix(path: Path, base: Path, scratch: Path) -> tuple[Path | None, dict[str, str]]:
    """The previous matrix, hard-linked into `scratch` (so that a run replacing it meanwhile does
    not change what is read), and its piece keys, if it records them and holds exactly the rows of
    `base` in the same order; else (None, {})."""
    try:
        pinned = scratch / "previous_matrix.parquet"
        os.link(path, pinned)
        metadata = pq.read_schema(pinned).metadata or {}
        if PIECES_KEY not in metadata:
            return None, {}
        keys = json.loads(metadata[PIECES_KEY])
        if not isinstance(keys, dict):
            return None, {}
        columns = ["setup", "role", "row_id"]
        if not pq.read_table(pinned, columns=columns).equals(pq.read_table(base, columns=columns)):
            return None, {}
    # absent, unreadable, or no hard links on this filesystem: every group is joined again
    except (OSError, ValueError, pa.ArrowException):
        return None, {}
    return pinned, keys


@dataclass(frozen=True)
class _Piece:
    """A file whose rows line up with the chosen rows: `columns` of it (None: all but `row_id`)
    go into the matrix; its `row_id` column is checked against the chosen rows' row_id."""

    path: Path
    columns: list[str] | None
    row_id: str


def _stitch(pieces: list[_Piece], n_rows: int, out: Path, metadata: dict, batch_rows: int = 131_072) -> None:
    """Write the columns of `pieces` (same rows, same order) side by side into one Parquet file.

    The first piece (the chosen rows) gives all its columns; every other file's row ids are
    checked against the first piece's row_id, batch by batch. Pieces of one file (the groups
    kept from the previous matrix) are read in one pass.
    """
    paths = list(dict.fromkeys(p.path for p in pieces))
    # pre_buffer (pyarrow's default) reads ahead the column chunks of every row group a stream
    # will read: with the pieces all open at once, most of the matrix, compressed, was held
    # beside the batches (at default size the step's peak was 0.42 GB higher, no faster)
    files = {path: pq.ParquetFile(path, pre_buffer=False) for path in paths}
    for path, f in files.items():
        if f.metadata.num_rows != n_rows:
            raise CatalogError(
                f"{path.stem}: {f.metadata.num_rows:,} rows joined to {n_rows:,} model rows; its grain is not unique"
            )
    row_id_of = {p.path: p.row_id for p in pieces}
    # the output's columns in order, each as (file, column)
    layout = [(pieces[0].path, c) for c in files[pieces[0].path].schema_arrow.names]
    for p in pieces[1:]:
        names = p.columns if p.columns is not None else [c for c in files[p.path].schema_arrow.names if c != p.row_id]
        layout += [(p.path, c) for c in names]
    fields = [files[path].schema_arrow.field(c) for path, c in layout]
    schema = pa.schema(fields, metadata=metadata)
    read = {path: list(dict.fromkeys(([] if path == paths[0] else [row_id_of[path]]) + [c for q, c in layout if q == path]))
            for path in paths}
    streams = {path: files[path].iter_batches(batch_size=batch_rows, columns=read[path]) for path in paths}
    pending: dict = dict.fromkeys(paths)
    # dictionary pages only for the keys and integer columns: on float features they rarely pay
    # and cost most of the writer's time
    dictionary = [f.name for f in fields if not pa.types.is_floating(f.type)]
    # the next batches are read and lined up while the writer thread encodes the last ones
    with BackgroundParquetWriter(out, schema, compression="zstd", use_dictionary=dictionary) as writer:
        while True:
            for path in paths:
                if pending[path] is None or len(pending[path]) == 0:
                    pending[path] = next(streams[path], None)
            if all(b is None for b in pending.values()):
                break
            if any(b is None for b in pending.values()):
                raise CatalogError("training_matrix pieces ended at different rows")
            n = min(len(b) for b in pending.values())
            parts = {path: b.slice(0, n) for path, b in pending.items()}
            pending = {path: b.slice(n) for path, b in pending.items()}
            row_id = parts[paths[0]].column("row_id")
            for path in paths[1:]:
                if not parts[path].column(row_id_of[path]).equals(row_id):
                    raise CatalogError("training_matrix pieces are not in the same row order")
            writer.write_table(pa.Table.from_arrays([parts[path].column(c) for path, c in layout], schema=schema))


def _typed(expression: str, kind: str, alias: str) -> str:
    return f"{expression}::{'float' if kind == 'continuous' else 'integer'} as {check_identifier(alias)}"


def read_features(path) -> list[Feature]:
    """The feature declarations stored in a training matrix file."""
    metadata = pq.read_schema(path).metadata or {}
    if FEATURES_KEY not in metadata:
        raise CatalogError(f"{path} carries no feature declarations; rebuild training_matrix")
    return [Feature(**f) for f in json.loads(metadata[FEATURES_KEY])]
