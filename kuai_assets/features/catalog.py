"""The catalog of table models: every SQL file in dbt_like_sql/ and every Python feature group.

A SQL model is one file; its name is the file name, its layer the folder. A header of comment
lines declares what the rest of the platform needs to know, for example:

    -- User behaviour: ...free text, shown as the asset's description...
    --
    -- grain: setup, fold, user_id
    -- continuous: user_click_rate, user_like_rate
    -- discrete: face_gender_mix
    -- variable: folds = 5 | what it means

Upstream tables are never declared: they are read off the SQL's own parse tree (DuckDB's
`json_serialize_sql`), so lineage cannot drift from the query. Whether a model uses labels is
derived too: a model whose SQL names a label column of raw_interactions uses them, and so does
everything downstream of it (a feature group's view of raw_interactions has no label columns, so
label statistics can only come through label_history). Everything under features/ is a feature
group; `training_matrix`, the model and the ablation read these declarations, never a hand-kept
column list.

Every SQL file must be portable: written in DuckDB's dialect, it must carry to Spark's with the
same meaning (kuai_assets.engines.portability), or the catalog refuses it, naming the file, the
line and the construct. The check runs on every load, whatever the engine chosen, so a file that
only DuckDB can run is found when it is written, not when the data outgrows one machine.

Python feature groups are the modules of `kuai_assets.groups`, discovered, never listed: each
defines one `GROUP` whose name is the module's name. A Python group may also have a SQL file of
the same name: then they are one group, the SQL file its definition (what Spark runs, what the
header declares) and the Python module its fast path on one machine (what DuckDB runs). Both must
declare the same grain, columns, upstream tables and flags, and a test proves they give the same
table.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pkgutil
import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import duckdb

from kuai_assets.engines.portability import check_portable
from kuai_assets.features.spec import FEATURE_LAYER, LABEL_COLUMNS, CatalogError, TableModel, Variable
from kuai_assets.storage import IDENTIFIER

__all__ = ["CatalogError", "TableModel", "Variable", "load_catalog", "feature_groups"]

REPO_ROOT = Path(__file__).resolve().parents[2]
HEADER_KEYS = {"grain", "continuous", "discrete", "uses_scored_window_log", "default", "variable"}
# header keys that were once declared and are now derived: refused with a word on why
DERIVED_KEYS = {"uses_labels": "is derived from the lineage (a model reading label_history or a label column uses labels)"}
GROUPS_PACKAGE = "kuai_assets.groups"
# grain keys a feature group may be joined on: columns of model_rows, plus (k, cluster) through
# the photo's visual cluster at every k
ROW_KEYS = ("setup", "fold", "row_id", "user_id", "photo_id")
CLUSTER_KEYS = ("k", "cluster")


def sql_root() -> Path:
    return Path(os.environ.get("KUAI_SQL_DIR", REPO_ROOT / "dbt_like_sql"))


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
        if sep and key in DERIVED_KEYS:
            raise CatalogError(f"{where}: `{key}` is no longer declared: it {DERIVED_KEYS[key]}; remove the line")
        if sep and key in HEADER_KEYS:
            value = value.strip()
            if key in ("continuous", "discrete"):
                out[key] += [v.strip() for v in value.split(",") if v.strip()]
            elif key == "grain":
                out["grain"] = [v.strip() for v in value.split(",") if v.strip()]
            elif key == "uses_scored_window_log":
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


# the DuckDB that parses every SQL model while the catalog loads (`_one_parser`), per thread (a
# DuckDB connection is not to be used by two threads at once); none otherwise
_parsing = threading.local()


@contextmanager
def _one_parser() -> Iterator[duckdb.DuckDBPyConnection]:
    """One in-memory DuckDB parses every query within, in this thread (opening one costs about
    10 ms, a parse 1-2 ms); closed on leaving: no DuckDB instance may outlive the load (the
    executor forks from this process)."""
    current = getattr(_parsing, "connection", None)
    if current is not None:
        yield current
        return
    _parsing.connection = duckdb.connect()
    try:
        yield _parsing.connection
    finally:
        _parsing.connection.close()
        _parsing.connection = None


@lru_cache(maxsize=256)
def _serialized(sql: str) -> str:
    with _one_parser() as parser:
        return parser.execute("select json_serialize_sql(?)", [sql]).fetchall()[0][0]


def _parse_tree(sql: str, where: str) -> dict:
    """DuckDB's parse tree of `sql` (a fresh copy; each text is parsed once per process)."""
    tree = json.loads(_serialized(sql))
    if tree.get("error"):
        raise CatalogError(f"{where}: SQL does not parse: {tree.get('error_message')}")
    return tree


def _walk(node: Any, visit) -> None:
    if isinstance(node, dict):
        visit(node)
        for value in node.values():
            _walk(value, visit)
    elif isinstance(node, list):
        for value in node:
            _walk(value, visit)


def referenced_tables(sql: str, where: str) -> tuple[str, ...]:
    """Tables a query reads, from DuckDB's own parse tree (CTE names excluded)."""
    tables: set[str] = set()
    ctes: set[str] = set()

    def visit(node: dict) -> None:
        if node.get("type") == "BASE_TABLE" and "table_name" in node:
            tables.add(node["table_name"])
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            ctes.update(entry["key"] for entry in cte_map.get("map", []))

    _walk(_parse_tree(sql, where), visit)
    return tuple(sorted(tables - ctes))


def referenced_columns(sql: str, where: str) -> frozenset[str]:
    """Every column name a query refers to (the last part of each column reference)."""
    columns: set[str] = set()

    def visit(node: dict) -> None:
        if node.get("class") == "COLUMN_REF" and node.get("column_names"):
            columns.add(node["column_names"][-1].lower())

    _walk(_parse_tree(sql, where), visit)
    return frozenset(columns)


MACRO_FOLDER = "macros"


@lru_cache(maxsize=4)
def _macros(root: str) -> str:
    """Every macro file's text (dbt_like_sql/macros/*.sql), to prefix a model before rendering."""
    return "".join(p.read_text() + "\n" for p in sorted((Path(root) / MACRO_FOLDER).glob("*.sql")))


# what `columns(table, prefix)` gives while the catalog loads (for the lineage, the portability
# check and the code version), before any table exists: one column named after the prefix
def _stand_in_columns(table: str, prefix: str) -> list[str]:
    return [f"{prefix}0"]


def render_sql(
    text: str, where: str, root: Path | None = None, columns: Callable[[str, str], list[str]] | None = None
) -> str:
    """A model's text with its Jinja macros expanded (the header comments stay as they are).

    A model may call `columns(table, prefix)`: the upstream table's columns whose names start with
    `prefix`, in the table's order (a family of columns whose number is a setting, such as the
    PCA's pc_00, pc_01, ...). `columns` is the lookup; without one (when the catalog loads) each
    family is a stand-in of one column, and the runner renders the model again over the tables it
    reads (`TableModel.template`). Undefined names are errors, named with the file."""
    import jinja2

    macros = _macros(str(root or sql_root()))
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    environment.globals["columns"] = columns or _stand_in_columns
    try:
        rendered = environment.from_string(macros + text).render()
    except jinja2.TemplateError as exc:
        line = getattr(exc, "lineno", None)
        at = f", line {line - macros.count(chr(10))}" if line and line > macros.count("\n") else ""
        raise CatalogError(f"{where}{at}: the SQL's macros do not render: {exc}") from None
    return rendered.lstrip("\n")


def load_sql_model(path: Path) -> TableModel:
    source = path.read_text()
    header = parse_header(source, str(path))
    families: list[tuple[str, str]] = []
    text = render_sql(
        source, str(path), path.parent.parent, lambda table, prefix: families.append((table, prefix)) or _stand_in_columns(table, prefix)
    )
    name = path.stem
    if not IDENTIFIER.match(name):
        raise CatalogError(f"{path}: the file name must be a plain lowercase table name")
    if not header["grain"]:
        raise CatalogError(f"{path}: the header must declare its grain (`-- grain: ...`)")
    layer = path.parent.name
    upstream = referenced_tables(text, str(path))
    check_portable(text, str(path))
    if layer == FEATURE_LAYER and not (header["continuous"] or header["discrete"]):
        raise CatalogError(f"{path}: a feature group must declare continuous and/or discrete columns")
    return TableModel(
        name=name,
        layer=layer,
        description=header["description"],
        grain=tuple(header["grain"]),
        upstream=upstream,
        continuous=tuple(header["continuous"]),
        discrete=tuple(header["discrete"]),
        # the direct use; load_catalog adds what comes through the upstream tables
        uses_labels="raw_interactions" in upstream and bool(referenced_columns(text, str(path)) & set(LABEL_COLUMNS)),
        uses_scored_window_log=header.get("uses_scored_window_log", False),
        enabled_by_default=header.get("enabled_by_default", True),
        variables=tuple(header["variables"]),
        sql=text,
        path=path,
        template=source if families else None,  # rendered again over the tables when run
    )


@lru_cache(maxsize=4)
def _load_sql_models(root: str) -> tuple[TableModel, ...]:
    paths = sorted(p for p in Path(root).glob("*/*.sql") if p.parent.name != MACRO_FOLDER)
    if not paths:
        raise CatalogError(f"no SQL models found under {root}")
    with _one_parser():
        return tuple(load_sql_model(p) for p in paths)


def python_groups() -> list[TableModel]:
    """Every module of kuai_assets.groups defines one feature group, `GROUP`, named as the module."""
    package = importlib.import_module(GROUPS_PACKAGE)
    groups = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{GROUPS_PACKAGE}.{info.name}")
        group = getattr(module, "GROUP", None)
        where = getattr(module, "__file__", info.name)
        if not isinstance(group, TableModel):
            raise CatalogError(f"{where}: a feature group module must define GROUP = TableModel(...)")
        if group.name != info.name or group.layer != FEATURE_LAYER or group.compute is None:
            raise CatalogError(
                f"{where}: GROUP must be named {info.name!r} (the module's name), in layer {FEATURE_LAYER!r}, "
                "with a compute function"
            )
        groups.append(group)
    return groups


def load_catalog(root: Path | None = None) -> dict[str, TableModel]:
    """All table models, SQL and Python, by name; checks names are unique and upstreams known.

    Label use is derived here: a model uses labels if it reads a label column itself (SQL only: a
    Python group's view of raw_interactions has none) or reads a table model that uses labels.
    """
    catalog: dict[str, TableModel] = {}
    for model in _load_sql_models(str(root or sql_root())):
        if model.name in catalog:
            raise CatalogError(f"two table models are named {model.name!r}")
        catalog[model.name] = model
    for group in python_groups():
        definition = catalog.get(group.name)
        catalog[group.name] = group if definition is None else with_fast_path(definition, group)
    models = list(catalog.values())
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
    return {name: dataclasses.replace(m, uses_labels=_uses_labels(name, catalog, ())) for name, m in catalog.items()}


FAST_PATH_MUST_MATCH = ("layer", "grain", "continuous", "discrete", "uses_scored_window_log", "enabled_by_default")


def with_fast_path(definition: TableModel, fast_path: TableModel) -> TableModel:
    """The SQL definition of a group with its Python module as the fast path (one group, one name).

    Refused when the two disagree on what the group is: its layer, grain, declared columns, flags,
    upstream tables or variables (a fast path takes none).
    """
    where = f"{definition.path} and kuai_assets.groups.{fast_path.name}"
    if definition.sql is None or fast_path.compute is None:
        raise CatalogError(f"two table models are named {definition.name!r}")
    for key in FAST_PATH_MUST_MATCH:
        a, b = getattr(definition, key), getattr(fast_path, key)
        if a != b:
            raise CatalogError(f"{where} disagree on {key}: the SQL declares {a!r}, the Python group {b!r}")
    if sorted(definition.upstream) != sorted(fast_path.upstream):
        raise CatalogError(
            f"{where} disagree on the upstream tables: the SQL reads {sorted(definition.upstream)}, "
            f"the Python group {sorted(fast_path.upstream)}"
        )
    if definition.variables:
        raise CatalogError(f"{where}: a group with a Python fast path takes no variables (its SQL declares some)")
    return dataclasses.replace(definition, compute=fast_path.compute)


def _uses_labels(name: str, catalog: dict[str, TableModel], path: tuple[str, ...]) -> bool:
    if name in path:
        raise CatalogError(f"table models read each other in a cycle: {' -> '.join(path + (name,))}")
    model = catalog.get(name)
    if model is None:  # a source table: its label columns count only where a model names them
        return False
    return model.uses_labels or any(_uses_labels(u, catalog, path + (name,)) for u in model.upstream)


def feature_groups(catalog: dict[str, TableModel] | None = None) -> list[TableModel]:
    catalog = catalog or load_catalog()
    return [m for m in catalog.values() if m.is_feature_group]


# tables produced by Python assets rather than table models
SOURCE_TABLES = ("raw_interactions", "raw_faces", "raw_text", "pca_visual_features", "video_clusters")
