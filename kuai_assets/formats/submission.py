"""The competition's submission file: `user_id \\t photo_id \\t click_probability`, six decimals,
no header, one row per test row, exactly the keys of test_interaction.txt.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from kuai_assets.formats.released import DataFormatError
from kuai_assets.storage import atomic_file, sql_string

LINE = re.compile(r"^\d+\t\d+\t(0|1)\.\d{6}$")


def write_submission(path: Path, user_id: np.ndarray, photo_id: np.ndarray, probability: np.ndarray) -> None:
    probability = np.asarray(probability, dtype=np.float64)
    if not np.isfinite(probability).all() or probability.min() < 0 or probability.max() > 1:
        raise ValueError("click probabilities must be finite and within [0, 1]")
    # fixed six decimals, built column-wise (no Python formatting per row)
    micro = np.rint(probability * 1_000_000).astype(np.int64)
    text = pc.binary_join_element_wise(
        pc.cast(pa.array(micro // 1_000_000), pa.string()),
        pc.utf8_lpad(pc.cast(pa.array(micro % 1_000_000), pa.string()), 6, "0"),
        ".",
    )
    table = pa.table({"user_id": user_id.astype(np.int64), "photo_id": photo_id.astype(np.int64), "p": text})
    with atomic_file(Path(path)) as tmp:
        pacsv.write_csv(table, tmp, write_options=pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"))


def validate_submission(path: Path, test_interactions: Path) -> int:
    """Check a submission against the test file's keys; return its row count or raise DataFormatError."""
    path, test_interactions = Path(path), Path(test_interactions)
    if not path.is_file():
        raise DataFormatError(path, "submission file not found")
    con = duckdb.connect()
    try:
        con.execute(
            f"create table sub as select row_number() over () as line, column0 as text "
            f"from read_csv({sql_string(path)}, delim='\\x01', header=false, columns={{'column0': 'VARCHAR'}}, "
            "quote='', escape='', auto_detect=false)"
        )
        bad = con.execute(
            "select line, text from sub where not regexp_full_match(text, '\\d+\\t\\d+\\t(0|1)\\.\\d{6}') "
            "order by line limit 1"
        ).fetchone()
        if bad:
            raise DataFormatError(
                path, f"expected `user_id<TAB>photo_id<TAB>probability` with six decimals, got {bad[1][:80]!r}", line=bad[0]
            )
        con.execute(
            "create table keys as select line, split_part(text, '\t', 1)::bigint as user_id, "
            "split_part(text, '\t', 2)::bigint as photo_id, split_part(text, '\t', 3)::double as p from sub"
        )
        bad = con.execute("select line, p from keys where p < 0 or p > 1 order by line limit 1").fetchone()
        if bad:
            raise DataFormatError(path, f"probability {bad[1]} is outside [0, 1]", line=bad[0])
        bad = con.execute(
            "select user_id, photo_id, list(line order by line) from keys group by all having count(*) > 1 limit 1"
        ).fetchone()
        if bad:
            raise DataFormatError(path, f"user_id {bad[0]}, photo_id {bad[1]} appears more than once (lines {bad[2][:5]})", line=bad[2][1])
        con.execute(
            f"create table test as select user_id, photo_id from read_csv({sql_string(test_interactions)}, "
            "delim='\t', header=false, columns={'user_id': 'BIGINT', 'photo_id': 'BIGINT', 'time': 'BIGINT', "
            "'duration_time': 'BIGINT'}, auto_detect=false)"
        )
        extra = con.execute(
            "select line, user_id, photo_id from keys anti join test using (user_id, photo_id) order by line limit 1"
        ).fetchone()
        if extra:
            raise DataFormatError(
                path, f"user_id {extra[1]}, photo_id {extra[2]} is not a row of {test_interactions.name}", line=extra[0]
            )
        missing = con.execute(
            "select count(*), min(user_id), arg_min(photo_id, user_id) from test anti join keys using (user_id, photo_id)"
        ).fetchone()
        if missing[0]:
            raise DataFormatError(
                path,
                f"{missing[0]} row(s) of {test_interactions.name} have no probability "
                f"(e.g. user_id {missing[1]}, photo_id {missing[2]})",
            )
        return con.execute("select count(*) from keys").fetchone()[0]
    finally:
        con.close()
