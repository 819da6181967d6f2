"""Readers for the released text files: typed, validated, with errors a person can act on.

Every check either stops with a `DataFormatError` naming the file, the line (or photo) and what is
wrong, or, where the real data really looks like that, accepts the rows and counts them so the
count shows in the asset's metadata. The decision for each case is in the README's
"What the platform guarantees and rejects" section.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from kuai_assets.formats import layout
from kuai_assets.storage import sql_string

LABELS = ("click", "like", "follow")


class DataFormatError(ValueError):
    """The input does not follow the released format. Names the file, the line or photo, the problem."""

    def __init__(self, path: Path | str, problem: str, line: int | None = None, photo_id: int | None = None):
        self.path, self.problem, self.line, self.photo_id = str(path), problem, line, photo_id
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if photo_id is not None:
            where += f", photo_id {photo_id}"
        super().__init__(f"{where}: {problem}")


@dataclass
class ReadReport:
    """What a reader accepted and counted, for the asset's metadata."""

    rows: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataFormatError(path, "file not found (expected in the released layout, see docs/data-format.md)")
    if path.stat().st_size == 0:
        raise DataFormatError(path, "file is empty")


INTEGER_TYPES = ("BIGINT", "INTEGER")
# every byte an all-integer line may hold; anything else ('12.5', '1e3', ' 12', '+12', '0x10')
# DuckDB's cast would silently round or reinterpret instead of rejecting
INTEGER_BYTES = b"0123456789-\t\r\n"
INTEGER = re.compile(r"-?[0-9]+")
SCAN_BYTES = 1 << 24


def _type_name(sql_type: str) -> str:
    return {"BIGINT": "an integer", "INTEGER": "an integer", "DOUBLE": "a number"}.get(sql_type, sql_type.lower())


def _line_text(path: Path, line: int) -> str:
    """The text of 1-based line `line` (only on the error path: reads up to it)."""
    with open(path, "rb") as f:
        for number, text in enumerate(f, start=1):
            if number == line:
                return text.rstrip(b"\r\n").decode("utf-8", "replace")
    return ""


def _bad_field(path: Path, line: int, columns: dict[str, str]) -> DataFormatError:
    """The error for a line of an all-integer file holding something other than integers."""
    text = _line_text(path, line)
    fields = text.split("\t")
    if len(fields) != len(columns):
        problem = f"expected {len(columns)} tab-separated columns, found {len(fields)}"
    else:
        column, value = next(((c, v) for c, v in zip(columns, fields) if v and not INTEGER.fullmatch(v)), (None, None))
        if column is None:  # a stray carriage return or the like, outside any field
            problem = "unexpected bytes in the line"
        else:
            problem = f"column {column!r} must be an integer, got {value!r}"
    return DataFormatError(path, f"{problem}; the line reads {text[:120]!r}", line=line)


def _scan_lines(path: Path, columns: dict[str, str]) -> None:
    """One pass over the raw bytes before DuckDB reads the file.

    Stops at a blank line (DuckDB would skip it silently and every later line number would be
    off by one) and, in an all-integer file (the interactions), at any byte an integer cannot
    hold: DuckDB's BIGINT cast reads '12.5' as 13, '1e3' as 1000 and ' 12' as 12 without a word.
    """
    integers_only = all(t in INTEGER_TYPES for t in columns.values())
    lines_before = 0  # newlines in the chunks already scanned
    tail = b"\n"  # the file starts as if after a newline
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(SCAN_BYTES), b""):
            data = tail + chunk
            blanks = [p for p in (data.find(b"\n\n"), data.find(b"\n\r\n")) if p >= 0]
            if blanks:
                line = lines_before - tail.count(b"\n") + data.count(b"\n", 0, min(blanks) + 1) + 1
                raise DataFormatError(path, "the line is blank (every line must be a row)", line=line)
            if integers_only:
                bad = chunk.translate(None, INTEGER_BYTES)
                if bad:
                    at = min(chunk.find(bytes([b])) for b in set(bad))
                    raise _bad_field(path, lines_before + chunk.count(b"\n", 0, at) + 1, columns)
            lines_before += chunk.count(b"\n")
            tail = data[-2:]


def _read_tsv(con: duckdb.DuckDBPyConnection, table: str, path: Path, columns: dict[str, str]) -> int:
    """Load a headerless tab-separated file into temp table `table` with a 1-based `line` column.

    Malformed lines (a blank line, wrong column count, a value of the wrong type) stop the read
    with the first offending line, its text and what is wrong. Integer columns hold integers
    only: '12.5' or '1e3' is an error, never rounded.
    """
    _require_file(path)
    integers_only = all(t in INTEGER_TYPES for t in columns.values())
    # in a file with text columns the byte scan cannot check integers: read them as text, check, cast
    as_text = [] if integers_only else [c for c, t in columns.items() if t in INTEGER_TYPES]
    read_types = {c: ("VARCHAR" if c in as_text else t) for c, t in columns.items()}
    con.execute("drop table if exists reject_errors")
    con.execute("drop table if exists reject_scans")
    # the byte scan runs on a thread while DuckDB reads (DuckDB releases the GIL); its finding
    # comes first, since DuckDB's reading of such a line can be wrong without an error
    with ThreadPoolExecutor(max_workers=1) as pool:
        scan = pool.submit(_scan_lines, path, columns)
        try:
            con.execute(
                f"create or replace temp table {table} as "
                "select row_number() over () as line, * from read_csv(?, delim='\t', header=false, "
                "columns=?, auto_detect=false, quote='', escape='', store_rejects=true, "
                "null_padding=false, strict_mode=true)",
                [str(path), read_types],
            )
        except duckdb.Error:
            scan.result()  # the scan's clearer error, if it found one
            raise
        scan.result()
    rejected = con.execute(
        "select line, error_type, column_name, csv_line, error_message from reject_errors "
        "order by line, column_idx limit 1"
    ).fetchone()
    if rejected:
        line, error_type, column, text, message = rejected
        expected = len(columns)
        if error_type in ("MISSING COLUMNS", "TOO MANY COLUMNS"):
            found = len(str(text).split("\t"))
            problem = f"expected {expected} tab-separated columns, found {found}"
            if error_type == "MISSING COLUMNS" and line == _count_lines(path):
                problem += " (the last line looks truncated)"
        elif error_type == "CAST":
            value = str(text).split("\t")[_column_position(columns, column)]
            problem = f"column {column!r} must be {_type_name(columns[column])}, got {value!r}"
            if columns[column] in INTEGER_TYPES and INTEGER.fullmatch(value):
                problem += " (out of the 64-bit integer range)"
        else:
            problem = f"{error_type.lower()}: {message}"
        raise DataFormatError(path, f"{problem}; the line reads {str(text)[:120]!r}", line=line)
    for column in as_text:
        row = _first(
            con,
            f'select line, "{column}" from {table} where "{column}" is not null and '
            f"(not regexp_full_match(\"{column}\", '-?[0-9]+') or try_cast(\"{column}\" as bigint) is null) "
            "order by line limit 1",
        )
        if row:
            problem = f"column {column!r} must be an integer, got {row[1]!r}"
            if INTEGER.fullmatch(row[1]):
                problem += " (out of the 64-bit integer range)"
            raise DataFormatError(path, f"{problem}; the line reads {_line_text(path, row[0])[:120]!r}", line=row[0])
    if as_text:
        casts = ", ".join(f'"{c}"::{columns[c]} as "{c}"' for c in as_text)
        con.execute(f"create or replace temp table {table} as select * replace ({casts}) from {table}")
    n = con.execute(f"select count(*) from {table}").fetchone()[0]
    if n == 0:
        raise DataFormatError(path, "file has no rows")
    return n


def _column_position(columns: dict[str, str], column: str) -> int:
    return list(columns).index(column) if column in columns else 0


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        data_lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))
    with open(path, "rb") as f:
        f.seek(-1, 2)
        ends_with_newline = f.read(1) == b"\n"
    return data_lines + (0 if ends_with_newline else 1)


def _first(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    return con.execute(sql, params or []).fetchone()


# -- interactions --------------------------------------------------------------------------


def _may_repeat_a_pair(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """False when no (user_id, photo_id) pair of `table` repeats, by sorting the pairs packed in
    one int64 (ids are non-negative by now): 3 s where DuckDB's group by takes 9-10 s, on the
    final scale's 52M train rows. True when one does, or when the ids are too large to pack (the
    SQL that names the pair then decides)."""
    max_user, max_photo = con.execute(f"select max(user_id), max(photo_id) from {table}").fetchone()
    if max_user is None or (max_user + 1) * (max_photo + 1) >= 2**63:
        return max_user is not None
    pairs = con.execute(f"select user_id, photo_id from {table}").fetchnumpy()
    key = pairs["user_id"].astype(np.int64, copy=False) * np.int64(max_photo + 1)
    key += pairs["photo_id"]
    del pairs
    key.sort()
    return bool((key[1:] == key[:-1]).any())


def read_interactions(con: duckdb.DuckDBPyConnection, root: Path, out: Path) -> ReadReport:
    """train/test interactions -> one typed table `raw_interactions` written to `out` (Parquet).

    Columns: row_id (train lines first, then test), split, line, user_id, photo_id, click, like,
    follow, time, playing_time, duration_time (labels are null on test rows).
    """
    report = ReadReport()
    train_path = layout.interaction_file(root, "train")
    test_path = layout.interaction_file(root, "test")
    report.rows["train"] = _read_tsv(
        con, "train_rows", train_path, {c: "BIGINT" for c in layout.TRAIN_INTERACTION_COLUMNS}
    )
    report.rows["test"] = _read_tsv(
        con, "test_rows", test_path, {c: "BIGINT" for c in layout.TEST_INTERACTION_COLUMNS}
    )

    for table, path, columns in (
        ("train_rows", train_path, layout.TRAIN_INTERACTION_COLUMNS),
        ("test_rows", test_path, layout.TEST_INTERACTION_COLUMNS),
    ):
        first_missing = " ".join(f"when \"{c}\" is null then '{c}'" for c in columns)
        any_missing = " or ".join(f'"{c}" is null' for c in columns)
        row = _first(
            con,
            f"select line, case {first_missing} end as missing from {table} "
            f"where {any_missing} order by line limit 1",
        )
        if row:
            raise DataFormatError(path, f"{row[1]} is missing (empty field)", line=row[0])
        row = _first(
            con,
            f"select line, case when user_id < 0 then 'user_id' else 'photo_id' end, least(user_id, photo_id) "
            f"from {table} where user_id < 0 or photo_id < 0 order by line limit 1",
        )
        if row:
            raise DataFormatError(path, f"{row[1]} must be a non-negative id, got {row[2]}", line=row[0])
        row = _first(con, f"select line, time from {table} where time <= 0 order by line limit 1")
        if row:
            raise DataFormatError(path, f"time must be a positive millisecond timestamp, got {row[1]}", line=row[0])
        row = _first(
            con, f"select line, duration_time from {table} where duration_time < 0 order by line limit 1"
        )
        if row:
            raise DataFormatError(path, f"duration_time must be >= 0, got {row[1]}", line=row[0])
        # whether a pair repeats is one sort of packed keys; the lines are looked up only if one does
        row = None if not _may_repeat_a_pair(con, table) else _first(
            con,
            f"with repeated as (select user_id, photo_id from {table} group by all having count(*) > 1) "
            f"select user_id, photo_id, list(line order by line) as lines from {table} "
            "semi join repeated using (user_id, photo_id) "
            "group by user_id, photo_id order by min(line) limit 1",
        )
        if row:
            raise DataFormatError(
                path,
                f"the pair user_id {row[0]}, photo_id {row[1]} repeats on lines "
                f"{', '.join(map(str, row[2][:5]))} (each pair must appear once)",
                line=row[2][1],
            )

    for label in LABELS:
        row = _first(
            con, f'select line, "{label}" from train_rows where "{label}" not in (0, 1) order by line limit 1'
        )
        if row:
            raise DataFormatError(train_path, f"{label} must be 0 or 1, got {row[1]}", line=row[0])
    row = _first(con, "select line, playing_time from train_rows where playing_time < 0 order by line limit 1")
    if row:
        raise DataFormatError(train_path, f"playing_time must be >= 0, got {row[1]}", line=row[0])

    row = _first(
        con,
        "select t.photo_id, t.line, min(r.line) from test_rows t join train_rows r using (photo_id) "
        "group by t.photo_id, t.line order by t.line limit 1",
    )
    if row:
        raise DataFormatError(
            test_path,
            f"photo_id {row[0]} also appears in {train_path.name} (line {row[2]}); "
            "train and test photos must be disjoint",
            line=row[1],
            photo_id=row[0],
        )

    report.accepted["test users without training history"] = _first(
        con, "select count(distinct user_id) from test_rows anti join train_rows using (user_id)"
    )[0]
    report.accepted["train rows with playing_time over 10x duration (outliers, kept)"] = _first(
        con, "select count(*) from train_rows where playing_time > 10 * duration_time + 60"
    )[0]
    report.accepted["train rows liked or followed without a click (kept)"] = _first(
        con, 'select count(*) from train_rows where click = 0 and ("like" = 1 or follow = 1)'
    )[0]
    report.accepted["rows with duration_time 0 (still pictures)"] = _first(
        con,
        "select (select count(*) from train_rows where duration_time = 0) "
        "+ (select count(*) from test_rows where duration_time = 0)",
    )[0]

    n_train = report.rows["train"]
    con.execute(
        f"""
        copy (
            select line - 1 as row_id, 'train' as split, line, user_id, photo_id,
                   click::tinyint as click, "like"::tinyint as "like", follow::tinyint as follow,
                   time, playing_time, duration_time::integer as duration_time
            from train_rows
            union all
            select {n_train} + line - 1, 'test', line, user_id, photo_id,
                   null::tinyint, null::tinyint, null::tinyint, time, null::bigint,
                   duration_time::integer
            from test_rows
        ) to {sql_string(out)} (format parquet, compression zstd)
        """
    )
    return report


# -- faces -----------------------------------------------------------------------------------


def read_faces(con: duckdb.DuckDBPyConnection, root: Path, photos_table: str, out: Path) -> ReadReport:
    """train/test faces -> `raw_faces`: one row per detected face.

    Columns: photo_id, split, face_index, share, gender (0 female, 1 male), age, appearance.
    `photos_table` names a table of (photo_id, split) of the works in the interactions.
    """
    report = ReadReport()
    parts = []
    for split in layout.SPLITS:
        path = layout.face_file(root, split)
        table = f"{split}_faces"
        report.rows[split] = _read_tsv(con, table, path, {"photo_id": "BIGINT", "faces": "VARCHAR"})
        row = _first(con, f"select line from {table} where photo_id is null or faces is null order by line limit 1")
        if row:
            raise DataFormatError(path, "photo_id or the face list is missing", line=row[0])
        row = _first(
            con,
            f"select photo_id, list(line order by line) from {table} group by photo_id "
            "having count(*) > 1 order by min(line) limit 1",
        )
        if row:
            raise DataFormatError(
                path, f"photo_id {row[0]} has more than one row (lines {row[1][:5]})", line=row[1][1], photo_id=row[0]
            )
        row = _first(
            con,
            f"select line, photo_id, faces from {table} "
            "where not coalesce(json_valid(faces), false) order by line limit 1",
        )
        if row:
            raise DataFormatError(path, f"the face list is not valid JSON: {row[2][:80]!r}", line=row[0], photo_id=row[1])
        row = _first(
            con, f"select line, photo_id, faces from {table} where json_type(faces) <> 'ARRAY' order by line limit 1"
        )
        if row:
            raise DataFormatError(
                path,
                f"the face list must be a JSON list of faces like [[0.2, 0, 18, 69]], got {row[2][:80]!r}",
                line=row[0],
                photo_id=row[1],
            )
        con.execute(
            f"""
            create or replace temp table {table}_long as
            select f.line, f.photo_id, u.i as face_index, u.face
            from (
                select line, photo_id, json_transform(faces, '["JSON"]') as face_list from {table}
            ) f, unnest(f.face_list) with ordinality as u(face, i)
            """
        )
        row = _first(
            con,
            f"select line, photo_id, face::varchar, face_index from {table}_long "
            "where json_type(face) <> 'ARRAY' or json_array_length(face) <> 4 "
            "or json_type(face, '$[0]') not in ('DOUBLE', 'UBIGINT', 'BIGINT') "
            "or json_type(face, '$[1]') not in ('UBIGINT', 'BIGINT', 'DOUBLE') "
            "or json_type(face, '$[2]') not in ('UBIGINT', 'BIGINT', 'DOUBLE') "
            "or json_type(face, '$[3]') not in ('UBIGINT', 'BIGINT', 'DOUBLE') "
            "order by line, face_index limit 1",
        )
        if row:
            raise DataFormatError(
                path,
                f"face {row[3]} must be [share, gender, age, appearance] (4 numbers), got {row[2][:80]}",
                line=row[0],
                photo_id=row[1],
            )
        con.execute(
            f"""
            create or replace temp table {table}_typed as
            select line, photo_id, face_index::smallint as face_index,
                   (face->>0)::double as share, (face->>1)::double as gender,
                   (face->>2)::double as age, (face->>3)::double as appearance
            from {table}_long
            """
        )
        for condition, problem in (
            ("not (share > 0 and share <= 1)", "share of the cover must be in (0, 1]"),
            ("gender not in (0, 1)", "gender must be 0 (female) or 1 (male)"),
            ("not (age >= 0 and age <= 120)", "age must be between 0 and 120"),
            ("not (appearance >= 0 and appearance <= 100)", "appearance must be between 0 and 100"),
        ):
            row = _first(
                con,
                f"select line, photo_id, face_index, share, gender, age, appearance from {table}_typed "
                f"where {condition} order by line limit 1",
            )
            if row:
                raise DataFormatError(
                    path,
                    f"{problem}; face {row[2]} is [{row[3]:g}, {row[4]:g}, {row[5]:g}, {row[6]:g}]",
                    line=row[0],
                    photo_id=row[1],
                )
        report.accepted[f"{split}: face rows with an empty list (no face)"] = _first(
            con, f"select count(*) from {table} where json_array_length(faces) = 0"
        )[0]
        report.accepted[f"{split}: face rows for photos not in {split}_interaction.txt (dropped)"] = _first(
            con,
            f"select count(*) from {table} where photo_id not in "
            f"(select photo_id from {photos_table} where split = '{split}')",
        )[0]
        parts.append(
            f"""
            select photo_id, '{split}' as split, face_index, share::float as share,
                   gender::tinyint as gender, age::smallint as age, appearance::smallint as appearance
            from {table}_typed
            where photo_id in (select photo_id from {photos_table} where split = '{split}')
            """
        )
    con.execute(
        f"copy ({' union all '.join(parts)} order by photo_id, face_index) "
        f"to {sql_string(out)} (format parquet, compression zstd)"
    )
    return report


# -- cover text ------------------------------------------------------------------------------


def read_text(con: duckdb.DuckDBPyConnection, root: Path, photos_table: str, out: Path) -> ReadReport:
    """train/test cover words -> `raw_text`: one row per work.

    Columns: photo_id, split, words (BIGINT[]; empty for a cover without text), n_words.
    The single token `0` means no text; `0` inside a longer list is an ordinary word id.
    """
    report = ReadReport()
    parts = []
    for split in layout.SPLITS:
        path = layout.text_file(root, split)
        table = f"{split}_text"
        report.rows[split] = _read_tsv(con, table, path, {"photo_id": "BIGINT", "words": "VARCHAR"})
        row = _first(con, f"select line from {table} where photo_id is null order by line limit 1")
        if row:
            raise DataFormatError(path, "photo_id is missing", line=row[0])
        row = _first(
            con,
            f"select photo_id, list(line order by line) from {table} group by photo_id "
            "having count(*) > 1 order by min(line) limit 1",
        )
        if row:
            raise DataFormatError(
                path, f"photo_id {row[0]} has more than one row (lines {row[1][:5]})", line=row[1][1], photo_id=row[0]
            )
        con.execute(
            f"""
            create or replace temp table {table}_tokens as
            select line, photo_id, words,
                   list_transform(string_split(trim(words), ','), lambda x: trim(x)) as tokens
            from {table} where words is not null and trim(words) <> ''
            """
        )
        # a word id is digits only: try_cast would read '5.5' as 6 and ' 5' as 5
        not_a_word = "lambda x: not regexp_full_match(x, '[0-9]+') or try_cast(x as bigint) is null"
        row = _first(
            con,
            f"select line, photo_id, list_filter(tokens, {not_a_word})[1], words from {table}_tokens "
            f"where len(list_filter(tokens, {not_a_word})) > 0 order by line limit 1",
        )
        if row:
            raise DataFormatError(
                path,
                f"cover word {row[2]!r} is not a word id (a non-negative integer); the value reads {row[3][:80]!r}",
                line=row[0],
                photo_id=row[1],
            )
        report.accepted[f"{split}: rows with an empty value (read as no text)"] = _first(
            con, f"select count(*) from {table} where words is null or trim(words) = ''"
        )[0]
        report.accepted[f"{split}: text rows for photos not in {split}_interaction.txt (dropped)"] = _first(
            con,
            f"select count(*) from {table} where photo_id not in "
            f"(select photo_id from {photos_table} where split = '{split}')",
        )[0]
        report.accepted[f"{split}: photos without a text row (read as no text)"] = _first(
            con,
            f"select count(*) from {photos_table} where split = '{split}' "
            f"and photo_id not in (select photo_id from {table})",
        )[0]
        parts.append(
            f"""
            select p.photo_id, '{split}' as split,
                   case when t.tokens is null or t.tokens = ['0'] then []::bigint[]
                        else list_transform(t.tokens, lambda x: x::bigint) end as words
            from {photos_table} p
            left join {table}_tokens t using (photo_id)
            where p.split = '{split}'
            """
        )
    con.execute(
        f"copy (select *, len(words)::integer as n_words from ({' union all '.join(parts)}) order by photo_id) "
        f"to {sql_string(out)} (format parquet, compression zstd)"
    )
    return report


def read_ground_truth(con: duckdb.DuckDBPyConnection, path: Path, table: str = "ground_truth") -> int:
    """The generator's test labels: user_id, photo_id, click, p_click (tab-separated, no header)."""
    return _read_tsv(
        con, table, path, {"user_id": "BIGINT", "photo_id": "BIGINT", "click": "INTEGER", "p_click": "DOUBLE"}
    )
