"""Carrying a table model's SQL from DuckDB's dialect to Spark's, faithfully or not at all.

A SQL file is written in DuckDB's dialect (the default engine). `check_portable` refuses what
sqlglot cannot carry to Spark with the same meaning, naming the file, the line and the
construct; `to_spark_sql` substitutes the header variables as literals (Spark has no
`getvariable`) and transpiles. Refused:

- a function sqlglot does not know (it would be passed through by name, meaning whatever, or
  nothing, on the other side);
- an ordered aggregate such as `list(x ORDER BY t)` (Spark's collect_list drops the order);
- `hash()` (DuckDB's and Spark's hash functions give different values);
- `PIVOT`, `COLUMNS(...)`, `* EXCLUDE/REPLACE` and list slices `x[a:b]` (no Spark equivalent);
- anything sqlglot's Spark generator itself reports as unsupported.

The catalog runs the check on every SQL file when it loads, whatever the engine: a definition
that only one engine can run is not the portable definition of a feature group.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError, UnsupportedError

from kuai_assets.features.spec import CatalogError

READ = "duckdb"
WRITE = "spark"
VARIABLE_FUNCTION = "GETVARIABLE"


class NotPortableError(CatalogError):
    """A SQL file uses a construct that cannot be carried to Spark with the same meaning."""


def _line(node: exp.Expression) -> int | None:
    """The source line of a node: its own token's, else the first one found inside or above it."""
    for candidate in (node, *node.walk()):
        line = candidate.meta.get("line") if candidate.meta else None
        if line:
            return line
    parent = node.parent
    while parent is not None:
        if parent.meta and parent.meta.get("line"):
            return parent.meta["line"]
        parent = parent.parent
    return None


def _function_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.this).upper()
    return node.sql_name().upper()


def _parse(sql: str, where: str) -> exp.Expression:
    try:
        statements = [s for s in sqlglot.parse(sql, read=READ) if s is not None]
    except ParseError as err:
        detail = err.errors[0] if err.errors else {}
        line = detail.get("line")
        raise NotPortableError(
            f"{where}{f':{line}' if line else ''}: sqlglot cannot parse this SQL in DuckDB's dialect "
            f"({str(err).splitlines()[0]})"
        ) from None
    if len(statements) != 1:
        raise NotPortableError(f"{where}: a table model is one query; found {len(statements)} statements")
    return statements[0]


def _written_name(node: exp.Expression, sql: str) -> str:
    """A function's name as the file spells it (sqlglot normalizes LIST to ARRAY_AGG and so on)."""
    meta = node.meta or {}
    if "start" in meta and "end" in meta:
        return sql[meta["start"] : meta["end"] + 1]
    return _function_name(node).lower()


def _refusals(tree: exp.Expression, sql: str) -> list[tuple[exp.Expression, str]]:
    """(node, the construct and why it cannot go) for everything that cannot be carried to Spark."""
    found: list[tuple[exp.Expression, str]] = []
    for node in tree.walk():
        if isinstance(node, exp.Func) and _function_name(node) == "HASH":
            found.append((node, f"{_written_name(node, sql)}(): DuckDB's and Spark's hash functions give different values"))
        elif isinstance(node, exp.Anonymous) and _function_name(node) != VARIABLE_FUNCTION:
            found.append((node, f"unknown function {_written_name(node, sql)}(): sqlglot cannot translate it to Spark"))
        elif isinstance(node, exp.Order) and isinstance(node.parent, exp.Func):
            name = _written_name(node.parent, sql)
            found.append(
                (node.parent, f"ordered aggregate {name}(... ORDER BY ...): Spark does not keep the order inside {name}()")
            )
        elif isinstance(node, exp.Pivot):
            found.append((node, "PIVOT: DuckDB's PIVOT has no faithful Spark translation; write the CASE columns out"))
        elif isinstance(node, exp.Columns):
            found.append((node, "COLUMNS(...): a DuckDB star expression with no Spark equivalent; list the columns"))
        elif isinstance(node, exp.Star) and any(node.args.get(k) for k in ("except_", "except", "replace")):
            found.append((node, "* EXCLUDE/REPLACE: no Spark equivalent; list the columns"))
        elif isinstance(node, exp.Slice):
            found.append((node, "list slice [a:b]: DuckDB's 1-based inclusive slices have no faithful Spark translation"))
    return found


def check_portable(sql: str, where: str) -> exp.Expression:
    """Refuse SQL that sqlglot cannot carry to Spark faithfully; return its parse tree.

    The error names the first offending construct as `<where>:<line>: not portable to Spark:
    <construct>: <why>`.
    """
    tree = _parse(sql, where)
    refused = _refusals(tree, sql)
    if refused:
        node, why = min(refused, key=lambda item: _line(item[0]) or 0)
        line = _line(node)
        raise NotPortableError(f"{where}{f':{line}' if line else ''}: not portable to Spark: {why}")
    try:
        tree.sql(dialect=WRITE, unsupported_level=ErrorLevel.RAISE)
    except UnsupportedError as err:
        raise NotPortableError(f"{where}: not portable to Spark: sqlglot reports {err}") from None
    return tree


def to_spark_sql(sql: str, variables: dict[str, float | int], where: str) -> str:
    """The query in Spark's dialect, with each `getvariable('name')` replaced by its value."""
    tree = check_portable(sql, where)

    def substitute(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Anonymous) and _function_name(node) == VARIABLE_FUNCTION:
            args = node.expressions
            if len(args) != 1 or not isinstance(args[0], exp.Literal) or not args[0].is_string:
                raise NotPortableError(f"{where}:{_line(node)}: getvariable() takes one quoted variable name")
            name = args[0].this
            if name not in variables:
                raise NotPortableError(
                    f"{where}:{_line(node)}: getvariable('{name}') names no variable of the header "
                    f"(it has: {', '.join(variables) or 'none'})"
                )
            value = variables[name]
            if isinstance(value, float):  # a DOUBLE, as DuckDB types a float variable (a bare 12.0 is a DECIMAL)
                return exp.cast(exp.Literal.number(repr(value)), exp.DataType.build("double"))
            return exp.Literal.number(str(int(value)))
        return node

    return tree.transform(substitute).sql(dialect=WRITE, unsupported_level=ErrorLevel.RAISE)
