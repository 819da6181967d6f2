"""The training matrix: model_rows joined to every feature group, by the groups' declared grain.

The join is derived from the declarations alone: a group whose grain is a subset of
(setup, fold, row_id, user_id, photo_id) joins on those columns; a group with (k, cluster) in its
grain joins once per k through the photo's cluster at that k, its columns suffixed `_k<k>`.
Which columns are features, and of which kind, is written into the Parquet file's metadata so
the model and the ablation read them from the matrix itself.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kuai_assets.features.catalog import CLUSTER_KEYS, CatalogError, TableModel
from kuai_assets.features.fold_statistics import BackgroundParquetWriter
from kuai_assets.storage import WorkDir, check_identifier, remove_stale_temporaries, sql_string, temporary_sibling

MATRIX = "training_matrix"
FEATURES_KEY = b"kuai_features"
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
    """Join model_rows to every group; keep every scored row and at most `max_fit_rows_per_setup`
    fit rows of each setup (a uniform sample by hash of row_id; None keeps all).

    Built in stages so that memory stays bounded at any size: the chosen rows are written once,
    sorted by (setup, role, row_id); then each group is joined to them alone and written in the
    same order (one hash join at a time, not one per group at once, which at 24 million
    interactions needed 8 GB of memory and 28 GB of spill and still failed); then the pieces are
    stitched side by side, checking row by row that they line up.
    """
    started = time.time()
    tables = ["model_rows", "raw_interactions"] + [g.name for g in groups]
    needs_clusters = any(set(CLUSTER_KEYS) <= set(g.grain) for g in groups)
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
        pieces = [base]
        features: list[Feature] = []
        for index, group in enumerate(groups):
            declared = group.check_columns(pq.read_schema(work.require_table(group.name)).names)
            name = check_identifier(group.name, "feature group")
            select, joins = ["r.row_id as __row_id"], []
            if set(CLUSTER_KEYS) <= set(group.grain):
                row_keys = [k for k in group.grain if k not in CLUSTER_KEYS]
                for k in ks:
                    c_alias, g_alias = f"c{index}_{k}", f"g{index}_{k}"
                    joins.append(
                        f"left join video_clusters as {c_alias} on {c_alias}.photo_id = r.photo_id and {c_alias}.k = {k}"
                    )
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
            names = [f.name for f in features]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise CatalogError(f"feature column(s) {repeated} are declared by more than one group")
            piece = pieces_dir / f"{name}.parquet"
            con.execute(
                f"copy (select {', '.join(select)} from chosen_rows as r {' '.join(joins)} {in_base_order}) "
                f"to {sql_string(piece)} (format parquet)"
            )
            pieces.append(piece)
            log(f"training_matrix: joined {group.name} ({index + 1} of {len(groups)})")
        metadata = json.dumps([asdict(f) for f in features])
        with work.writing_table(MATRIX) as tmp:
            _stitch(pieces, n_rows, tmp, {FEATURES_KEY: metadata.encode()})
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
        "seconds": round(time.time() - started, 2),
    }


def _stitch(pieces: list[Path], n_rows: int, out: Path, metadata: dict, batch_rows: int = 131_072) -> None:
    """Write the columns of `pieces` (same rows, same order) side by side into one Parquet file.

    Every piece after the first carries `__row_id`, checked against the first piece's row_id.
    """
    files = [pq.ParquetFile(p) for p in pieces]
    for path, f in zip(pieces, files):
        if f.metadata.num_rows != n_rows:
            raise CatalogError(
                f"{path.stem}: {f.metadata.num_rows:,} rows joined to {n_rows:,} model rows; its grain is not unique"
            )
    fields = list(files[0].schema_arrow)
    for f in files[1:]:
        fields += [field for field in f.schema_arrow if field.name != "__row_id"]
    schema = pa.schema(fields, metadata=metadata)
    streams = [f.iter_batches(batch_size=batch_rows) for f in files]
    pending: list = [None] * len(files)
    # dictionary pages only for the keys and integer columns: on float features they rarely pay
    # and cost most of the writer's time
    dictionary = [f.name for f in fields if not pa.types.is_floating(f.type)]
    # the next batches are read and lined up while the writer thread encodes the last ones
    with BackgroundParquetWriter(out, schema, compression="zstd", use_dictionary=dictionary) as writer:
        while True:
            for i, stream in enumerate(streams):
                if pending[i] is None or len(pending[i]) == 0:
                    pending[i] = next(stream, None)
            if all(p is None for p in pending):
                break
            if any(p is None for p in pending):
                raise CatalogError("training_matrix pieces ended at different rows")
            n = min(len(p) for p in pending)
            parts = [p.slice(0, n) for p in pending]
            pending = [p.slice(n) for p in pending]
            row_id = parts[0].column("row_id")
            columns = list(parts[0].columns)
            for part in parts[1:]:
                if not part.column("__row_id").equals(row_id):
                    raise CatalogError("training_matrix pieces are not in the same row order")
                columns += [part.column(j) for j, name in enumerate(part.schema.names) if name != "__row_id"]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def _typed(expression: str, kind: str, alias: str) -> str:
    return f"{expression}::{'float' if kind == 'continuous' else 'integer'} as {check_identifier(alias)}"


def read_features(path) -> list[Feature]:
    """The feature declarations stored in a training matrix file."""
    metadata = pq.read_schema(path).metadata or {}
    if FEATURES_KEY not in metadata:
        raise CatalogError(f"{path} carries no feature declarations; rebuild training_matrix")
    return [Feature(**f) for f in json.loads(metadata[FEATURES_KEY])]
