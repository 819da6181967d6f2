"""Where every asset's output lives, and how it is written without ever being half-written.

Layout under the work dir (KUAI_WORK_DIR, default `.kuai/` in the repo):

    tables/<asset>.parquet        one Parquet file per table asset, replaced atomically
    stores/<asset> -> .<asset>-<id>/   multi-file outputs (vectors, models): a versioned folder
                                  behind a symlink that is swapped atomically
    data/                         synthetic datasets
    mlflow/, dagster_home/        the tracking store and the Dagster instance
    duckdb_tmp/                   DuckDB's spill space

Dagster runs steps in separate processes and may run two runs at once; DuckDB allows one writer
per database file. So no asset shares a database file: each opens an in-memory DuckDB, reads its
upstream Parquet files through views, and writes its own file to a temporary name, renamed into
place only once complete. A killed step leaves the previous version intact; two runs writing the
same asset each publish a complete file and the last rename wins.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import duckdb

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
KEEP_STORE_VERSIONS = 2


class MissingUpstreamError(RuntimeError):
    """An upstream asset has never been materialized in this work dir."""

    def __init__(self, name: str, path: Path):
        self.name = name
        super().__init__(
            f"Upstream asset '{name}' has not been materialized (no {path}). "
            f"Materialize it and everything above it first: "
            f"`dagster asset materialize --select '*{name}'` (or `kuai run` for the whole graph)."
        )


def check_identifier(name: str, what: str = "name") -> str:
    """Names that reach SQL text must be plain lowercase identifiers: nothing else is pasted."""
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise ValueError(f"{what} {name!r} is not a plain lowercase identifier")
    return name


def sql_string(value: str) -> str:
    """A SQL string literal (for file paths in DDL, where parameters are not allowed)."""
    return "'" + str(value).replace("'", "''") + "'"


class WorkDir:
    def __init__(self, root: Path | str):
        self.root = Path(root).absolute()

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def stores(self) -> Path:
        return self.root / "stores"

    @property
    def duckdb_tmp(self) -> Path:
        return self.root / "duckdb_tmp"

    @property
    def submission_file(self) -> Path:
        return self.root / "submission.txt"

    def table_path(self, name: str) -> Path:
        return self.tables / f"{check_identifier(name, 'table')}.parquet"

    def store_path(self, name: str) -> Path:
        return self.stores / check_identifier(name, "store")

    def has_table(self, name: str) -> bool:
        return self.table_path(name).is_file()

    def require_table(self, name: str) -> Path:
        path = self.table_path(name)
        if not path.is_file():
            raise MissingUpstreamError(name, path)
        return path

    def require_store(self, name: str) -> Path:
        path = self.store_path(name)
        if not path.exists():
            raise MissingUpstreamError(name, path)
        return path.resolve()

    # -- atomic writers ---------------------------------------------------------------------

    @contextmanager
    def writing_table(self, name: str) -> Iterator[Path]:
        """Yield a temporary path to write `name`'s Parquet file to; publish it on success."""
        final = self.table_path(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(final) as tmp:
            yield tmp

    @contextmanager
    def writing_store(self, name: str) -> Iterator[Path]:
        """Yield a fresh folder for `name`'s files; on success swap the `stores/<name>` link to it."""
        link = self.store_path(name)
        link.parent.mkdir(parents=True, exist_ok=True)
        version = link.parent / f".{name}-{uuid.uuid4().hex[:12]}"
        version.mkdir()
        try:
            yield version
            tmp_link = link.parent / f".{name}.link-{uuid.uuid4().hex[:8]}"
            os.symlink(version.name, tmp_link)
            os.replace(tmp_link, link)
        except BaseException:
            shutil.rmtree(version, ignore_errors=True)
            raise
        _prune_versions(link, name)

    # -- DuckDB -----------------------------------------------------------------------------

    def connect(
        self,
        tables: Iterable[str] = (),
        memory_limit: str | None = None,
        threads: int | None = None,
    ) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with a view per upstream table (which must exist)."""
        self.duckdb_tmp.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(
            config={
                "temp_directory": str(self.duckdb_tmp),
                "memory_limit": memory_limit or os.environ.get("KUAI_DUCKDB_MEMORY", "8GB"),
                "threads": threads or int(os.environ.get("KUAI_DUCKDB_THREADS", os.cpu_count() or 2)),
            }
        )
        con.execute("set enable_progress_bar = false")
        for name in tables:
            attach_table(con, name, self.require_table(name))
        return con


def attach_table(con: duckdb.DuckDBPyConnection, name: str, path: Path) -> None:
    con.execute(
        f"create or replace view {check_identifier(name, 'table')} as "
        f"select * from read_parquet({sql_string(path)})"
    )


@contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Write to a temporary sibling, then `os.replace` it onto `final` (atomic on POSIX)."""
    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _prune_versions(link: Path, name: str) -> None:
    """Drop old versions of a store, keeping the current one and the one before it.

    Readers that still have files of a pruned version open keep reading them (POSIX unlink).
    """
    current = link.resolve().name
    versions = sorted(
        (p for p in link.parent.glob(f".{name}-*") if p.is_dir() and p.name != current),
        key=lambda p: p.stat().st_mtime,
    )
    for old in versions[: max(0, len(versions) - (KEEP_STORE_VERSIONS - 1))]:
        shutil.rmtree(old, ignore_errors=True)
