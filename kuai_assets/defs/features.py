"""Features: one asset per table model in dbt_like_sql/ (and per Python feature group).

Each asset's upstream assets come from the tables its SQL reads; its code version is a hash of
the SQL, so the UI marks it stale after an edit; its header variables become run config.
"""


import dagster as dg

from kuai_assets.defs.engine import EngineResource
from kuai_assets.defs.metadata import clear_failures, markdown_table, table_metadata
from kuai_assets.defs.resources import WorkspaceResource
from kuai_assets.features.catalog import TableModel, load_catalog
from kuai_assets.features.runner import materialize_table_model
from kuai_assets.features.spec import GroupLog

GROUP = "features"


def _config_schema(model: TableModel) -> dict:
    return {
        v.name: dg.Field(type(v.default), default_value=v.default, description=v.description)
        for v in model.variables
    }


def _description(model: TableModel) -> str:
    lines = [model.description, "", f"Grain: {', '.join(model.grain)}."]
    if model.is_feature_group:
        lines.append(
            f"Feature group ({'SQL definition, numpy fast path on DuckDB' if model.has_fast_path else model.kind}): {len(model.continuous)} continuous, {len(model.discrete)} discrete column(s)"
            + ("; label statistics, out of fold" if model.uses_labels else "")
            + ("; uses the scored window's own impression log" if model.uses_scored_window_log else "")
            + ("; off unless enabled" if not model.enabled_by_default else "")
            + "."
        )
    if model.path:
        lines.append(f"Source: dbt_like_sql/{model.path.parent.name}/{model.path.name}")
    return "\n".join(lines)


def table_model_asset(model: TableModel) -> dg.AssetsDefinition:
    tags = {"layer": model.layer}
    if model.is_feature_group:
        tags["feature_group"] = "true"
        tags["uses_labels"] = str(model.uses_labels).lower()

    @dg.asset(
        name=model.name,
        group_name=GROUP,
        kinds={"sql", "numpy"} if model.has_fast_path else {"duckdb", "sql"} if model.kind == "sql" else {"python", "numpy"},
        deps=[dg.AssetKey(t) for t in model.upstream],
        description=_description(model),
        code_version=model.code_version,
        config_schema=_config_schema(model) or None,
        tags=tags,
    )
    def _asset(
        context: dg.AssetExecutionContext, workspace: WorkspaceResource, engine: EngineResource
    ) -> dg.MaterializeResult:
        with clear_failures(model.name, workspace.work_dir):
            chosen = engine.engine()
            work = workspace.work()
            log = GroupLog(info=context.log.info, debug=context.log.debug)
            result = materialize_table_model(model, work, dict(context.op_config or {}), log, chosen)
        metadata = table_metadata(work.table_path(model.name))
        metadata["seconds"] = dg.MetadataValue.float(result.seconds)
        metadata["grain"] = ", ".join(model.grain)
        metadata["engine"] = result.engine
        metadata["definition"] = result.definition
        if model.is_feature_group:
            metadata["features"] = dg.MetadataValue.md(
                markdown_table([{"column": c, "kind": k} for c, k in result.features], max_columns=2)
            )
        if context.op_config:
            metadata["variables"] = dg.MetadataValue.json(dict(context.op_config))
        return dg.MaterializeResult(metadata=metadata)

    return _asset


def table_model_assets() -> list[dg.AssetsDefinition]:
    return [table_model_asset(m) for m in load_catalog().values()]


# one asset per table model, found by the defs folder's autoloader (definitions.py)
TABLE_MODEL_ASSETS = table_model_assets()
