"""The catalog of table models: every SQL file in dbt_like_sql/ and every Python feature group.

A SQL model is one file; its name is the file name, its layer the folder. A header of comment
lines declares what the rest of the platform needs to know, for example:

    -- User behaviour: ...free text, shown as the asset's description...
    --
    -- grain: setup, fold, user_id
    -- uses_labels: true
    -- continuous: user_click_rate, user_like_rate
    -- discrete: face_gender_mix
    -- variable: folds = 5 | what it means

Upstream tables are never declared: they are read off the SQL's own parse tree (DuckDB's
`json_serialize_sql`), so lineage cannot drift from the query. Everything under features/ is a
feature group; `training_matrix`, the model and the ablation read these declarations, never a
hand-kept column list.
"""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import duckdb

from kuai_assets.storage import IDENTIFIER

REPO_ROOT = Path(__file__).resolve().parents[2]
HEADER_KEYS = {"grain", "continuous", "discrete", "uses_labels", "uses_scored_window_log", "default", "variable"}
FEATURE_LAYER = "features"
# grain keys a feature group may be joined on: columns of model_rows, plus (k, cluster) through
# the photo's visual cluster at every k
ROW_KEYS = ("setup", "fold", "row_id", "user_id", "photo_id")
CLUSTER_KEYS = ("k", "cluster")


def sql_root() -> Path:
    return Path(os.environ.get("KUAI_SQL_DIR", REPO_ROOT / "dbt_like_sql"))


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class Variable:
    name: str
    default: float | int
    description: str


@dataclass(frozen=True)
class TableModel:
    """A table computed from other tables: a SQL file, or a Python feature group."""

    name: str
    layer: str
    description: str
    grain: tuple[str, ...]
    upstream: tuple[str, ...]
    continuous: tuple[str, ...] = ()
    discrete: tuple[str, ...] = ()
    uses_labels: bool = False
    uses_scored_window_log: bool = False
    enabled_by_default: bool = True
    variables: tuple[Variable, ...] = ()
    sql: str | None = None
    path: Path | None = None
    compute: Callable[..., Any] | None = field(default=None, compare=False)

    @property
    def is_feature_group(self) -> bool:
        return self.layer == FEATURE_LAYER

    @property
    def kind(self) -> str:
        return "sql" if self.sql is not None else "python"

    @property
    def code_version(self) -> str:
        """A hash of the SQL, or of the Python group's module and the kuai_assets.features
        modules it imports from (so a change in a shared helper marks the group stale too)."""
        if self.sql is not None:
            return hashlib.sha256(self.sql.encode()).hexdigest()[:12]
        module = inspect.getmodule(self.compute)
        modules = {module.__name__: module}
        for value in vars(module).values():
            source_module = inspect.getmodule(value)
            if source_module is not None and source_module.__name__.startswith("kuai_assets.features."):
                modules.setdefault(source_module.__name__, source_module)
        modules.pop(__name__, None)  # the catalog itself (TableModel) is not the group's logic
        sources = "".join(inspect.getsource(modules[name]) for name in sorted(modules))
        return hashlib.sha256(sources.encode()).hexdigest()[:12]

    def column_kind(self, column: str) -> str | None:
        """'continuous', 'discrete', or None for a column the header does not declare."""
        for kind, patterns in (("continuous", self.continuous), ("discrete", self.discrete)):
            if any(fnmatch.fnmatchcase(column, p) for p in patterns):
                return kind
        return None

    def check_columns(self, columns: list[str]) -> list[tuple[str, str]]:
        """Match a materialized table's columns against the header; return (column, kind) features."""
        where = self.path or self.name
        missing_keys = [k for k in self.grain if k not in columns]
        if missing_keys:
            raise CatalogError(f"{where}: grain column(s) {missing_keys} are not in the result")
        features = []
        undeclared = []
        for column in columns:
            if column in self.grain:
                continue
            kind = self.column_kind(column)
            if kind is None:
                undeclared.append(column)
            else:
                features.append((column, kind))
        if self.is_feature_group and undeclared:
            raise CatalogError(
                f"{where}: column(s) {undeclared} are neither grain nor declared continuous/discrete in the header"
            )
        declared = [p for p in self.continuous + self.discrete if "*" not in p and "?" not in p]
        absent = [p for p in declared if p not in columns]
        if absent:
            raise CatalogError(f"{where}: declared column(s) {absent} are not in the result")
        return features


def parse_header(text: str, where: str) -> dict[str, Any]:
    description: list[str] = []
    out: dict[str, Any] = {"continuous": [], "discrete": [], "variables": [], "grain": []}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("--"):
            break
        body = line[2:].strip()
        key, sep, value = body.partition(":")
        key = key.strip().lower()
        if sep and key in HEADER_KEYS:
            value = value.strip()
            if key in ("continuous", "discrete"):
                out[key] += [v.strip() for v in value.split(",") if v.strip()]
            elif key == "grain":
                out["grain"] = [v.strip() for v in value.split(",") if v.strip()]
            elif key in ("uses_labels", "uses_scored_window_log"):
                if value.lower() not in ("true", "false"):
                    raise CatalogError(f"{where}: {key} must be true or false, got {value!r}")
                out[key] = value.lower() == "true"
            elif key == "default":
                if value.lower() not in ("enabled", "disabled"):
                    raise CatalogError(f"{where}: default must be enabled or disabled, got {value!r}")
                out["enabled_by_default"] = value.lower() == "enabled"
            elif key == "variable":
                out["variables"].append(_parse_variable(value, where))
        else:
            description.append(body)
    out["description"] = "\n".join(description).strip()
    for name in out["grain"] + [c.replace("*", "x").replace("?", "x") for c in out["continuous"] + out["discrete"]]:
        if not IDENTIFIER.match(name):
            raise CatalogError(f"{where}: {name!r} is not a plain lowercase column name")
    return out


def _parse_variable(value: str, where: str) -> Variable:
    assignment, _, description = value.partition("|")
    name, eq, default = assignment.partition("=")
    name, default = name.strip(), default.strip()
    if not eq or not IDENTIFIER.match(name):
        raise CatalogError(f"{where}: variable must read `name = value | description`, got {value!r}")
    try:
        number: float | int = int(default) if default.lstrip("-").isdigit() else float(default)
    except ValueError:
        raise CatalogError(f"{where}: variable {name} needs a numeric default, got {default!r}") from None
    return Variable(name, number, description.strip())


def referenced_tables(sql: str, where: str) -> tuple[str, ...]:
    """Tables a query reads, from DuckDB's own parse tree (CTE names excluded)."""
    con = duckdb.connect()
    try:
        tree = json.loads(con.execute("select json_serialize_sql(?)", [sql]).fetchall()[0][0])
    finally:
        con.close()  # no DuckDB instance may outlive this (the executor forks from this process)
    if tree.get("error"):
        raise CatalogError(f"{where}: SQL does not parse: {tree.get('error_message')}")
    tables: set[str] = set()
    ctes: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and "table_name" in node:
                tables.add(node["table_name"])
            cte_map = node.get("cte_map")
            if isinstance(cte_map, dict):
                ctes.update(entry["key"] for entry in cte_map.get("map", []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return tuple(sorted(tables - ctes))


def load_sql_model(path: Path) -> TableModel:
    text = path.read_text()
    header = parse_header(text, str(path))
    name = path.stem
    if not IDENTIFIER.match(name):
        raise CatalogError(f"{path}: the file name must be a plain lowercase table name")
    if not header["grain"]:
        raise CatalogError(f"{path}: the header must declare its grain (`-- grain: ...`)")
    layer = path.parent.name
    if layer == FEATURE_LAYER and not (header["continuous"] or header["discrete"]):
        raise CatalogError(f"{path}: a feature group must declare continuous and/or discrete columns")
    return TableModel(
        name=name,
        layer=layer,
        description=header["description"],
        grain=tuple(header["grain"]),
        upstream=referenced_tables(text, str(path)),
        continuous=tuple(header["continuous"]),
        discrete=tuple(header["discrete"]),
        uses_labels=header.get("uses_labels", False),
        uses_scored_window_log=header.get("uses_scored_window_log", False),
        enabled_by_default=header.get("enabled_by_default", True),
        variables=tuple(header["variables"]),
        sql=text,
        path=path,
    )


@lru_cache(maxsize=4)
def _load_sql_models(root: str) -> tuple[TableModel, ...]:
    paths = sorted(Path(root).glob("*/*.sql"))
    if not paths:
        raise CatalogError(f"no SQL models found under {root}")
    return tuple(load_sql_model(p) for p in paths)


def load_catalog(root: Path | None = None) -> dict[str, TableModel]:
    """All table models, SQL and Python, by name; checks names are unique and upstreams known."""
    from kuai_assets.features.python_groups import PYTHON_FEATURE_GROUPS

    models = list(_load_sql_models(str(root or sql_root()))) + list(PYTHON_FEATURE_GROUPS)
    catalog: dict[str, TableModel] = {}
    for model in models:
        if model.name in catalog:
            raise CatalogError(f"two table models are named {model.name!r}")
        catalog[model.name] = model
    known = set(catalog) | set(SOURCE_TABLES)
    for model in models:
        unknown = [t for t in model.upstream if t not in known]
        if unknown:
            raise CatalogError(
                f"{model.path or model.name} reads {unknown}, which no asset produces "
                f"(known tables: {', '.join(sorted(known))})"
            )
        if model.is_feature_group:
            bad = [k for k in model.grain if k not in ROW_KEYS + CLUSTER_KEYS]
            if bad or (set(CLUSTER_KEYS) & set(model.grain) and not set(CLUSTER_KEYS) <= set(model.grain)):
                raise CatalogError(
                    f"{model.path or model.name}: grain {list(model.grain)} cannot be joined to the rows; "
                    f"use columns of model_rows {list(ROW_KEYS)} and optionally both of {list(CLUSTER_KEYS)}"
                )
    return catalog


def feature_groups(catalog: dict[str, TableModel] | None = None) -> list[TableModel]:
    catalog = catalog or load_catalog()
    return [m for m in catalog.values() if m.is_feature_group]


# tables produced by Python assets rather than table models
SOURCE_TABLES = ("raw_interactions", "raw_faces", "raw_text", "pca_visual_features", "video_clusters")
