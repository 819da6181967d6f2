"""The catalog refuses SQL that cannot be carried to Spark faithfully, naming file, line and construct."""

import shutil

import pytest

from kuai_assets.engines.portability import NotPortableError, check_portable, to_spark_sql
from kuai_assets.features.catalog import REPO_ROOT, CatalogError, load_catalog, load_sql_model

HEADER = "-- A planted group.\n--\n-- grain: user_id\n-- continuous: x\n"

# (construct, SQL body after the header: the construct is on the body's line 2, the file's line 6,
# exact message after `<file>:6: not portable to Spark: `)
REFUSED = [
    (
        "unknown function",
        "select user_id,\n       frobnicate(photo_id) as x\nfrom model_rows",
        "unknown function frobnicate(): sqlglot cannot translate it to Spark",
    ),
    (
        "ordered aggregate",
        "select user_id,\n       len(list(photo_id order by time)) as x\nfrom model_rows\ngroup by user_id",
        "ordered aggregate list(... ORDER BY ...): Spark does not keep the order inside list()",
    ),
    (
        "hash",
        "select user_id,\n       max(hash(photo_id) % 5) as x\nfrom model_rows\ngroup by user_id",
        "hash(): DuckDB's and Spark's hash functions give different values",
    ),
    (
        "pivot",
        "select user_id, validation as x from model_rows\npivot (count(*) for setup in ('validation', 'submission'))",
        "PIVOT: DuckDB's PIVOT has no faithful Spark translation; write the CASE columns out",
    ),
    (
        "columns",
        "select user_id,\n       columns('^ro') as x\nfrom model_rows",
        "COLUMNS(...): a DuckDB star expression with no Spark equivalent; list the columns",
    ),
    (
        "list slice",
        "select photo_id as user_id,\n       len(words[1:2]) as x\nfrom raw_text",
        "list slice [a:b]: DuckDB's 1-based inclusive slices have no faithful Spark translation",
    ),
    (
        "unknown hint strategy",
        "select\n       /*+ BROADCASTS(h) */ r.user_id, h.click as x\nfrom model_rows as r\njoin label_history as h on h.row_id = r.row_id",
        "hint BROADCASTS(h): Spark has no BROADCASTS hint and would ignore it (its join hints: BROADCAST, "
        "BROADCASTJOIN, MAPJOIN, MERGE, SHUFFLE_MERGE, MERGEJOIN, SHUFFLE_HASH, SHUFFLE_REPLICATE_NL)",
    ),
    (
        "hint alias out of scope",  # l is an alias of the CTE's select, not of the hinted one
        "with h as (select * from label_history as l)\nselect /*+ BROADCAST(l) */ r.user_id, h.click as x\n"
        "from model_rows as r\njoin h on h.row_id = r.row_id",
        "hint BROADCAST(l): l is not a table or alias of this SELECT's FROM/JOIN (it has: r, h); Spark would ignore the hint",
    ),
    (
        "hint naming an aliased table",  # Spark matches the alias only
        "select\n       /*+ MERGE(label_history) */ r.user_id, h.click as x\nfrom model_rows as r\njoin label_history as h on h.row_id = r.row_id",
        "hint MERGE(label_history): label_history is not a table or alias of this SELECT's FROM/JOIN (it has: r, h); "
        "Spark would ignore the hint",
    ),
    (
        "partition hint",
        "select\n       /*+ REPARTITION(8) */ user_id, row_id as x\nfrom model_rows",
        "hint REPARTITION(8): partition hints are not allowed (a partition count is a setting of the engine, "
        "spark.sql.shuffle.partitions, not part of a table model's definition)",
    ),
    (
        "group by all beside a column named all",
        "select user_id,\n       'all', count(*) as n\nfrom model_rows\ngroup by all",
        "GROUP BY ALL beside an output column named all ('all'): Spark groups by that column alone "
        "(MISSING_AGGREGATION), DuckDB by every non-aggregate; name the column otherwise or write the groups out",
    ),
    (
        "misplaced hint",
        "with h as (select * from label_history)\nselect r.user_id, h.click as x /*+ BROADCAST(h) */\n"
        "from model_rows as r\njoin h on h.row_id = r.row_id",
        "hint /*+ BROADCAST(h) */ does not follow a SELECT: Spark would read it as a comment",
    ),
]


@pytest.mark.parametrize("construct, body, why", REFUSED, ids=[r[0] for r in REFUSED])
def test_each_construct_is_refused_with_file_line_and_construct(tmp_path, construct, body, why):
    path = tmp_path / "features" / "planted.sql"
    path.parent.mkdir()
    path.write_text(HEADER + body)
    with pytest.raises(NotPortableError) as refused:
        load_sql_model(path)
    assert str(refused.value) == f"{path}:6: not portable to Spark: {why}"


def test_the_catalog_refuses_a_non_portable_file_among_portable_ones(tmp_path):
    load_catalog(shutil.copytree(REPO_ROOT / "dbt_like_sql", tmp_path / "today"))  # all portable
    root = shutil.copytree(REPO_ROOT / "dbt_like_sql", tmp_path / "planted")  # (the catalog caches by folder)
    planted = root / "features" / "planted.sql"
    planted.write_text(HEADER + REFUSED[1][1])
    with pytest.raises(CatalogError, match=rf"^{planted}:6: not portable to Spark: ordered aggregate list\("):
        load_catalog(root)


def test_window_order_and_portable_functions_pass():
    check_portable("select row_number() over (partition by user_id order by time) as n from model_rows", "ok.sql")
    check_portable("select max_by(photo_id, time), count(*) filter (where click = 1) from label_history", "ok.sql")
    # a constant under GROUP BY ALL is portable as long as its output name is not `all`
    check_portable("select user_id, 'all' as dimension, 'age', count(*) from model_rows group by all", "ok.sql")


def test_variables_become_typed_literals():
    sql = "select cast(getvariable('hours') * 3600000 as bigint) as t, row_id % getvariable('folds') as f from m"
    spark = to_spark_sql(sql, {"hours": 12.0, "folds": 5}, "v.sql")
    assert spark == "SELECT CAST(CAST(12.0 AS DOUBLE) * 3600000 AS BIGINT) AS t, row_id % 5 AS f FROM m"
    with pytest.raises(NotPortableError, match=r"^v.sql:1: getvariable\('nope'\) names no variable of the header \(it has: folds\)$"):
        to_spark_sql("select getvariable('nope') as x", {"folds": 5}, "v.sql")


def test_a_window_function_in_arithmetic_reaches_spark_in_parentheses():
    """Spark reads `sum(x) over w - x` as the window name `w-x` (INVALID_IDENTIFIER); the same
    expression parenthesised means what DuckDB reads."""
    sql = ("select sum(x) over w - x as a, -count(*) over w as b, (sum(x) over w) * 2 as c, "
           "sum(x) over (partition by u order by t) + 1 as d from m window w as (partition by u order by t)")
    spark = to_spark_sql(sql, {}, "w.sql")
    assert spark.startswith(
        "SELECT (SUM(x) OVER w) - x AS a, -(COUNT(*) OVER w) AS b, (SUM(x) OVER w) * 2 AS c, "
        "(SUM(x) OVER (PARTITION BY u ORDER BY t NULLS LAST)) + 1 AS d FROM m WINDOW w AS "
    )


def test_a_join_hint_reaches_spark_as_a_hint_and_duckdb_as_a_comment(tmp_path):
    """sqlglot's DuckDB dialect drops hints; the check parses with one that keeps them."""
    import duckdb

    body = (
        "select /*+ BROADCAST(h), shuffle_hash(model_rows) */ user_id, h.click as x\n"
        "from model_rows\njoin label_history as h on h.row_id = model_rows.row_id"
    )
    path = tmp_path / "features" / "hinted.sql"
    path.parent.mkdir()
    path.write_text(HEADER + body)
    assert load_sql_model(path).sql == HEADER + body
    assert to_spark_sql(body, {}, "h.sql") == (
        "SELECT /*+ BROADCAST(h), SHUFFLE_HASH(model_rows) */ user_id, h.click AS x "
        "FROM model_rows JOIN label_history AS h ON h.row_id = model_rows.row_id"
    )
    con = duckdb.connect()
    con.execute("create table model_rows as select 1 as row_id, 7 as user_id")
    con.execute("create table label_history as select 1 as row_id, 1 as click")
    assert con.sql(HEADER + body).fetchall() == [(7, 1)]
