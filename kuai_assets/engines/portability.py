"""Carrying a table model's SQL from DuckDB's dialect to Spark's, faithfully or not at all.

A SQL file is written in DuckDB's dialect (the default engine). `check_portable` refuses what
sqlglot cannot carry to Spark with the same meaning, naming the file, the line and the
construct; `to_spark_sql` substitutes the header variables as literals (Spark has no
`getvariable`), parenthesises a window function that is an operand of an operator (Spark reads
`sum(x) over w - x` as the window name `w-x`, sqlglot writes it as it reads it) and transpiles.
Refused:

- a function sqlglot does not know (it would be passed through by name, meaning whatever, or
  nothing, on the other side);
- an ordered aggregate such as `list(x ORDER BY t)` (Spark's collect_list drops the order);
- `hash()` (DuckDB's and Spark's hash functions give different values);
- `PIVOT`, `COLUMNS(...)`, `* EXCLUDE/REPLACE` and list slices `x[a:b]` (no Spark equivalent);
- `GROUP BY ALL` in a SELECT with an output column named `all` (an alias, a column, or an unaliased
  literal `'all'`, which Spark names by its value): Spark then groups by that column alone;
- a query hint Spark would ignore or that is not the SQL's to give (see below);
- anything sqlglot's Spark generator itself reports as unsupported.

Query hints. A file may give Spark a join strategy with a hint right after a SELECT, such as
`select /*+ BROADCAST(k) */ ... from t join centroid as k ...`: DuckDB reads it as a comment (the
file runs there unchanged), and the file is parsed with a DuckDB dialect that keeps `/*+` as a
hint (sqlglot's own DuckDB dialect drops hints), so the Spark SQL carries it. Spark ignores a hint
it cannot apply without a word, so the check refuses: a `/*+ ... */` that does not follow a
SELECT (Spark reads it as a comment), a strategy that is not one of Spark's join hints
(`JOIN_HINTS`), a join hint that names no relation, or one naming a relation that is not a table
or alias of that SELECT's own FROM/JOIN (Spark looks no further). The partition hints (COALESCE,
REPARTITION, REPARTITION_BY_RANGE, REBALANCE) are refused too: they only change how Spark lays
out a result the runner merges into one file anyway, and a partition count written in the file
would be a data-size setting inside its code version (the engine's `spark.sql.shuffle.partitions`
is the place for it).

The catalog runs the check on every SQL file when it loads, whatever the engine: a definition
that only one engine can run is not the portable definition of a feature group.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.errors import ErrorLevel, ParseError, UnsupportedError
from sqlglot.tokens import TokenType

from kuai_assets.features.spec import CatalogError

WRITE = "spark"
VARIABLE_FUNCTION = "GETVARIABLE"
# Spark's join strategy hints (org.apache.spark.sql.catalyst.plans.logical.JoinStrategyHint)
JOIN_HINTS = (
    "BROADCAST", "BROADCASTJOIN", "MAPJOIN", "MERGE", "SHUFFLE_MERGE", "MERGEJOIN", "SHUFFLE_HASH", "SHUFFLE_REPLICATE_NL"
)
PARTITION_HINTS = ("COALESCE", "REPARTITION", "REPARTITION_BY_RANGE", "REBALANCE")


class DuckDBWithHints(DuckDB):
    """DuckDB's dialect, except that `/*+ ... */` right after SELECT is a query hint, as Spark reads
    it. (sqlglot's DuckDB tokenizer drops `/*+` on purpose, DuckDB having no hints, so a hint would
    reach Spark as a plain comment; DuckDB itself still reads it as a comment.)"""

    class Tokenizer(DuckDB.Tokenizer):
        KEYWORDS = {**DuckDB.Tokenizer.KEYWORDS, "/*+": TokenType.HINT}

    class Parser(DuckDB.Parser):
        def _parse_hint(self) -> exp.Hint | None:
            hint = super()._parse_hint()
            if hint is not None:
                # the hint's text is parsed on its own, its lines counted from the comment's first
                token = self._prev
                first = token.line - (token.comments[0].count("\n") if token.comments else 0)
                for node in hint.walk():
                    node.meta["line"] = first + (node.meta.get("line") or 1) - 1
            return hint


READ = DuckDBWithHints


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


def _relation_names(select: exp.Expression) -> list[tuple[str, ...]]:
    """The names a hint can give each relation of a SELECT's FROM/JOIN: its alias, else its table's
    (catalog, db, name) as written."""
    sources = []
    if isinstance(select, exp.Select):
        if select.args.get("from_"):
            sources.append(select.args["from_"].this)
        sources.extend(join.this for join in select.args.get("joins") or [])
    names = []
    for source in sources:
        if source.alias:
            names.append((source.alias,))
        elif isinstance(source, exp.Table):
            names.append(tuple(part.name for part in source.parts))
    return names


def _hinted_name(arg: exp.Expression) -> tuple[str, ...] | None:
    """A join hint's relation as name parts (`k`, `db.t`, `'k'`), or None if it is not a name."""
    if isinstance(arg, exp.Column):
        return tuple(part.name for part in arg.parts)
    if isinstance(arg, (exp.Identifier, exp.Var)):
        return (arg.name,)
    if isinstance(arg, exp.Literal) and arg.is_string:
        return tuple(arg.this.split("."))
    return None


def _hint_refusals(hint: exp.Hint) -> list[tuple[exp.Expression, str]]:
    """The hints of one `/*+ ... */` that Spark would ignore, or that the SQL may not give."""
    found: list[tuple[exp.Expression, str]] = []
    relations = _relation_names(hint.parent)
    for item in hint.expressions:
        if not isinstance(item, exp.Expression):  # sqlglot kept the text as it is
            found.append((hint, f"hint /*+ {item} */: not Spark hints NAME(relation, ...); Spark would ignore it"))
            continue
        name = item.name.upper() if isinstance(item, exp.Var) else _function_name(item)
        written = item.sql(dialect=WRITE)
        if name in PARTITION_HINTS:
            found.append(
                (item, f"hint {written}: partition hints are not allowed (a partition count is a setting of the "
                "engine, spark.sql.shuffle.partitions, not part of a table model's definition)")
            )
        elif name not in JOIN_HINTS:
            found.append(
                (item, f"hint {written}: Spark has no {name} hint and would ignore it "
                f"(its join hints: {', '.join(JOIN_HINTS)})")
            )
        elif isinstance(item, exp.Var) or not item.expressions:
            found.append((item, f"hint {written}: names no table or alias of this SELECT's FROM/JOIN"))
        else:
            for arg in item.expressions:
                parts = _hinted_name(arg)
                wanted = tuple(p.lower() for p in parts or ())
                if parts is None or not any(
                    len(wanted) <= len(r) and tuple(p.lower() for p in r[len(r) - len(wanted) :]) == wanted for r in relations
                ):
                    have = ", ".join(".".join(r) for r in relations) or "none"
                    found.append(
                        (item, f"hint {written}: {arg.sql(dialect=WRITE)} is not a table or alias of this SELECT's "
                        f"FROM/JOIN (it has: {have}); Spark would ignore the hint")
                    )
    return found


def _misplaced_hints(sql: str) -> list[tuple[int, str]]:
    """(line, why) for each `/*+ ... */` that does not follow a SELECT: DuckDB, sqlglot and Spark
    all read it as a comment."""
    if "/*+" not in sql:
        return []
    tokens = DuckDB().tokenize(sql)  # where every `/*+ ... */` is a comment
    found: list[tuple[int, str]] = []
    hinted: set[int] = set()  # the SELECT tokens already given a hint
    for i, token in enumerate(tokens):
        start = tokens[i - 1].end + 1 if i else 0
        for comment in token.comments:
            if not comment.startswith("+"):
                continue
            at = sql.find(f"/*{comment}*/", start)
            before = max((j for j in range(len(tokens)) if tokens[j].end < at), default=None) if at >= 0 else None
            if before is not None and tokens[before].token_type == TokenType.SELECT and before not in hinted:
                hinted.add(before)
                continue
            line = sql.count("\n", 0, at) + 1 if at >= 0 else token.line
            text = " ".join(f"/*{comment}*/".split())
            found.append((line, f"hint {text} does not follow a SELECT: Spark would read it as a comment"))
    return found


def _refusals(tree: exp.Expression, sql: str) -> list[tuple[exp.Expression, str]]:
    """(node, the construct and why it cannot go) for everything that cannot be carried to Spark."""
    found: list[tuple[exp.Expression, str]] = []
    for node in tree.walk(prune=lambda n: isinstance(n, exp.Hint)):
        if isinstance(node, exp.Hint):
            found.extend(_hint_refusals(node))
        elif isinstance(node, exp.Func) and _function_name(node) == "HASH":
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
        elif isinstance(node, exp.Group) and node.args.get("all") and isinstance(node.parent, exp.Select):
            for projection in node.parent.expressions:
                if projection.output_name.lower() == "all":
                    found.append((projection, (
                        f"GROUP BY ALL beside an output column named all ({projection.sql(dialect=READ)}): Spark "
                        "groups by that column alone (MISSING_AGGREGATION), DuckDB by every non-aggregate; "
                        "name the column otherwise or write the groups out")))
    return found


def check_portable(sql: str, where: str) -> exp.Expression:
    """Refuse SQL that sqlglot cannot carry to Spark faithfully; return its parse tree.

    The error names the first offending construct as `<where>:<line>: not portable to Spark:
    <construct>: <why>`.
    """
    tree = _parse(sql, where)
    refused = [(_line(node), why) for node, why in _refusals(tree, sql)] + _misplaced_hints(sql)
    if refused:
        line, why = min(refused, key=lambda item: item[0] or 0)
        raise NotPortableError(f"{where}{f':{line}' if line else ''}: not portable to Spark: {why}")
    try:
        tree.sql(dialect=WRITE, unsupported_level=ErrorLevel.RAISE)
    except UnsupportedError as err:
        raise NotPortableError(f"{where}: not portable to Spark: sqlglot reports {err}") from None
    return tree


def to_spark_sql(sql: str, variables: dict[str, float | int], where: str) -> str:
    """The query in Spark's dialect, with each `getvariable('name')` replaced by its value and each
    window function that is an operand of an operator in parentheses."""
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
        if isinstance(node, exp.Window) and isinstance(node.parent, (exp.Binary, exp.Unary)) and not isinstance(
            node.parent, exp.Paren
        ):
            return exp.Paren(this=node.copy())
        return node

    return tree.transform(substitute).sql(dialect=WRITE, unsupported_level=ErrorLevel.RAISE)
