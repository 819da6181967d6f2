"""Materializing a table model: run its SQL (or Python) in DuckDB or its SQL on Spark, check,
publish atomically.

Under DuckDB (the default) a SQL model runs its SQL and a Python feature group its compute
function (its fast path, also when the group has a SQL definition). Under Spark a model runs its
SQL definition, carried to Spark's dialect (kuai_assets.engines.portability). A Python group
without one is refused, unless it declares why it has no distributed definition
(`TableModel.driver_only`): then its compute function runs in this process (the Spark driver),
reading and writing the same Parquet tables, and the result says so (definition
`python (driver, not distributed)`). A SQL file calling `columns(table, prefix)` is rendered
again over the tables it reads before either engine runs it. Either way the result is checked
(declared columns, unique grain) in DuckDB and published only when complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import duckdb
import pyarrow.parquet as pq

from kuai_assets.engines import DUCKDB, Engine
from kuai_assets.features.spec import LABEL_COLUMNS, CatalogError, GroupLog, TableModel
from kuai_assets.features.grain import first_duplicate
from kuai_assets.storage import WorkDir, check_identifier, sql_string


@dataclass
class TableResult:
    rows: int
    columns: list[tuple[str, str]]  # (name, arrow type)
    features: list[tuple[str, str]]  # (name, continuous|discrete)
    seconds: float
    preview: list[dict]
    engine: str = "duckdb"  # what ran it: duckdb, or spark <url>
    # which definition ran: sql (the file), python (the fast path, or a Python group), or
    # DRIVER_DEFINITION (a Python group without a distributed definition, under Spark)
    definition: str = "sql"


DRIVER_DEFINITION = "python (driver, not distributed)"


def sql_body(sql: str) -> str:
    return sql.strip().rstrip(";").strip()


def resolve_variables(model: TableModel, overrides: dict | None) -> dict[str, float | int]:
    """Defaults from the header, overridden by run config; unknown names are refused."""
    values = {v.name: v.default for v in model.variables}
    for name, value in (overrides or {}).items():
        if name not in values:
            raise CatalogError(f"{model.name} has no variable {name!r} (it has: {', '.join(values) or 'none'})")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CatalogError(f"{model.name}: variable {name} must be a number, got {value!r}")
        values[name] = type(values[name])(value)
    return values


def materialize_table_model(
    model: TableModel,
    work: WorkDir,
    variables: dict | None = None,
    log: Callable[[str], None] | GroupLog = lambda message: None,
    engine: Engine = DUCKDB,
) -> TableResult:
    """Write `model`'s table into `work` (atomically). `log` takes the lines said along the way:
    a plain callable, or a `GroupLog` whose DEBUG lines a Python group's diagnostics go to."""
    started = time.time()
    group_log = GroupLog.of(log)
    log = group_log.info
    values = resolve_variables(model, variables)
    on_driver = engine.is_spark and model.sql is None
    if on_driver and not model.driver_only:
        raise CatalogError(
            f"{model.name} is a Python feature group with no SQL definition: it cannot run on Spark "
            "(give it a SQL file, or choose the duckdb engine)"
        )
    # a feature group sees no label column in raw_interactions: label statistics come through
    # label_history (fit rows only, with their folds), which is what makes them derivable and probed
    hidden = {"raw_interactions": LABEL_COLUMNS} if model.is_feature_group else None
    con = work.connect(model.upstream, hidden_columns=hidden)
    try:
        for name, value in values.items():
            con.execute(f"set variable {check_identifier(name, 'variable')} = ?", [value])
        sql = rendered_sql(model, con)
        with work.writing_table(model.name) as tmp:
            try:
                if on_driver:
                    log(
                        f"{model.name}: no distributed definition ({model.driver_only}); running its Python "
                        f"on the Spark driver, not on {engine.spark_url}'s executors"
                    )
                    model.compute(con, tmp, group_log)
                elif engine.is_spark:
                    _run_on_spark(model, sql, work, values, engine, con, tmp, log)
                elif model.compute is not None:  # a Python group, or the fast path of a SQL definition
                    model.compute(con, tmp, group_log)
                else:
                    con.execute(
                        f"copy ({sql_body(sql)}) to {sql_string(tmp)} (format parquet, compression zstd)"
                    )
            except duckdb.BinderException as exc:
                named = [c for c in LABEL_COLUMNS if f'"{c}"' in str(exc)]
                if hidden and named:
                    raise CatalogError(
                        f"{model.path or model.name}: a feature group's raw_interactions has no label column "
                        f"({', '.join(named)}); label statistics read label_history, whose fit rows carry "
                        f"their fold ({str(exc).splitlines()[0]})"
                    ) from None
                raise
            schema = pq.read_schema(tmp)
            features = model.check_columns(schema.names)
            rows = pq.ParquetFile(tmp).metadata.num_rows
            duplicated = first_duplicate(con, tmp, model.grain)
            if duplicated:
                values, count = duplicated
                raise CatalogError(
                    f"{model.path or model.name}: the grain ({', '.join(model.grain)}) is not unique: "
                    f"{values} appears {count} times"
                )
            preview = con.sql(f"select * from read_parquet({sql_string(tmp)}) limit 5").to_arrow_table()
    finally:
        con.close()
    return TableResult(
        rows=rows,
        columns=[(f.name, str(f.type)) for f in schema],
        features=features,
        seconds=round(time.time() - started, 2),
        preview=preview.to_pylist(),
        engine=f"spark {engine.spark_url}" if engine.is_spark else "duckdb",
        definition=DRIVER_DEFINITION if on_driver else "sql" if engine.is_spark or model.compute is None else "python",
    )


def rendered_sql(model: TableModel, con: duckdb.DuckDBPyConnection) -> str | None:
    """The model's SQL to run: its text, or, for a file calling `columns(table, prefix)`, its
    template rendered with the columns the upstream tables (`con`'s views) have now."""
    if model.template is None:
        return model.sql
    from kuai_assets.features.catalog import render_sql

    where = str(model.path or model.name)

    def columns(table: str, prefix: str) -> list[str]:
        if table not in model.upstream:
            raise CatalogError(f"{where}: columns({table!r}, ...) names a table the model does not read")
        names = [d[0] for d in con.execute(f"select * from {check_identifier(table, 'table')} limit 0").description]
        found = [n for n in names if n.startswith(prefix)]
        if not found:
            raise CatalogError(
                f"{where}: columns({table!r}, {prefix!r}): {table} has no column starting with {prefix!r} "
                f"(it has: {', '.join(names)})"
            )
        return found

    return render_sql(model.template, where, model.path.parent.parent if model.path else None, columns)


def _run_on_spark(model, sql: str, work: WorkDir, values: dict, engine: Engine, con, out, log) -> None:
    from kuai_assets.engines.portability import to_spark_sql
    from kuai_assets.engines.spark import run_query, spark_session

    spark_sql = to_spark_sql(sql, values, str(model.path or model.name))
    hidden = LABEL_COLUMNS if model.is_feature_group else ()
    # the same table versions the DuckDB connection reads, held as long as it lives
    pinned = work.pin_tables(model.upstream, con)
    tables = {name: (path, hidden if name == "raw_interactions" else ()) for name, path in pinned.items()}
    session = spark_session(engine.spark_url, work.root / "spark_tmp", engine.spark_conf)
    log(f"{model.name}: running on Spark ({engine.spark_url})")
    try:
        run_query(session, spark_sql, tables, out, log)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RuntimeError(f"{model.path or model.name}: Spark ({engine.spark_url}) failed on its SQL: {first}") from err
