"""Which assets a run must materialize again to bring the workspace up to date (`kuai run --unsynced`).

An asset is out of date, with the first reason found, when:
- it was never materialized;
- its code changed: its code version (derived from its source or its SQL file, defs/factory.py)
  is not the one its latest materialization recorded (what the Dagster UI marks unsynced);
- for `dataset`, the released files changed: their fingerprint is not its recorded data version;
- one of its blocking checks did not pass on its latest materialization (failed, or raised; not a
  check that a stopped run never reached): run again, the check runs again and still blocks what
  follows, where a run of the downstream alone would skip it;
- an upstream asset was materialized after the materialization it was computed from (its
  `dagster/input_event_pointer/<upstream>` tag, as Dagster records it): for example `model`
  retrained from the dagster CLI with other settings leaves the network, the blend, the submission
  and the evaluation behind; Dagster's own staleness does not see that, as settings have no version;
- it is downstream of an out-of-date asset, which will change.

Only the instance's records are read: nothing runs, nothing is written. The tags and the check
records are read with Dagster's own names for them (internal modules: dagster is pinned to 1.13).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster._core.definitions.data_version import CODE_VERSION_TAG, DATA_VERSION_TAG, get_input_event_pointer_tag


def out_of_date(
    instance: dg.DagsterInstance, asset_graph, data_dir: Path, forced: dict[dg.AssetKey, str] | None = None
) -> dict[dg.AssetKey, str]:
    """Every materializable asset of `asset_graph` that is out of date, in topological order, with
    its reason (see the module docstring). `data_dir` is the dataset the `dataset` asset reads; it
    must exist (`kuai run` checks it, or generates the synthetic default, first). `forced` adds
    assets with a reason of the caller's (for example: given new settings), and everything
    downstream of them."""
    from kuai_assets.formats.layout import fingerprint

    forced = forced or {}
    keys = materializable(asset_graph)
    latest = {
        record.asset_entry.asset_key: record.asset_entry.last_materialization_record
        for record in instance.get_asset_records(keys)
    }
    unpassed = blocking_checks_not_passed(instance, asset_graph, latest)
    reasons: dict[dg.AssetKey, str] = {}
    for key in keys:
        node, record = asset_graph.get(key), latest.get(key)
        if key in forced:
            reasons[key] = forced[key]
            continue
        if record is None:
            reasons[key] = "never materialized"
            continue
        tags = record.event_log_entry.asset_materialization.tags or {}
        if node.code_version is not None and tags.get(CODE_VERSION_TAG) != node.code_version:
            reasons[key] = "code changed"
            continue
        if key == dg.AssetKey("dataset"):
            if fingerprint(data_dir).digest != tags.get(DATA_VERSION_TAG):
                reasons[key] = f"files changed in {data_dir}"
                continue
        if unpassed.get(key):
            reasons[key] = f"blocking check did not pass: {', '.join(unpassed[key])}"
            continue
        for parent in sorted(node.parent_keys):
            if parent in reasons:
                reasons[key] = f"downstream of {parent.to_user_string()}"
                break
            pointer, parent_record = tags.get(get_input_event_pointer_tag(parent)), latest.get(parent)
            if parent_record is not None and (pointer is None or int(pointer) < parent_record.storage_id):
                reasons[key] = f"newer upstream {parent.to_user_string()}"
                break
    return reasons


def materializable(asset_graph) -> list[dg.AssetKey]:
    """The graph's materializable assets, in topological order."""
    return [key for key in asset_graph.toposorted_asset_keys if asset_graph.get(key).is_materializable]


def assets_of_steps(asset_graph, step_names) -> list[dg.AssetKey]:
    """The assets that the named steps (ops, as the run config's `ops` names them) materialize: a
    multi-asset step such as `visual_stage` makes several."""
    names = set(step_names)
    return [key for assets_def in asset_graph.assets_defs if assets_def.is_executable and assets_def.keys
            and assets_def.node_def.name in names for key in sorted(assets_def.keys)]


def blocking_checks_not_passed(
    instance: dg.DagsterInstance, asset_graph, latest_materializations: dict
) -> dict[dg.AssetKey, list[str]]:
    """Asset -> the names of its blocking checks that did not pass on its latest materialization:
    the check failed, or it never finished in the run that made the asset (its step raised). A check
    left planned by a run that stopped before making the asset counts as its last finished
    execution says; checks that never ran are not counted. `latest_materializations`: asset ->
    its latest materialization record."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status

    blocking = [key for key in asset_graph.asset_check_keys if asset_graph.get_check_spec(key).blocking]
    summaries = instance.event_log_storage.get_asset_check_summary_records(blocking)
    out: dict[dg.AssetKey, list[str]] = {}
    for key in blocking:
        summary = summaries.get(key)
        latest = summary.last_check_execution_record if summary else None
        if latest is None or latest.status == Status.SUCCEEDED:
            continue
        if latest.status == Status.PLANNED:
            made = latest_materializations.get(key.asset_key)
            if made is None or made.run_id != latest.run_id:  # the run stopped before making the asset
                finished = summary.last_completed_check_execution_record
                if finished is None or finished.status == Status.SUCCEEDED:
                    continue
        out.setdefault(key.asset_key, []).append(key.name)
    return out


def describe(reasons: dict[dg.AssetKey, str], total: int, most_named: int = 6) -> list[str]:
    """The plan in a few lines: the assets out of date for a reason of their own, grouped by reason
    (at most `most_named` named per reason), then the count of those downstream of them."""
    if not reasons:
        return [f"every one of {total} assets is up to date: nothing to materialize"]
    by_reason: dict[str, list[str]] = {}
    for key, why in reasons.items():
        if not why.startswith("downstream of "):
            by_reason.setdefault(why, []).append(key.to_user_string())
    lines = [f"{len(reasons)} of {total} assets to materialize:"]
    for why, names in by_reason.items():
        more = f" and {len(names) - most_named} more" if len(names) > most_named else ""
        lines.append(f"  {why}: {', '.join(names[:most_named])}{more}")
    downstream = len(reasons) - sum(len(names) for names in by_reason.values())
    if downstream:
        lines.append(f"  and {downstream} downstream of them")
    return lines
