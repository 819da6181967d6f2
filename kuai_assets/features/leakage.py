"""A probe that proves label statistics never see the label of the row they describe.

On a sample of users, every feature group is computed three times: on the real
labels, with the labels of the validation rows shuffled among themselves, and with the labels of
one fold's rows shuffled among themselves. A row's features may not move when only the labels of
its own kind of row moved: validation rows must not see validation labels, fold-f rows must not see
fold-f labels. The same run also checks that the shuffles did move other rows' features, so the
probe can fail.

A group's probe is a function of its code, of the code of what it reads (model_rows,
label_history, and any other table model), of the probe's own machinery and of the tables the
sample is drawn from. `plan_probe` digests those into a key per group; a group whose key has a
passing verdict (`read_verdicts`, kept in the work dir by `record_verdicts`) need not be probed
again. After one SQL file is edited, only that group is probed, and after it is changed back,
none.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from kuai_assets.features.catalog import SOURCE_TABLES, TableModel, load_catalog
from kuai_assets.features.matrix import MATRIX, build_training_matrix
from kuai_assets.features.runner import materialize_table_model
from kuai_assets.storage import WorkDir, atomic_file, file_digests, sql_string

LABELS = ("click", '"like"', "follow", "playing_time")
PROBED_FOLD = 0
# bump when what a passing verdict means changes in a way the sources below do not show
PROBE_FORMAT = 1
VERDICTS_FILE = "leak_probe.json"
KEPT_VERDICTS = 8  # passing keys kept per group
_PACKAGE = Path(__file__).resolve().parent.parent  # kuai_assets


@dataclass
class ProbeResult:
    rows_checked: int
    max_change_protected: float  # must be ~0 (float noise): features of rows whose own labels were shuffled
    changed_elsewhere: int  # must be > 0: the shuffle did reach other rows' features
    worst_feature: str | None
    scenario: str


def _prepare(source: WorkDir, scratch: WorkDir, users: int, seed: int) -> None:
    scratch.tables.mkdir(parents=True, exist_ok=True)
    con = source.connect(["raw_interactions", "raw_faces", "raw_text", "pca_visual_features", "video_clusters"])
    try:
        con.execute(
            "create temp table sample_users as select user_id from "
            "(select distinct user_id from raw_interactions where split = 'train') "
            "order by hash(user_id + ?) limit ?",
            [seed, users],
        )
        con.execute(
            "create temp table sample_rows as select * from raw_interactions "
            "where user_id in (select user_id from sample_users)"
        )
        con.execute("create temp table sample_photos as select distinct photo_id from sample_rows")
        for table, query in (
            ("raw_interactions", "select * from sample_rows order by row_id"),
            ("raw_faces", "select * from raw_faces where photo_id in (select photo_id from sample_photos)"),
            ("raw_text", "select * from raw_text where photo_id in (select photo_id from sample_photos)"),
            ("pca_visual_features", "select * from pca_visual_features where photo_id in (select photo_id from sample_photos)"),
            ("video_clusters", "select * from video_clusters where photo_id in (select photo_id from sample_photos)"),
        ):
            con.execute(f"copy ({query}) to {sql_string(scratch.table_path(table))} (format parquet)")
    finally:
        con.close()


def _shuffle_labels(work: WorkDir, where: str, seed: int) -> None:
    """Permute the label columns among the train rows matching `where` (a fixed SQL predicate)."""
    path = work.table_path("raw_interactions")
    con = work.connect(["raw_interactions", "model_rows"])
    try:
        labels = ", ".join(LABELS)
        con.execute(
            f"create temp table chosen as select row_id from model_rows where {where}"
        )
        con.execute(
            f"create temp table shuffled as "
            f"with a as (select row_id, row_number() over (order by row_id) as k from chosen), "
            f"b as (select {labels}, row_number() over (order by hash(row_id + {int(seed)})) as k "
            f"      from raw_interactions where row_id in (select row_id from chosen)) "
            f"select a.row_id, b.* exclude (k) from a join b using (k)"
        )
        con.execute(
            f"copy (select i.* replace ({', '.join(f'coalesce(s.{c}, i.{c}) as {c}' for c in LABELS)}) "
            f"from raw_interactions i left join shuffled s using (row_id) order by i.row_id) "
            f"to {sql_string(str(path) + '.new')} (format parquet)"
        )
    finally:
        con.close()
    Path(str(path) + ".new").replace(path)


def _materialize(work: WorkDir, models: list[TableModel], variables: dict[str, dict]) -> None:
    for model in models:
        materialize_table_model(model, work, variables.get(model.name))


def probe_models(groups: list[TableModel], catalog: dict[str, TableModel]) -> list[TableModel]:
    """What the probe materializes for `groups`: model_rows and label_history, then every table
    model the groups read (transitively) and the groups themselves, each after what it reads."""
    ordered: dict[str, TableModel] = {}

    def visit(model: TableModel) -> None:
        if model.name in ordered:
            return
        for name in model.upstream:
            if name in catalog and name != model.name:
                visit(catalog[name])
        ordered[model.name] = model

    for model in (catalog["model_rows"], catalog["label_history"], *groups):
        visit(model)
    return list(ordered.values())


def _machinery_digest(users: int, seed: int) -> hashlib.blake2b:
    """The probe's settings and the source of what computes and compares the tables: every module
    of kuai_assets.features, the storage layer and the engines (read by path, not imported)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([PROBE_FORMAT, users, seed, duckdb.__version__]).encode())
    sources = [
        *sorted((_PACKAGE / "features").glob("*.py")), _PACKAGE / "storage.py", *sorted((_PACKAGE / "engines").glob("*.py"))
    ]
    for path in sources:
        digest.update(f"{path.relative_to(_PACKAGE)}\0".encode())
        digest.update(path.read_bytes())
    return digest


@dataclass(frozen=True)
class ProbePlan:
    keys: dict[str, str]  # every group's probe key
    proven: list[str]  # groups whose key has a passing verdict: not probed again
    probe: list[TableModel]  # the groups to probe: the others, plus `witness` when needed
    witness: str | None  # a label-using group added so the shuffles can be seen to move features


def plan_probe(
    source: WorkDir, groups: list[TableModel], users: int, seed: int = 0, variables: dict[str, dict] | None = None
) -> ProbePlan:
    """Which of `groups` must be probed: those whose key has no passing verdict in `source`.

    A group's key digests the probe's machinery (`_machinery_digest`), the content of the tables
    the sample is drawn from, and the name, code version and variables of every table model the
    group's probe materializes (`probe_models`). When none of the groups to probe uses labels,
    the cheapest label-using group joins them as the witness: the probe passes only when the
    shuffles moved some feature, which a label-free group alone never shows."""
    catalog = load_catalog()
    variables = variables or {}
    tables = [t for t in SOURCE_TABLES if source.has_table(t)]
    digests = file_digests({t: source.table_path(t) for t in tables})
    machinery = _machinery_digest(users, seed)
    keys = {}
    for group in groups:
        digest = machinery.copy()
        models = [(m.name, m.code_version, variables.get(m.name)) for m in probe_models([group], catalog)]
        digest.update(json.dumps({"tables": digests, "models": models}, sort_keys=True, default=str).encode())
        keys[group.name] = digest.hexdigest()
    verdicts = read_verdicts(source)
    proven = [g.name for g in groups if keys[g.name] in verdicts.get(g.name, [])]
    probe = [g for g in groups if g.name not in proven]
    witness = None
    if probe and not any(g.uses_labels for g in probe):
        labelled = [g for g in groups if g.uses_labels] or [
            g for g in catalog.values() if g.is_feature_group and g.uses_labels
        ]
        if labelled:
            chosen = min(labelled, key=lambda g: (len(probe_models([g], catalog)), len(g.upstream), g.name))
            probe, witness = [*probe, chosen], chosen.name
            proven = [name for name in proven if name != witness]
    return ProbePlan(keys, proven, probe, witness)


def read_verdicts(work: WorkDir) -> dict[str, list[str]]:
    """Per group, the probe keys with which it last passed in this work dir, newest first (none
    when the file is missing or unreadable: then every group is probed)."""
    try:
        stored = json.loads((work.root / VERDICTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    groups = stored.get("groups") if isinstance(stored, dict) and stored.get("format") == PROBE_FORMAT else None
    if not isinstance(groups, dict):
        return {}
    return {
        name: [key for key in keys if isinstance(key, str)]
        for name, keys in groups.items()
        if isinstance(name, str) and isinstance(keys, list)
    }


def record_verdicts(work: WorkDir, keys: dict[str, str]) -> None:
    """Add `keys` (group -> the key it just passed with) to the passing verdicts, atomically. A
    group keeps its last `KEPT_VERDICTS` keys, so switching a file back to an earlier version
    that passed is not probed again; groups absent from `keys` are dropped."""
    previous = read_verdicts(work)
    groups = {name: list(dict.fromkeys([key, *previous.get(name, [])]))[:KEPT_VERDICTS] for name, key in sorted(keys.items())}
    work.root.mkdir(parents=True, exist_ok=True)
    with atomic_file(work.root / VERDICTS_FILE) as tmp:
        tmp.write_text(json.dumps({"format": PROBE_FORMAT, "groups": groups}, indent=1) + "\n")


def probe_label_leakage(
    source: WorkDir,
    scratch_root: Path,
    groups: list[TableModel] | None = None,
    users: int = 25,
    seed: int = 0,
    variables: dict[str, dict] | None = None,
) -> list[ProbeResult]:
    """Run both shuffles on a sample of `users`; return one result per scenario."""
    catalog = load_catalog()
    groups = groups or [g for g in catalog.values() if g.is_feature_group]
    models = probe_models(groups, catalog)
    variables = variables or {}
    scenarios = {
        "validation rows' labels shuffled": (
            "setup = 'validation' and role = 'scored'",
            "setup = 'validation' and role = 'scored'",
        ),
        f"fold {PROBED_FOLD} labels shuffled": (
            f"setup = 'submission' and role = 'fit' and fold = {PROBED_FOLD}",
            f"fold = {PROBED_FOLD}",
        ),
    }
    scratch_root = Path(scratch_root)
    if scratch_root.exists():
        shutil.rmtree(scratch_root)
    reference = WorkDir(scratch_root / "reference")
    _prepare(source, reference, users, seed)
    _materialize(reference, models, variables)
    build_training_matrix(reference, groups)
    results = []
    for i, (scenario, (shuffle_where, protected_where)) in enumerate(scenarios.items()):
        shuffled = WorkDir(scratch_root / f"shuffled_{i}")
        shutil.copytree(reference.tables, shuffled.tables)
        _shuffle_labels(shuffled, shuffle_where, seed + 1)
        _materialize(shuffled, models, variables)
        build_training_matrix(shuffled, groups)
        results.append(_compare(reference, shuffled, protected_where, scenario))
    shutil.rmtree(scratch_root, ignore_errors=True)
    return results


def _compare(reference: WorkDir, shuffled: WorkDir, protected_where: str, scenario: str) -> ProbeResult:
    con = duckdb.connect()
    try:
        a = con.sql(
            f"select * from read_parquet({sql_string(reference.table_path(MATRIX))}) order by setup, row_id"
        ).to_arrow_table()
        b = con.sql(
            f"select * from read_parquet({sql_string(shuffled.table_path(MATRIX))}) order by setup, row_id"
        ).to_arrow_table()
        con.register("m", a)
        protected = con.sql(f"select {protected_where} as p from m").fetchnumpy()["p"]
    finally:
        con.close()
    if a.num_rows != b.num_rows:
        raise AssertionError("the shuffle changed which rows exist; it may only move labels")
    features = [c for c in a.column_names if c not in ("setup", "role", "row_id", "user_id", "photo_id", "fold", "click")]
    worst, worst_feature, elsewhere = 0.0, None, 0
    for name in features:
        x = a.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        y = b.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        # relative change; float sums may differ in the last bits when rows arrive in another order
        diff = np.where(same, 0.0, np.abs(np.nan_to_num(x - y, nan=np.inf)) / np.maximum(np.abs(x), 1.0))
        if protected.any() and diff[protected].max() > worst:
            worst, worst_feature = float(diff[protected].max()), name
        elsewhere += int((diff[~protected] > 1e-4).sum())
    return ProbeResult(int(protected.sum()), worst, elsewhere, worst_feature, scenario)
