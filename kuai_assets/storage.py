"""Where every asset's output lives, and how it is written without ever being half-written.

Layout under the work dir (KUAI_WORK_DIR, default `.kuai/` in the repo):

    tables/<asset>.parquet        one Parquet file per table asset, replaced atomically
    stores/<asset> -> .<asset>-<id>/   multi-file outputs (vectors, models): a versioned folder
                                  behind a symlink that is swapped atomically
    pinned/                       hard links that hold the table versions open connections read
    data/                         synthetic datasets
    mlflow/, dagster_home/        the tracking store and the Dagster instance
    duckdb_tmp/                   DuckDB's spill space

Dagster runs steps in separate processes and may run two runs at once; DuckDB allows one writer
per database file. So no asset shares a database file: each opens an in-memory DuckDB, reads its
upstream Parquet files through views, and writes its own file to a temporary name, renamed into
place only once complete. A killed step leaves the previous version intact; two runs writing the
same asset each publish a complete file and the last rename wins.

Three details make that hold under kills and concurrent runs:

- Everything unfinished has a temporary name, `.<name>.tmp-<host>-<pid>-<random>` (a table's
  file, a store's folder, a link about to be swapped in), never a published one. A writer that is
  killed leaves it behind; the next write in the same folder deletes such leftovers once their
  writer is gone (same host, pid no longer running) or they have been idle for a day
  (STALE_AFTER_SECONDS; other hosts sharing the folder). A live writer's files are never touched.
- A store folder is renamed to its version name `.<asset>-<id>` and the link swapped under a lock
  per store, so concurrent publishers never prune a version another one is about to link.
- DuckDB opens a Parquet file more than once while it scans it. A view on `tables/<name>.parquet`
  could therefore read half of one version and half of the version another run renames over it;
  `connect` reads a hard link to the version current when it connected instead, for the whole
  life of the connection (the link goes when the connection does).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import socket
import time
import uuid
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import duckdb

IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
KEEP_STORE_VERSIONS = 2
# leftovers whose writer cannot be checked (another host) are deleted after this long idle
STALE_AFTER_SECONDS = 24 * 3600



def _host_token() -> str:
    """This host, and this pid namespace on it: where a pid in a temporary's name can be checked."""
    token = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"
    try:
        namespace = re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    except OSError:
        namespace = ""
    return f"{token}_{namespace}" if namespace else token


HOST = _host_token()
# `.<name>.tmp-<host>-<pid>-<random>`; files written before the host was recorded lack `<host>-`
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?:(?P<host>[A-Za-z0-9_]+)-)?(?P<pid>\d+)-(?P<rand>[0-9a-f]+)$")


class MissingUpstreamError(RuntimeError):
    """An upstream asset has never been materialized in this work dir."""

    def __init__(self, name: str, path: Path):
        self.name = name
        super().__init__(
            f"Upstream asset '{name}' has not been materialized (no {path}). "
            f"Materialize it and everything above it first: "
            f"`dagster asset materialize --select '*{name}'` (or `kuai run` for the whole graph)."
        )


# what a library says when a write finds the disk full (DuckDB's IO errors carry no errno)
DISK_FULL_TEXT = "no space left on device"


def disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from, says the disk is full: ENOSPC from the
    operating system (Python's and pyarrow's OSError) or the same words in another library's
    error (DuckDB's IOException)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if DISK_FULL_TEXT in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(path: Path | str) -> int:
    """Bytes free to this user on the file system that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def size_text(n_bytes: float) -> str:
    """Bytes for a person: `3.0 MiB`, `1.2 GiB`."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes / 2**20:.1f} MiB"


def disk_full_message(root: Path | str) -> str:
    """One line for a step that found the disk full while writing under `root`."""
    return (
        f"the disk is full (no space left on device) while writing under {root}; {size_text(free_bytes(root))} free there "
        "now. Nothing already materialized was changed: free space on that disk, or point KUAI_WORK_DIR at a larger one"
    )


def file_digest(path: Path | str) -> str:
    """The file's content digest (BLAKE2b, 128 bits, hex), read 16 MiB at a time."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(paths: dict[str, Path]) -> dict[str, str]:
    """`file_digest` of each path, by the same keys; two files at a time (hashing releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(paths, pool.map(file_digest, paths.values())))


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
    def pinned(self) -> Path:
        return self.root / "pinned"

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
        remove_stale_temporaries(final.parent)
        with atomic_file(final) as tmp:
            yield tmp

    @contextmanager
    def writing_store(self, name: str) -> Iterator[Path]:
        """Yield a fresh folder for `name`'s files; on success swap the `stores/<name>` link to it."""
        link = self.store_path(name)
        link.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(link.parent)
        folder = temporary_sibling(link)
        folder.mkdir()
        try:
            yield folder
            _publish_store(folder, link)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    # -- DuckDB -----------------------------------------------------------------------------

    def connect(
        self,
        tables: Iterable[str] = (),
        memory_limit: str | None = None,
        threads: int | None = None,
        hidden_columns: dict[str, Iterable[str]] | None = None,
    ) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with a view per upstream table (which must exist).

        Each view reads the version of the table that was current when connecting, however many
        times DuckDB reopens the file and whatever another run publishes meanwhile. A table named
        in `hidden_columns` is seen without those columns: a query naming one fails to bind.
        """
        self.duckdb_tmp.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(
            config={
                "temp_directory": str(self.duckdb_tmp),
                "memory_limit": memory_limit or os.environ.get("KUAI_DUCKDB_MEMORY", "8GB"),
                "threads": threads or int(os.environ.get("KUAI_DUCKDB_THREADS", os.cpu_count() or 2)),
            }
        )
        con.execute("set enable_progress_bar = false")
        tables = list(tables)
        if not tables:
            return con
        try:
            pins = self._pin_folder(con)
            for name in tables:
                attach_table(con, name, _pin(self.require_table(name), pins), (hidden_columns or {}).get(name, ()))
        except BaseException:
            con.close()
            raise
        return con

    def pin_tables(self, tables: Iterable[str], owner: object) -> dict[str, Path]:
        """The version of each table current now, held (by hard links) for as long as `owner` lives:
        what `connect` does for DuckDB, for readers of the files (Spark)."""
        folder = self._pin_folder(owner)
        return {name: _pin(self.require_table(name), folder) for name in tables}

    def _pin_folder(self, con: duckdb.DuckDBPyConnection) -> Path | None:
        """A folder of hard links that lives as long as `con` (None where links are impossible)."""
        try:
            self.pinned.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.pinned)
            folder = temporary_sibling(self.pinned / "connection")
            folder.mkdir()
        except OSError:
            return None
        weakref.finalize(con, shutil.rmtree, folder, True)
        return folder


def attach_table(con: duckdb.DuckDBPyConnection, name: str, path: Path, hidden: Iterable[str] = ()) -> None:
    hidden = [f'"{check_identifier(c, "column")}"' for c in hidden]
    columns = f"* exclude ({', '.join(hidden)})" if hidden else "*"
    con.execute(
        f"create or replace view {check_identifier(name, 'table')} as "
        f"select {columns} from read_parquet({sql_string(path)})"
    )


def _pin(path: Path, folder: Path | None) -> Path:
    """A hard link to the file `path` names now (so later renames onto `path` do not reach it)."""
    if folder is None:
        return path
    pinned = folder / path.name
    try:
        os.link(path, pinned)
    except FileNotFoundError:
        raise MissingUpstreamError(path.stem, path) from None
    except OSError:  # no hard links on this filesystem: read the path itself
        return path
    return pinned


@contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Write to a temporary sibling, then `os.replace` it onto `final` (atomic on POSIX)."""
    final = Path(final)
    remove_stale_temporaries(final.parent, final.name)
    tmp = temporary_sibling(final)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        _publish_file(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _publish_file(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_folder(final.parent)


def _publish_store(folder: Path, link: Path) -> None:
    """Flush `folder`, rename it to a version name, point `link` at it, drop old versions."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
    _fsync_folder(folder)
    name = link.name
    with _store_lock(link):
        version = link.parent / f".{name}-{uuid.uuid4().hex[:12]}"
        os.rename(folder, version)
        tmp_link = temporary_sibling(link)
        os.symlink(version.name, tmp_link)
        os.replace(tmp_link, link)
        _fsync_folder(link.parent)
        _prune_versions(link, name)


@contextmanager
def _store_lock(link: Path) -> Iterator[None]:
    with open(link.parent / f".{link.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prune_versions(link: Path, name: str) -> None:
    """Drop old versions of a store, keeping the current one and the one before it.

    Called with the store's lock held. Readers that still have files of a pruned version open
    keep reading them (POSIX unlink).
    """
    current = link.resolve().name
    versions = sorted(
        (p for p in link.parent.glob(f".{name}-*") if p.is_dir() and not p.is_symlink() and p.name != current),
        key=lambda p: p.stat().st_mtime,
    )
    for old in versions[: max(0, len(versions) - (KEEP_STORE_VERSIONS - 1))]:
        shutil.rmtree(old, ignore_errors=True)


# -- temporaries ---------------------------------------------------------------------------------


def temporary_sibling(final: Path) -> Path:
    """A name beside `final` that no reader takes for a published output, and that says who wrote it."""
    final = Path(final)
    return final.parent / f".{final.name}.tmp-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale_temporaries(folder: Path, name: str | None = None, now: float | None = None) -> list[Path]:
    """Delete the temporaries in `folder` (of `name` only, if given) whose writer is gone.

    A temporary is stale when it was written on this host by a process that no longer runs, or
    when nothing in it changed for STALE_AFTER_SECONDS. Returns what was deleted.
    """
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = TEMP_NAME.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        path = Path(entry.path)
        try:
            if not _is_stale(path, match, now):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another process cleaned it up first
            continue
        except OSError:
            continue
        removed.append(path)
    return removed


def _is_stale(path: Path, match: re.Match, now: float) -> bool:
    if now - _last_change(path) > STALE_AFTER_SECONDS:
        return True
    if match["host"] is not None and match["host"] != HOST:
        return False
    pid = int(match["pid"])
    return pid != os.getpid() and not pid_running(pid)


def _last_change(path: Path) -> float:
    """The newest modification time of `path` and, for a folder, of anything in it."""
    latest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for child in dirs + files:
                try:
                    latest = max(latest, os.lstat(os.path.join(root, child)).st_mtime)
                except FileNotFoundError:
                    pass
    return latest


def pid_running(pid: int) -> bool:
    """Whether process `pid` exists on this host and is not a zombie (killed, waiting to be reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(pid, 0) is all there is
    return stat[stat.rindex(")") + 2 :].split(" ", 1)[0] not in ("Z", "X")
