"""Is a table's grain unique? An exact check that packs the grain columns into one integer and sorts.

DuckDB's `group by <grain> having count(*) > 1` builds a hash table with one entry per row, which
over the hundred-million-row feature tables of the final size costs more than some groups take
to compute. Here every grain
column becomes a dense code (a string: its index among the column's distinct values; an integer:
its value minus the column's minimum; a null: one code more), the codes are packed into one int64
(mixed radix, so two rows share a packed key exactly when they share every grain value) and the
keys are sorted: a duplicate is two equal neighbours. Exact, no hashing. Where the packed key
would not fit in 63 bits (ids spread over a huge range in several columns) or a grain column is
neither an integer nor a string, DuckDB's group by answers instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kuai_assets.storage import check_identifier, sql_string

LARGEST_KEY = 2**63 - 1


class _Column:
    """One grain column as dense codes 0..cardinality-1, and the way back from a code to its value."""

    def __init__(self, column: pa.ChunkedArray):
        self.nulls = column.null_count > 0
        if pa.types.is_integer(column.type):
            self.distinct = None
            low, high = pc.min_max(column).values()
            self.low = int(low.as_py()) if low.is_valid else 0
            span = int(high.as_py()) - self.low + 1 if high.is_valid else 0
            values = pc.fill_null(column, self.low) if self.nulls else column
            self.codes = values.to_numpy().astype(np.int64, copy=False) - self.low
        else:  # a string, read dictionary-encoded: each chunk's few distinct values map to global codes
            distinct: dict[str, int] = {}
            self.codes = np.empty(len(column), dtype=np.int64)
            offset = 0
            for chunk in column.chunks:
                to_global = np.array(
                    [distinct.setdefault(value, len(distinct)) for value in chunk.dictionary.to_pylist()] or [0],
                    dtype=np.int64,
                )
                indices = chunk.indices.fill_null(0) if chunk.null_count else chunk.indices
                self.codes[offset : offset + len(chunk)] = to_global[indices.to_numpy()]
                offset += len(chunk)
            self.distinct = list(distinct)
            span = len(self.distinct)
        if self.nulls:  # nulls take the code after the last value, so two nulls are equal
            self.null_code = span
            is_null = pc.is_null(column).to_numpy(zero_copy_only=False)
            self.codes[is_null] = span
            span += 1
        self.cardinality = max(span, 1)

    def value(self, code: int) -> Any:
        if self.nulls and code == self.null_code:
            return None
        if self.distinct is None:
            return code + self.low
        return self.distinct[code]


def _packable(types: list[pa.DataType]) -> bool:
    return all(
        (pa.types.is_integer(t) and t != pa.uint64()) or pa.types.is_string(t) or pa.types.is_large_string(t)
        for t in types
    )


def first_duplicate(
    con: duckdb.DuckDBPyConnection, path: Path, grain: tuple[str, ...] | list[str]
) -> tuple[dict[str, Any], int] | None:
    """The first grain value (by packed key) that appears more than once, with its count; None if unique."""
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    rows = parquet.metadata.num_rows
    if rows < 2:
        return None
    if _packable([schema.field(name).type for name in grain]):
        columns: list[_Column] = []
        key = np.zeros(rows, dtype=np.int64)
        width = 1
        for name in grain:
            string = not pa.types.is_integer(schema.field(name).type)
            column = _Column(pq.read_table(path, columns=[name], read_dictionary=[name] if string else None).column(0))
            width *= column.cardinality
            if width > LARGEST_KEY:
                break
            key *= column.cardinality
            key += column.codes
            column.codes = None  # free it: only the packed key is needed from here
            columns.append(column)
        else:
            key.sort()
            equal = np.flatnonzero(key[1:] == key[:-1])
            if len(equal) == 0:
                return None
            duplicated = int(key[equal[0]])
            count = int(np.searchsorted(key, duplicated, side="right") - np.searchsorted(key, duplicated, side="left"))
            values = {}
            for name, column in reversed(list(zip(grain, columns))):
                duplicated, code = divmod(duplicated, column.cardinality)
                values[name] = column.value(code)
            return {name: values[name] for name in grain}, count
    keys = ", ".join(check_identifier(k, "grain column") for k in grain)
    found = con.execute(
        f"select {keys}, count(*) as n from read_parquet({sql_string(path)}) group by all having count(*) > 1 limit 1"
    ).fetchone()
    if found is None:
        return None
    return dict(zip(grain, found[:-1])), int(found[-1])
