"""A model keeps its previous result in `kuai run` when nothing it learns from has changed.

After an edit of one feature group, `kuai run --unsynced` materializes that group and everything
downstream of it, and so trains every model again, though some of them read nothing that changed:
the baseline reads only `published_baseline`'s columns, and the attention network reads only its
context groups' columns and tables no group edit touches. So `kuai run` tags its runs
`kuai/reuse: unchanged` (REUSE_TAG). In such a run `model`, `baseline_model` and `attention_model`
first compute an inputs key (`inputs_key`) over:

- its rows and its feature groups' columns in the training matrix (`matrix_inputs`: the piece key
  the matrix records for each group, which covers the content of the group's table, of
  model_rows and of the clusters, and the declared columns; and a digest of the matrix's setup,
  role, row_id and click columns);
- for the network, the content of the other tables it reads (its refit, decided against the
  GBDT's validation predictions, is decided again: attention_model);
- its settings, the source of the code it runs (`code_digest`: the asset's code version, all of
  `kuai_assets/ml/` and the matrix's reader) and the versions of the libraries it trains with
  (DuckDB's too, whose hash draws its row sample).

When the latest materialization of the asset recorded the same key, its MLflow run exists and
finished, and the published store is that run's (`previous`), the step trains nothing and records
a materialization with the previous metadata, `kept` saying since when (`Previous.result`). Any
change, or anything missing, means training as before.

The key rests on file contents, and a table materialized again may differ in its bytes though not
in its rows (DuckDB writes in parallel, in no set order): what was materialized again counts as
changed. So it saves work where the tables a model reads were not materialized again, as in the
edit of one group; it never keeps a model whose inputs changed.

The feature-group ablation keeps its variants one by one the same way (`VariantKeeper`): after the
edit of one group, the variants without it.

Without the tag (the UI's Materialize, `dagster asset materialize --select model`) every step
trains, as a person asking for it expects; the key is recorded either way. A run launched from the
UI with the tag `kuai/reuse: unchanged` keeps as `kuai run` does.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

REUSE_TAG, UNCHANGED = "kuai/reuse", "unchanged"
KEY = "inputs_key"  # the materialization's metadata entry holding the key
TRAINED_IN = "trained_in_dagster_run"  # on a kept materialization: the run that trained it
_ROW_COLUMNS = ("setup", "role", "row_id", "click")
# the logic a model step runs, besides its asset's own code version: every module of the ml
# package (training, tracking, the network, the blend rule) and the matrix's reader
_LOGIC = ("ml", "features/matrix.py", "features/spec.py", "storage.py", "defs/reuse.py")


def reuse_wanted(context: dg.AssetExecutionContext) -> bool:
    """Whether the run asks its model steps to keep unchanged results (`kuai run`'s runs do)."""
    return context.run.tags.get(REUSE_TAG) == UNCHANGED


def _digest(parts) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def matrix_inputs(matrix: Path, groups: list[str]) -> dict | None:
    """What a model learns from in the training matrix: each of `groups`' piece keys, as the
    matrix recorded them, and a digest of its rows (setup, role, row_id, click); None if the matrix
    records no piece key for one of the groups (a matrix written before piece keys)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kuai_assets.features.matrix import PIECES_KEY

    metadata = pq.read_schema(matrix).metadata or {}
    try:
        keys = json.loads(metadata[PIECES_KEY])
    except (KeyError, ValueError):
        return None
    if not isinstance(keys, dict) or any(group not in keys for group in groups):
        return None
    # the values only: the schema's metadata holds every group's piece key
    rows = pq.read_table(matrix, columns=list(_ROW_COLUMNS)).replace_schema_metadata(None)
    digest = hashlib.blake2b(digest_size=16)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    digest.update(sink.getvalue())
    return {"groups": {group: keys[group] for group in sorted(groups)}, "rows": digest.hexdigest()}


def code_digest(context: dg.AssetExecutionContext) -> str:
    """The asset's code version and the source of the logic every model step runs (_LOGIC)."""
    root = Path(__file__).resolve().parents[1]
    texts = [context.assets_def.code_versions_by_key.get(context.asset_key) or ""]
    for part in _LOGIC:
        path = root / part
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            texts.append(f"{source.relative_to(root)}\n{source.read_text()}")
    return hashlib.blake2b("\n".join(texts).encode(), digest_size=16).hexdigest()


def library_versions(*names: str) -> dict[str, str]:
    import importlib.metadata

    return {name: importlib.metadata.version(name) for name in names}


def inputs_key(context: dg.AssetExecutionContext, matrix_part: dict | None, settings: dict, **more) -> str | None:
    """The step's inputs key (the module docstring); None when the matrix gives no piece keys."""
    if matrix_part is None:
        return None
    return _digest({"matrix": matrix_part, "settings": settings, "code": code_digest(context), **more})


@dataclass
class Previous:
    """The latest materialization of an asset that recorded the same inputs key."""

    metadata: dict
    dagster_run_id: str
    trained_in: str  # the Dagster run that trained it (the same, unless it was itself kept)
    when: str
    mlflow_run_id: str

    def result(self, context: dg.AssetExecutionContext, ui_url: str, **more) -> dg.MaterializeResult:
        """The materialization that keeps it: its metadata again (the MLflow link on the UI at
        `ui_url`, the one configured now), `kept` saying since when, and `more`."""
        from kuai_assets.ml.tracking import run_link

        context.log.info(
            f"{context.asset_key.to_user_string()}: kept, nothing it learns from changed since Dagster run "
            f"{self.dagster_run_id[:8]} ({self.when}); its MLflow run {self.mlflow_run_id} stands (no training)"
        )
        kept = (f"nothing it learns from changed since {self.when}: the result of Dagster run {self.trained_in} "
                f"is kept (run tag {REUSE_TAG}: {UNCHANGED})")
        link = self.metadata.get("mlflow_run")
        relinked = {"mlflow_run": dg.MetadataValue.url(run_link(str(link.value), ui_url))} if link is not None else {}
        return dg.MaterializeResult(metadata={**self.metadata, **relinked, "kept": dg.MetadataValue.text(kept),
                                              TRAINED_IN: dg.MetadataValue.text(self.trained_in), **more})


def materialized_at(event) -> str:
    """When a materialization event was recorded, in local time: "2026-12-05 20:44:53"."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.timestamp))


def recorded(key: str | None) -> dict:
    """The metadata entry that records a fresh result's inputs key (none without a key)."""
    return {KEY: key} if key else {}


def previous(context: dg.AssetExecutionContext, key: str | None, tracking_uri: str, store: Path) -> Previous | None:
    """What to keep: the asset's latest materialization, if the run asks to keep (`reuse_wanted`),
    that materialization recorded `key`, its MLflow run (`mlflow_run_id`) exists and finished, and
    `store` holds that run's model; else None (train)."""
    if key is None or not reuse_wanted(context):
        return None
    event = context.instance.get_latest_materialization_event(context.asset_key)
    if event is None or event.asset_materialization is None:
        return None
    metadata = dict(event.asset_materialization.metadata)
    recorded, run_value = metadata.get(KEY), metadata.get("mlflow_run_id")
    if recorded is None or recorded.value != key or run_value is None:
        return None
    run_id = str(run_value.value)
    try:
        if json.loads((store / "run.json").read_text()).get("mlflow_run_id") != run_id:
            return None
    except (OSError, ValueError):
        return None
    if not _finished_run(tracking_uri, run_id):
        return None
    trained_in = metadata.pop(TRAINED_IN, None)
    metadata.pop("kept", None)
    return Previous(metadata, event.run_id, str(trained_in.value) if trained_in is not None else event.run_id,
                    materialized_at(event), run_id)


def _finished_run(tracking_uri: str, run_id: str) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        run = MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException:
        return False
    return run.info.lifecycle_stage == "active" and run.info.status == "FINISHED"


# -- the ablation's variants ------------------------------------------------------------------------

VARIANT_KEYS = "variant_keys"  # the ablation's metadata entry: each variant's key and result


class VariantKeeper:
    """Which of the ablation's variants keep their previous result (`kuai run`'s runs only).

    A variant learns from its groups' columns only (the others are never split on), so after the
    edit of one group every variant without it reads what it read before. Its key covers its
    groups' piece keys in the matrix, the matrix's rows, the ablation's features in order and
    which of them LightGBM keeps (the column sample of a tree is drawn from those), the settings,
    the code (`code_digest`) and the versions of LightGBM, numpy and DuckDB. `keep`
    (run_ablation's) returns the previous result of a variant whose key the latest
    materialization recorded with its figures, and None for every variant of a matrix that
    records no piece keys; `recorded` is the metadata entry of every variant's key and figures,
    kept or trained.
    """

    def __init__(self, context: dg.AssetExecutionContext, matrix: Path, features: list, groups: list[str], settings: dict):
        inputs = matrix_inputs(matrix, groups)
        self.piece_keys = inputs["groups"] if inputs else None
        self.common = None if inputs is None else {
            "rows": inputs["rows"], "features": [f.name for f in features], "settings": settings,
            "code": code_digest(context), "libraries": library_versions("lightgbm", "numpy", "duckdb"),
        }
        self.keys: dict[str, str] = {}
        self.previous: dict = {}
        self.since = ""
        if self.common is not None and reuse_wanted(context):
            event = context.instance.get_latest_materialization_event(context.asset_key)
            entry = event.asset_materialization.metadata.get(VARIANT_KEYS) if event and event.asset_materialization else None
            if entry is not None and isinstance(entry.value, dict):
                self.previous = entry.value
                self.since = f"Dagster run {event.run_id[:8]} ({materialized_at(event)})"

    def keep(self, variant: str, groups: tuple[str, ...], used: tuple[bool, ...]):
        from kuai_assets.ml.ablation import VariantResult

        if self.common is None:
            return None
        key = _digest({**self.common, "groups": {g: self.piece_keys[g] for g in sorted(groups)}, "used": list(used)})
        self.keys[variant] = key
        before = self.previous.get(variant)
        if not isinstance(before, dict) or before.get("key") != key:
            return None
        try:
            return VariantResult(variant, tuple(groups), float(before["valid_auc"]), int(before["best_iteration"]),
                                 kept_from=str(before["mlflow_run_id"]))
        except (KeyError, TypeError, ValueError):
            return None

    def recorded(self, results: list, mlflow_run_ids: dict[str, str]) -> dict:
        """The VARIANT_KEYS entry: for each variant with a key, its key, figures and the MLflow run
        that trained it (for a kept one, the run it was kept from)."""
        entry = {
            r.variant: {"key": self.keys[r.variant], "valid_auc": r.valid_auc, "best_iteration": r.best_iteration,
                        "mlflow_run_id": r.kept_from or mlflow_run_ids.get(r.variant, "")}
            for r in results if r.variant in self.keys
        }
        return {VARIANT_KEYS: dg.MetadataValue.json(entry)} if entry else {}
