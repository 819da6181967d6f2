"""Times every SQL table model on DuckDB and on Spark over one dataset and prints the ratio.

    python benchmarks/spark_vs_duckdb.py --size tiny                    # generate, then time
    python benchmarks/spark_vs_duckdb.py --data /data/kuai --work /tmp/w --spark-url local[2]
    python benchmarks/spark_vs_duckdb.py --size tiny --conf spark.sql.shuffle.partitions=2
    python benchmarks/spark_vs_duckdb.py --data /data/kuai --only visual_similarity   # and what it reads

The raw and visual tables are materialized once (DuckDB, as always); then each table model runs
on DuckDB (a group's numpy fast path where it has one, as `kuai run` does) into one work dir and
its SQL on Spark into another, in dependency order, one after the other. Printed per model: rows,
seconds on each engine, Spark / DuckDB; then the Spark session's start-up, the totals, the CPU
seconds of this process and of the Spark JVM (the share of the machine the run really had: on a
shared host the wall times move with the neighbours' load), and the load average. Every Spark
table is checked to have the DuckDB table's rows.

A benchmark, not a test: run by hand; figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a dataset in the released layout (default: generate --size)")
    parser.add_argument("--size", default="tiny", help="synthetic size generated when --data is absent")
    parser.add_argument("--work", type=Path, help="work dir (default: a temporary folder, removed)")
    parser.add_argument("--spark-url", default="local[2]")
    parser.add_argument("--conf", action="append", default=[], help="extra Spark setting key=value (repeatable)")
    parser.add_argument(
        "--only", default="",
        help="comma-separated table models to time, with the catalog models they read (always model_rows and "
        "label_history) timed before them; default: every SQL table model",
    )
    parser.add_argument(
        "--drop-store", action="store_true",
        help="delete the vector store once the PCA and cluster tables are written (the table models read "
        "those tables, never the store): for a disk that cannot hold the store and both engines' tables",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    import dagster as dg
    import psutil
    import pyarrow.parquet as pq

    from kuai_assets.defs import raw, visual
    from kuai_assets.defs.engine import EngineResource
    from kuai_assets.defs.resources import TrackingResource, WorkspaceResource
    from kuai_assets.engines import Engine
    from kuai_assets.engines.spark import spark_session
    from kuai_assets.features.catalog import SOURCE_TABLES, load_catalog
    from kuai_assets.features.runner import materialize_table_model
    from kuai_assets.storage import WorkDir

    conf = tuple(tuple(c.split("=", 1)) for c in args.conf)
    if any(len(c) != 2 for c in conf):
        parser.error("--conf takes key=value")
    spark = Engine("spark", args.spark_url, conf).check()
    temporary = None if args.work else tempfile.TemporaryDirectory(prefix="spark_vs_duckdb-")
    root = args.work or Path(temporary.name)
    data = args.data
    if data is None:
        from kuai_assets.synth import generate, get_size

        data = root / "data" / args.size
        if not data.exists():
            generate(data, get_size(args.size))
    upstream = root / "upstream"
    started = time.time()
    dg.materialize(
        dg.load_assets_from_modules([raw, visual]),
        resources={
            "workspace": WorkspaceResource(data_dir=str(data), work_dir=str(upstream)),
            "tracking": TrackingResource(tracking_uri=f"sqlite:///{upstream}/mlflow.db", artifact_root=str(upstream / "a")),
            "engine": EngineResource(),
        },
    )
    print(f"raw and visual tables: {time.time() - started:.1f} s ({data})")
    if args.drop_store:
        store = WorkDir(upstream).store_path("video_embeddings")  # a link to the current version
        shutil.rmtree(store.resolve())
        store.unlink()

    catalog = load_catalog()
    order = ["model_rows", "label_history"] + sorted(n for n, m in catalog.items() if m.is_feature_group and m.sql)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in catalog or not catalog[n].sql]
        if unknown:
            parser.error(f"--only: no SQL table model named {', '.join(unknown)}")
        needed, todo = set(), list(wanted)
        while todo:  # the models named and every catalog model upstream of them
            name = todo.pop()
            if name not in needed:
                needed.add(name)
                todo += [u for u in catalog[name].upstream if u in catalog]
        order = [n for n in order if n in needed] + sorted(needed - set(order))
    works = {}
    for name in ("duckdb", "spark"):
        work = WorkDir(root / name)
        work.tables.mkdir(parents=True, exist_ok=True)
        for table in SOURCE_TABLES:
            target = work.table_path(table)
            if not target.exists():
                os.link(upstream / "tables" / f"{table}.parquet", target)
        works[name] = work

    started = time.time()
    spark_session(spark.spark_url, works["spark"].root / "spark_tmp", spark.spark_conf).sql("select 1").collect()
    startup = time.time() - started

    print(f"{'table model':<24}{'rows':>12}{'duckdb s':>10}{'spark s':>10}{'ratio':>8}  duckdb ran")
    totals = {"duckdb": 0.0, "spark": 0.0}
    for model_name in order:
        model = catalog[model_name]
        seconds, rows, ran = {}, {}, ""
        for name, engine in (("duckdb", Engine()), ("spark", spark)):
            t0 = time.time()
            result = materialize_table_model(model, works[name], engine=engine)
            seconds[name] = time.time() - t0
            rows[name] = pq.ParquetFile(works[name].table_path(model_name)).metadata.num_rows
            totals[name] += seconds[name]
            ran = result.definition if name == "duckdb" else ran
        if rows["duckdb"] != rows["spark"]:
            raise SystemExit(f"{model_name}: DuckDB wrote {rows['duckdb']} rows, Spark {rows['spark']}")
        print(
            f"{model_name:<24}{rows['duckdb']:>12,}{seconds['duckdb']:>10.2f}{seconds['spark']:>10.2f}"
            f"{seconds['spark'] / max(seconds['duckdb'], 1e-3):>8.1f}  {ran}"
        )
    print(
        f"{'total':<24}{'':>12}{totals['duckdb']:>10.2f}{totals['spark']:>10.2f}"
        f"{totals['spark'] / max(totals['duckdb'], 1e-3):>8.1f}"
    )
    me = psutil.Process()
    jvm = [c for c in me.children(recursive=True) if "java" in (c.name() or "")]
    jvm_cpu = sum(sum(c.cpu_times()[:2]) for c in jvm)
    print(
        f"Spark session start-up {startup:.1f} s ({args.spark_url}); CPU seconds: this process "
        f"{sum(me.cpu_times()[:2]):.1f}, Spark JVM {jvm_cpu:.1f}; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
