"""Running a table model's SQL on Spark: `local[N]` in this process's JVM, or a Spark Connect server.

The upstream Parquet tables are registered as temporary views (a feature group's raw_interactions
without its label columns, as under DuckDB), the SQL is carried to Spark's dialect by
`portability.to_spark_sql`, and Spark writes the result as a folder of part files beside the
output; those are streamed into the one Parquet file the caller publishes (WorkDir.writing_table),
and the folder is removed. Nothing is published if any of it fails.

With Spark Connect the server reads and writes the same paths, so the work dir must be on a
filesystem the cluster shares (NFS, or a mounted object store).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pyarrow.parquet as pq

from kuai_assets import settings
from kuai_assets.storage import temporary_sibling

CONNECT_DEFAULT_PORT = 15002
CONNECT_TIMEOUT_SECONDS = 5.0
LOCAL_URL = re.compile(r"^local\[(?P<n>[1-9][0-9]*|\*)\]$")
CONNECT_URL = re.compile(r"^sc://(?P<host>[^:/;]+)(?::(?P<port>[0-9]+))?/?(?P<params>;.*)?$")


class SparkSettingError(ValueError):
    """The Spark URL is malformed, unreachable, or Spark cannot start here (no Java)."""


@dataclass(frozen=True)
class SparkUrl:
    url: str
    local_threads: int | None = None  # local[N]
    host: str | None = None  # sc://host:port
    port: int | None = None

    @property
    def is_connect(self) -> bool:
        return self.host is not None


def parse_spark_url(url: str) -> SparkUrl:
    url = (url or "").strip()
    local = LOCAL_URL.match(url)
    if local:
        n = local["n"]
        return SparkUrl(url, local_threads=(os.cpu_count() or 1) if n == "*" else int(n))
    connect = CONNECT_URL.match(url)
    if connect:
        return SparkUrl(url, host=connect["host"], port=int(connect["port"] or CONNECT_DEFAULT_PORT))
    raise SparkSettingError(
        f"spark_url {url!r} is neither `local[N]` (Spark in this process, N threads) "
        f"nor a Spark Connect URL `sc://host[:port]` (default port {CONNECT_DEFAULT_PORT})"
    )


def java_problem() -> str | None:
    """Why a local Spark cannot start here (no usable `java`), or None."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        return (
            "Spark local[N] needs Java 17 or later and there is no `java` on PATH"
            + (f" nor at $JAVA_HOME/bin/java ({java_home})" if java_home else "")
            + ": install it (Debian: apt-get install -y openjdk-17-jre-headless) or use a Spark Connect URL"
        )
    try:
        version = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{java} -version failed ({err}); Spark local[N] needs a working Java 17 or later"
    found = re.search(r'version "(\d+)', version)
    if found and int(found[1]) < 17:
        return f"Spark 4 needs Java 17 or later; {java} is Java {found[1]}"
    return None


def check_spark_url(url: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> SparkUrl:
    """Refuse a Spark URL that cannot work, before any work: malformed, unreachable within
    `timeout` seconds (Spark Connect), or no Java (local)."""
    parsed = parse_spark_url(url)
    if parsed.is_connect:
        try:
            with socket.create_connection((parsed.host, parsed.port), timeout=timeout):
                pass
        except socket.timeout:
            raise SparkSettingError(
                f"Spark Connect server {url} is unreachable: no answer from {parsed.host}:{parsed.port} "
                f"within {timeout:g} s"
            ) from None
        except OSError as err:
            raise SparkSettingError(
                f"Spark Connect server {url} is unreachable: {parsed.host}:{parsed.port}: {err.strerror or err}"
            ) from None
    else:
        problem = java_problem()
        if problem:
            raise SparkSettingError(problem)
    return parsed


_sessions: dict[str, object] = {}
_sessions_lock = threading.Lock()


def spark_session(url: str, scratch: Path | None = None, conf: tuple[tuple[str, str], ...] = ()):
    """One SparkSession per URL per process (a local JVM starts once and is reused); `conf` is
    extra Spark settings (key, value), applied when the session is created."""
    with _sessions_lock:
        session = _sessions.get(url)
        if session is not None:
            return session
        parsed = check_spark_url(url)
        from pyspark.sql import SparkSession

        if parsed.is_connect:
            builder = SparkSession.builder.remote(url)
        else:
            threads = parsed.local_threads or 1
            builder = (
                SparkSession.builder.master(url)
                .appName("kuai_assets")
                .config("spark.ui.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                .config("spark.driver.memory", settings.value("KUAI_SPARK_DRIVER_MEMORY") or "2g")
                # small tables on one machine: a few partitions per thread, merged further by AQE
                .config("spark.sql.shuffle.partitions", str(max(4, 4 * threads)))
                .config("spark.sql.session.timeZone", "UTC")
            )
            if scratch is not None:
                scratch.mkdir(parents=True, exist_ok=True)
                builder = builder.config("spark.local.dir", str(scratch))
        for key, value in conf:
            builder = builder.config(key, value)
        session = builder.getOrCreate()
        if not parsed.is_connect:
            session.sparkContext.setLogLevel("ERROR")
        _sessions[url] = session
        return session


def stop_sessions() -> None:
    with _sessions_lock:
        for session in _sessions.values():
            session.stop()
        _sessions.clear()


def run_query(
    spark,
    spark_sql: str,
    tables: dict[str, tuple[Path, Iterable[str]]],
    out: Path,
    log: Callable[[str], None] = lambda message: None,
) -> None:
    """Run `spark_sql` over `tables` (name -> (Parquet path, hidden columns)) into the file `out`."""
    for name, (path, hidden) in tables.items():
        frame = spark.read.parquet(str(path))
        hidden = [c for c in hidden if c in frame.columns]
        if hidden:
            frame = frame.drop(*hidden)
        frame.createOrReplaceTempView(name)
    parts = temporary_sibling(Path(out).with_name(Path(out).name + "-parts"))
    try:
        spark.sql(spark_sql).write.mode("overwrite").option("compression", "zstd").parquet(str(parts))
        files = sorted(p for p in parts.glob("part-*") if p.suffix == ".parquet" or p.name.endswith(".zstd.parquet"))
        if not files:
            raise RuntimeError(f"Spark wrote no part files to {parts}")
        log(f"spark: {len(files)} part file(s) written; merging into one Parquet file")
        merge_parquet(files, Path(out))
    finally:
        shutil.rmtree(parts, ignore_errors=True)


def merge_parquet(files: list[Path], out: Path) -> int:
    """Stream Parquet files with one schema into one file, row group by row group."""
    schema = pq.read_schema(files[0]).remove_metadata()
    rows = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for path in files:
            part = pq.ParquetFile(path)
            if part.schema_arrow.remove_metadata() != schema:
                raise RuntimeError(f"{path}: part file schema differs from {files[0]}")
            for group in range(part.num_row_groups):
                table = part.read_row_group(group).replace_schema_metadata(None)
                writer.write_table(table)
                rows += table.num_rows
    return rows
