"""Benchmarks at the challenge's sizes: `python -m benchmarks.scale --scale preliminary` (from the repo root).

For the chosen scale it generates the synthetic dataset (or reuses `--data`), measures the disk's
sequential read speed, then materializes every asset one at a time, each in a fresh process, and
prints per asset: wall time, rows or vectors per second, and peak memory (the step process's
maximum resident set). For the visual stage it compares throughput with the disk's read speed
for the same bytes (every byte of the released vectors, read in the same run just before),
prints what the disk reads while it writes half as much beside it, as the pass does, and the
step's CPU time (with the share the machine's host took meanwhile); `--visual-without-store`
times the same pass again without writing the store. Together they show what bounds the stage.
In the same run it times a straightforward pandas implementation of the first stages (reading
the interactions; per-user and per-cluster click statistics) and prints the ratio. With
`--one-run` the selection is instead materialized as one Dagster run on the project's own
executor (two steps at a time, as `kuai run` and `dagster asset materialize` run them): it prints
the run's wall time, each step's time and the peak memory of all step processes together.
Results go to stdout and to `<work>/bench_results.json`. `--clean` deletes what the benchmark
generated.

Benchmarks are not tests: they are run by hand and their figures are recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kuai_assets import settings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SCALES = ("tiny", "demo", "preliminary", "final")
VISUAL_ASSETS = ("video_embeddings", "pca_visual_features", "video_clusters")


@dataclass
class ChildRun:
    code: int  # exit code
    seconds: float  # wall time
    peak_mb: float  # the child's maximum resident set
    cpu_seconds: float  # its CPU time, user + system
    stolen_share: float | None  # of the machine's CPU time meanwhile, what its host took (steal)
    output: str  # what it printed ("" when it printed to our stdout)


def _run_child(argv: list[str], env: dict[str, str], output_file: Path | None = None) -> ChildRun:
    """Run a child process to its end (its output to `output_file`, else to ours) and measure it."""
    with open(output_file, "w") if output_file else nullcontext() as log:
        started, cpus_before = time.time(), machine_cpu_times()
        process = subprocess.Popen(argv, env=env, cwd=settings.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT if log else None)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.time() - started
    return ChildRun(
        os.waitstatus_to_exitcode(status),
        seconds,
        usage.ru_maxrss / 1024.0,
        usage.ru_utime + usage.ru_stime,
        stolen_share(cpus_before, machine_cpu_times()),
        output_file.read_text() if output_file else "",
    )


def _marked(output: str, mark: str):
    """The JSON a child printed on its last line starting with `mark` (e.g. "BENCH_METADATA "), or None."""
    lines = [line for line in output.splitlines() if line.startswith(mark)]
    return json.loads(lines[-1][len(mark) :]) if lines else None


def evict_from_page_cache(path: Path) -> None:
    """Drop a file's cached pages so the next read comes from disk (clean pages only)."""
    os.sync()  # dirty pages cannot be dropped until written
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in paths:
        with open(p, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def disk_read_speed(paths: Path | list[Path], limit_bytes: int | None = 4 << 30) -> float:
    """Sequential read speed of `paths`, one after the other, from disk (page cache evicted
    first), MB/s: over their first `limit_bytes`, or (None) over every byte."""
    paths = [paths] if isinstance(paths, Path) else paths
    buffer = bytearray(16 << 20)
    view = memoryview(buffer)
    done = 0
    for path in paths:
        evict_from_page_cache(path)
    started = time.time()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while limit_bytes is None or done < limit_bytes:
                n = f.readinto(view)
                if not n:
                    break
                done += n
        evict_from_page_cache(path)  # what the visual stage then reads comes from disk again
    return done / 1e6 / max(time.time() - started, 1e-9)


def disk_read_while_writing(path: Path, scratch: Path, read_bytes: int = 16 << 30) -> tuple[float, float]:
    """(read, write) MB/s of the visual pass's disk traffic alone, without its CPU work: `path`
    read in 64 MB blocks on the reader's threads while half as many bytes are written beside it
    to a scratch file by the store's own writer (visual.store.BackgroundFile)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from kuai_assets.formats.visual_zip import BLOCK_BYTES, READ_AHEAD
    from kuai_assets.visual.store import BackgroundFile

    evict_from_page_cache(path)
    blocks = min(read_bytes, path.stat().st_size) // BLOCK_BYTES
    buffers = [bytearray(BLOCK_BYTES) for _ in range(READ_AHEAD)]
    payload = np.zeros(BLOCK_BYTES // 2, dtype=np.uint8)
    target = scratch / ".bench_disk_mix.tmp"
    fd = os.open(path, os.O_RDONLY)
    store = None

    def read(k: int) -> int:
        return os.preadv(fd, [buffers[k % READ_AHEAD]], k * BLOCK_BYTES)

    try:
        store = BackgroundFile(target)
        with ThreadPoolExecutor(READ_AHEAD) as readers:
            started = time.time()
            reading = [readers.submit(read, k) for k in range(min(READ_AHEAD, blocks))]
            for k in range(blocks):
                reading.pop(0).result()
                if k + READ_AHEAD < blocks:
                    reading.append(readers.submit(read, k + READ_AHEAD))
                store.write(payload)
            store.close()
            with open(target, "rb") as written:
                os.fsync(written.fileno())  # what the writer left in the page cache, on disk too
            seconds = max(time.time() - started, 1e-9)
    finally:
        os.close(fd)
        if store is not None:
            store.close()  # again after a failure: the writer's thread and file are let go
        target.unlink(missing_ok=True)
        evict_from_page_cache(path)
    return blocks * BLOCK_BYTES / 1e6 / seconds, store.written / 1e6 / seconds


def visual_files(data: Path) -> list[Path]:
    """The released visual vectors' files: the zips, or every file of the unzipped folders."""
    from kuai_assets.formats import layout

    files = []
    for split in layout.SPLITS:
        source = layout.find_visual_source(data, split)
        files += [source.path] if source.kind == "zip" else sorted(p for p in source.path.iterdir() if p.is_file())
    return files


def visual_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in visual_files(data))


# -- one asset in a fresh process ------------------------------------------------------------


def materialize_one(step: str, run_config: dict, with_checks: bool = False) -> int:
    """Materialize one step, `op:key,key`: the selected assets of one op (a multi-asset's run together)."""
    import dagster as dg

    from kuai_assets.definitions import defs

    op, _, names = step.rpartition(":")
    keys = [dg.AssetKey(n) for n in names.split(",")]
    assets = [a for a in defs.assets if set(keys) & set(a.keys)]
    if with_checks:  # the asset's checks run after it, in the same run, as in `kuai run`
        assets += [c for c in defs.asset_checks if any(k.asset_key in keys for k in c.check_keys)]
    result = dg.materialize(
        assets,
        selection=keys,
        resources=defs.resources,
        run_config={"ops": {op or names: run_config}} if run_config else None,
        raise_on_error=False,
    )
    if not result.success:
        return 1
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    if failed:
        names = ", ".join(f"{e.check_name} ({e.severity.value})" for e in failed)
        print(f"[bench] {step}: check(s) failed: {names}", flush=True)
        if any(e.severity == dg.AssetCheckSeverity.ERROR for e in failed):
            return 1
    metadata = {}
    for event in reversed(result.get_asset_materialization_events()):  # the first asset's figures win
        metadata.update({k: v.value for k, v in event.materialization.metadata.items()})
    keep = {k: v for k, v in metadata.items() if isinstance(v, (int, float, str)) and len(str(v)) < 200}
    print("BENCH_METADATA " + json.dumps(keep), flush=True)
    return 0


SELECTION_ENV = "KUAI_BENCH_SELECTION"
WITH_CHECKS_ENV = "KUAI_BENCH_WITH_CHECKS"


def selection_job():
    """The assets named in $KUAI_BENCH_SELECTION (and their checks if $KUAI_BENCH_WITH_CHECKS is
    1) as one job on the project's own executor: steps in parallel processes, two at a time,
    LightGBM steps one at a time. Module-level, so Dagster can rebuild it in each step process."""
    import dagster as dg

    from kuai_assets.definitions import EXECUTOR, defs

    keys = [dg.AssetKey(name) for name in os.environ[SELECTION_ENV].split(",")]
    selection = dg.AssetSelection.assets(*keys)
    if os.environ.get(WITH_CHECKS_ENV) != "1":
        selection = selection - dg.AssetSelection.all_asset_checks()
    bench = dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        resources=defs.resources,
        executor=EXECUTOR,
        jobs=[dg.define_asset_job("bench_selection", selection)],
    )
    return bench.resolve_job_def("bench_selection")


def materialize_as_one_run(home: Path, run_config: dict) -> int:
    """Run selection_job in the Dagster instance at `home`; print each step's start and end."""
    import dagster as dg

    from kuai_assets.cli import initialize_dagster_home

    initialize_dagster_home(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.execute_job(
            dg.reconstructable(selection_job), instance=instance, run_config={"ops": run_config} if run_config else None
        )
        steps = {
            s.step_key: {"start": s.start_time, "end": s.end_time, "ok": s.status is not None and s.status.value == "SUCCESS"}
            for s in instance.get_run_step_stats(result.run_id)
        }
    print("BENCH_STEPS " + json.dumps(steps), flush=True)
    return 0 if result.success else 1


class TreeMemory:
    """Peak of the summed resident memory of a process and all its descendants, sampled on a
    thread (steps running side by side add up; one process's ru_maxrss would not show that)."""

    def __init__(self, pid: int, every: float = 0.5):
        import threading

        import psutil

        self.peak_bytes = 0
        self._root = psutil.Process(pid)
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                processes = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                return
            total = 0
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self._every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_bytes / 2**20


def run_as_one_run(
    selected: list[str], run_config: dict, env: dict[str, str], work: Path, results: dict, with_checks: bool = False
) -> int:
    """The selection as one Dagster run (what `dagster asset materialize --select ...` does):
    wall time, each step's own time, and the peak memory of all steps together."""
    argv = [sys.executable, "-m", "benchmarks.scale", "--one-run-child", str(work / "dagster_home"),
            "--run-config", json.dumps(run_config)]
    output_file = work / ".bench_one_run.log"
    with open(output_file, "w") as log:
        started = time.time()
        child_env = {**env, SELECTION_ENV: ",".join(selected), WITH_CHECKS_ENV: "1" if with_checks else "0"}
        process = subprocess.Popen(argv, env=child_env, cwd=settings.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        memory = TreeMemory(process.pid)
        code = process.wait()
        seconds = time.time() - started
        peak_mb = memory.stop()
    steps = _marked(output_file.read_text(), "BENCH_STEPS ") or {}
    rows = [
        {"step": key, "seconds": round(s["end"] - s["start"], 1) if s["start"] and s["end"] else None, "ok": s["ok"]}
        for key, s in sorted(steps.items(), key=lambda item: item[1]["start"] or 0)
    ]
    results["one_run"] = {"assets": selected, "seconds": round(seconds, 1), "peak_mb": round(peak_mb), "ok": code == 0, "steps": rows}
    for row in rows:
        print(f"[bench]   {row['step']:28s} {row['seconds'] or 0:8.1f}s" + ("" if row["ok"] else "  FAILED"), flush=True)
    print(
        f"[bench] as one Dagster run ({len(rows)} steps, two at a time): {seconds / 60:.1f} min, "
        f"peak {peak_mb:,.0f} MB of all step processes together"
        + ("" if code == 0 else f"  FAILED (see {output_file})"),
        flush=True,
    )
    return code


def steps_of(selected: list[str]) -> list[tuple[str, list[str], str]]:
    """(step name, its assets, its op) in dependency order: the assets of one multi-asset (the
    visual stage) form one step, run together as `kuai run` runs them."""
    from kuai_assets.definitions import defs

    steps: list[tuple[str, list[str], str]] = []
    placed: set[str] = set()
    for name in selected:
        if name in placed:
            continue
        node = next(a for a in defs.assets if any(k.to_user_string() == name for k in a.keys))
        together = [n for n in selected if any(k.to_user_string() == n for k in node.keys)]
        placed.update(together)
        steps.append((node.node_def.name if len(together) > 1 else name, together, node.node_def.name))
    return steps


def pandas_first_stages(data: Path, work: Path) -> dict:
    """The straightforward pandas version of reading the interactions and the label statistics."""
    import pandas as pd

    from kuai_assets.formats import layout

    out = {}
    started = time.time()
    train = pd.read_csv(
        layout.interaction_file(data, "train"), sep="\t", header=None, names=list(layout.TRAIN_INTERACTION_COLUMNS)
    )
    test = pd.read_csv(
        layout.interaction_file(data, "test"), sep="\t", header=None, names=list(layout.TEST_INTERACTION_COLUMNS)
    )
    out["read_interactions_seconds"] = time.time() - started
    started = time.time()
    per_user = train.groupby("user_id").agg(
        impressions=("click", "size"), clicks=("click", "sum"), likes=("like", "sum"), playing=("playing_time", "sum")
    )
    per_user["click_rate"] = (per_user["clicks"] + 20 * train["click"].mean()) / (per_user["impressions"] + 20)
    out["user_stats_seconds"] = time.time() - started
    started = time.time()
    clusters = pd.read_parquet(work / "tables" / "video_clusters.parquet")
    joined = train[["user_id", "photo_id", "click"]].merge(clusters, on="photo_id")
    per_cluster = joined.groupby(["k", "cluster"])["click"].agg(["size", "sum"])
    per_user_cluster = joined.groupby(["user_id", "k", "cluster"])["click"].agg(["size", "sum"])
    out["cluster_stats_seconds"] = time.time() - started
    out["rows"] = len(train) + len(test)
    out["groups"] = len(per_user) + len(per_cluster) + len(per_user_cluster)
    return out


# -- the benchmark ---------------------------------------------------------------------------


def _env(data: Path, work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KUAI_DATA_DIR=str(data),
        KUAI_WORK_DIR=str(work),
        MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow/mlflow.db",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    return env


def run_benchmark(args: argparse.Namespace) -> int:
    bench_root = Path(args.root or settings.default_work_dir() / "bench") / args.scale
    data = Path(args.data) if args.data else bench_root / "data"
    work = Path(args.work) if args.work else bench_root / "work"
    results: dict = {"scale": args.scale, "data": str(data), "work": str(work), "machine": _machine(), "assets": []}
    print(f"[bench] scale {args.scale}: data {data}, work {work}", flush=True)

    if not data.exists():
        argv = [sys.executable, "-m", "kuai_assets.synth", "--size", args.scale, "--out", str(data)]
        if args.vector_dim:
            argv += ["--vector-dim", str(args.vector_dim)]
        data.parent.mkdir(parents=True, exist_ok=True)
        generated = _run_child(argv, dict(os.environ))
        if generated.code:
            print("[bench] generation failed", file=sys.stderr)
            return generated.code
        results["generate"] = {"seconds": round(generated.seconds, 1), "peak_mb": round(generated.peak_mb)}
        print(f"[bench] generated in {generated.seconds:.0f}s, peak {generated.peak_mb:,.0f} MB", flush=True)
    summary_file = data / "ground_truth" / "summary.json"
    if summary_file.exists():
        results["dataset"] = json.loads(summary_file.read_text()).get("counts")

    from kuai_assets.formats import layout

    try:
        zip_bytes = visual_bytes(data)
        largest = layout.find_visual_source(data, "train").path
    except FileNotFoundError:
        # the released vectors were deleted after consolidation to save disk: the visual assets
        # cannot be rerun, but everything from the consolidated store on can
        print("[bench] no released visual vectors in the data folder: skipping the visual-stage ratios", flush=True)
        zip_bytes, largest = 0, layout.interaction_file(data, "train")
    if not largest.is_file():
        largest = layout.interaction_file(data, "train")
    speed = disk_read_speed(largest)
    results["disk_read_mb_per_s"] = round(speed, 1)
    measured = min(largest.stat().st_size, 4 << 30) / 1e9
    print(f"[bench] sequential disk read: {speed:,.0f} MB/s (the first {measured:.1f} GB of {largest.name})", flush=True)
    if zip_bytes and (not args.assets or set(args.assets.split(",")) & set(VISUAL_ASSETS)):
        # the visual stage's target is against the disk's speed for the same bytes: all of them,
        # read in the same run (on the development disk the first 4 GB alone read 10-25% slower)
        results["disk_read_mb_per_s_first_4gb"] = results["disk_read_mb_per_s"]
        speed = disk_read_speed(visual_files(data), limit_bytes=None)
        results["disk_read_mb_per_s"] = round(speed, 1)
        print(f"[bench] sequential disk read of every released vector byte ({zip_bytes / 1e9:.1f} GB): {speed:,.0f} MB/s", flush=True)
        if layout.find_visual_source(data, "train").kind == "zip":
            # what bounds the stage when the disk is the bound: its reads while the store is written
            read_speed, write_speed = disk_read_while_writing(largest, work if work.exists() else data)
            results["disk_read_while_writing_mb_per_s"] = {"read": round(read_speed, 1), "write": round(write_speed, 1)}
            print(
                f"[bench] disk reading while writing half as much (the visual pass's traffic, no CPU work): "
                f"read {read_speed:,.0f} MB/s + write {write_speed:,.0f} MB/s",
                flush=True,
            )

    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    env = _env(data, work)
    from kuai_assets.definitions import defs

    order = [k.to_user_string() for k in defs.resolve_asset_graph().toposorted_asset_keys]
    selected = [a for a in order if not args.assets or a in args.assets.split(",")]
    run_config = json.loads(args.run_config) if args.run_config else {}
    total = 0.0
    if args.one_run:
        evict_from_page_cache(data)
        code = run_as_one_run(selected, run_config, env, work, results, args.with_checks)
        if code:
            results["failed"] = "one run"
        _print_raw_and_tables(results)
        (work / "bench_results.json").write_text(json.dumps(results, indent=2))
        print(f"[bench] results: {work / 'bench_results.json'}", flush=True)
        if args.clean:
            _clean(args, data, work)
        return code
    for asset, members, op in steps_of(selected):
        if set(members) & set(VISUAL_ASSETS) or asset == "raw_interactions":
            evict_from_page_cache(data)  # read the released files from disk, not from memory
        if "pca_visual_features" in members and "video_embeddings" not in members and (work / "stores" / "video_embeddings").exists():
            evict_from_page_cache((work / "stores" / "video_embeddings").resolve())  # the store, likewise
        one = f"{op}:{','.join(members)}"
        step_config = run_config.get(op, run_config.get(asset, {}))
        argv = [sys.executable, "-m", "benchmarks.scale", "--one", one, "--run-config", json.dumps(step_config)]
        if args.with_checks:
            argv.append("--with-checks")
        output_file = work / f".bench_{asset}.log"
        step = _run_child(argv, env, output_file)
        code, seconds, steal = step.code, step.seconds, step.stolen_share
        metadata = _marked(step.output, "BENCH_METADATA ") or {}
        row = {
            "asset": asset,
            "seconds": round(seconds, 1),
            "peak_mb": round(step.peak_mb),
            # the step's CPU time (user + system): over `seconds`, how many cores it kept busy
            "cpu_seconds": round(step.cpu_seconds, 1),
            "cpu_stolen_share": steal,  # of the machine's CPU time meanwhile, what its host took (steal)
            "rows": metadata.get("dagster/row_count") or metadata.get("vectors"),
            "ok": code == 0,
        }
        if members != [asset]:
            row["assets"] = members
        if isinstance(metadata.get("seconds"), (int, float)):
            row["compute_seconds"] = metadata["seconds"]  # inside the asset, without process start-up
        if row["rows"]:
            row["rows_per_second"] = round(row["rows"] / max(seconds, 1e-9))
        for key in ("valid_auc", "test_auc", "oracle_auc", "oracle_gap_closure", "baseline_test_auc", "all_groups_valid_auc"):
            if key in metadata:
                row[key] = metadata[key]
        if "video_embeddings" in members and zip_bytes:
            row["mb_per_s_of_released_bytes"] = round(zip_bytes / 1e6 / seconds, 1)
            row["vs_disk_read_speed"] = round(zip_bytes / 1e6 / seconds / speed, 2)
        elif "pca_visual_features" in members:
            store = (work / "stores" / "video_embeddings").resolve() / "vectors.npy"
            row["mb_per_s_of_store_bytes"] = round(store.stat().st_size / 1e6 / seconds, 1)
            row["vs_disk_read_speed"] = round(store.stat().st_size / 1e6 / seconds / speed, 2)
        results["assets"].append(row)
        total += seconds
        print(
            f"[bench] {asset:28s} {seconds:8.1f}s  peak {row['peak_mb']:7,d} MB"
            + (f"  {row['rows']:>12,} rows  {row.get('rows_per_second', 0):>12,}/s" if row["rows"] else "")
            + (f"  {row['vs_disk_read_speed']}x disk" if "vs_disk_read_speed" in row else "")
            + (f"  CPU {row['cpu_seconds']:,.0f} s ({row['cpu_seconds'] / max(seconds, 1e-9):.2f} cores busy"
               + (f", the host took {steal:.0%} of the CPUs" if steal else "") + ")" if set(members) & set(VISUAL_ASSETS) else "")
            + ("" if code == 0 else f"  FAILED (see {output_file})"),
            flush=True,
        )
        if code:
            results["failed"] = asset
            break
    results["total_seconds"] = round(total, 1)
    results["peak_mb"] = max((r["peak_mb"] for r in results["assets"]), default=0)
    visual = [r for r in results["assets"] if set(r.get("assets", [r["asset"]])) & set(VISUAL_ASSETS)]
    covered = {a for r in visual for a in r.get("assets", [r["asset"]])}
    if covered == set(VISUAL_ASSETS) and zip_bytes:
        seconds = sum(r["seconds"] for r in visual)
        results["visual_stage"] = {
            "seconds": round(seconds, 1),
            "released_bytes_gb": round(zip_bytes / 1e9, 2),
            "mb_per_s": round(zip_bytes / 1e6 / seconds, 1),
            "vs_disk_read_speed": round(zip_bytes / 1e6 / seconds / speed, 2),
        }
        if args.visual_without_store and "failed" not in results:
            results["visual_pass_without_store"] = _visual_pass_without_store(data, work, env, run_config, zip_bytes, speed)
    print(f"[bench] all assets: {total / 60:.1f} min, highest step peak {results['peak_mb']:,} MB", flush=True)
    _print_raw_and_tables(results)

    if not args.skip_pandas and (work / "tables" / "video_clusters.parquet").exists():
        argv = [sys.executable, "-m", "benchmarks.scale", "--pandas", "--data", str(data), "--work", str(work)]
        output_file = work / ".bench_pandas.log"
        pandas_run = _run_child(argv, env, output_file)
        figures = _marked(pandas_run.output, "BENCH_PANDAS ")
        if figures:
            pandas_seconds = figures["read_interactions_seconds"] + figures["user_stats_seconds"] + figures["cluster_stats_seconds"]
            by_asset = {r["asset"]: r.get("compute_seconds", r["seconds"]) for r in results["assets"]}
            stages = ("raw_interactions", "model_rows", "label_history", "user_behaviour", "user_cluster_affinity", "cluster_stats")
            ours = sum(by_asset.get(a, 0) for a in stages)
            not_run = [a for a in stages if a not in by_asset]
            results["pandas"] = {
                **{k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()},
                "seconds": round(pandas_seconds, 1),
                "peak_mb": round(pandas_run.peak_mb),
                "platform_seconds_same_stages": round(ours, 1),
                "speedup": round(pandas_seconds / ours, 2) if ours and not not_run else None,
                "platform_stages_not_run": not_run,
            }
            print(
                f"[bench] pandas first stages: {pandas_seconds:.1f}s, peak {results['pandas']['peak_mb']:,} MB "
                f"(read {figures['read_interactions_seconds']:.1f}s, user stats {figures['user_stats_seconds']:.1f}s, "
                f"cluster stats {figures['cluster_stats_seconds']:.1f}s); the platform's raw_interactions + model_rows + "
                f"label_history + user_behaviour + user_cluster_affinity + cluster_stats: {ours:.1f}s "
                f"(out of fold, validated, both setups) -> "
                + (f"ratio {results['pandas']['speedup']}x" if not not_run else f"no ratio: {not_run} not run in this benchmark"),
                flush=True,
            )
        else:
            print(f"[bench] pandas comparison failed (see {output_file})", flush=True)

    (work / "bench_results.json").write_text(json.dumps(results, indent=2))
    print(f"[bench] results: {work / 'bench_results.json'}", flush=True)
    if args.clean:
        _clean(args, data, work)
    return 1 if "failed" in results else 0


def machine_cpu_times() -> tuple[int, int]:
    """(stolen, all) CPU time of the whole machine so far, in clock ticks (/proc/stat's cpu line)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return 0, 0
    return fields[7], sum(fields)


def stolen_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Of the machine's CPU time between two readings, the share its host took for others (steal)."""
    elapsed = after[1] - before[1]
    return round((after[0] - before[0]) / elapsed, 3) if elapsed > 0 else None


def visual_pass_without_store(data: Path, work: Path, step_config: dict) -> dict:
    """In this process: the visual stage's pass with its settings, making the PCA and the clusters
    but no store (tables written to a scratch folder, then deleted)."""
    from kuai_assets.defs.visual import VisualConfig
    from kuai_assets.formats import layout
    from kuai_assets.visual.sources import Released
    from kuai_assets.visual.stage import VisualStage

    settings = VisualConfig(**step_config.get("config", {})).settings()
    sources = {split: layout.find_visual_source_checked(data, split) for split in layout.SPLITS}
    out = work / ".bench_visual_pass"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        started = time.time()
        VisualStage(settings).run(Released(sources), pca_out=out / "pca.parquet", clusters_out=out / "clusters.parquet")
        return {"seconds": round(time.time() - started, 1)}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _visual_pass_without_store(data: Path, work: Path, env: dict, run_config: dict, zip_bytes: int, speed: float) -> dict:
    """The visual stage's own work without the store's 20 GB of writes, timed in a child process:
    with the stage's figure and the disk's, it shows what bounds the stage (the CPU or the disk)."""
    evict_from_page_cache(data)
    argv = [sys.executable, "-m", "benchmarks.scale", "--visual-pass-child", "--data", str(data), "--work", str(work),
            "--run-config", json.dumps(run_config.get("visual_stage", {}))]
    output_file = work / ".bench_visual_pass.log"
    child = _run_child(argv, env, output_file)
    if child.code:
        print(f"[bench] the visual pass without the store failed (see {output_file})", flush=True)
        return {"ok": False}
    seconds, cpu, steal = child.seconds, child.cpu_seconds, child.stolen_share
    figures = {
        "seconds": round(seconds, 1),
        "in_process_seconds": (_marked(child.output, "BENCH_VISUAL_PASS ") or {}).get("seconds"),
        "mb_per_s": round(zip_bytes / 1e6 / seconds, 1),
        "vs_disk_read_speed": round(zip_bytes / 1e6 / seconds / speed, 2),
        "cpu_seconds": round(cpu, 1),
        "cpu_stolen_share": steal,
        "peak_mb": round(child.peak_mb),
    }
    print(
        f"[bench] the visual pass without writing the store (PCA and clusters only, one process, no Dagster): "
        f"{seconds:.1f}s ({figures['in_process_seconds']}s after start-up) = {figures['mb_per_s']:,.0f} MB/s of released "
        f"bytes ({figures['vs_disk_read_speed']}x disk); "
        f"CPU {cpu:,.0f} s ({cpu / max(seconds, 1e-9):.2f} of {os.cpu_count()} cores busy"
        + (f", the host took {steal:.0%} of the CPUs" if steal else "") + ")",
        flush=True,
    )
    return figures


def _clean(args: argparse.Namespace, data: Path, work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    if not args.data:
        shutil.rmtree(data, ignore_errors=True)
    print("[bench] cleaned up what the benchmark generated", flush=True)


def _print_raw_and_tables(results: dict) -> None:
    """The final-scale target's sum: the raw tables and every table model (the SQL files and the
    numpy feature groups) but visual_similarity, which belongs to the visual stage."""
    from kuai_assets.features.catalog import load_catalog

    steps = ["raw_interactions", "raw_faces", "raw_text"] + sorted(n for n in load_catalog() if n != "visual_similarity")
    one_run = results.get("one_run")
    if one_run is not None:
        extra = sorted(set(one_run["assets"]) - set(steps))
        missing = sorted(set(steps) - set(one_run["assets"]))
        if not extra and not missing and one_run["ok"]:
            results["raw_and_table_models"] = {"seconds": one_run["seconds"], "steps": len(steps), "as_one_run": True}
            print(f"[bench] raw + every table model but visual_similarity, as one Dagster run: {one_run['seconds'] / 60:.1f} min", flush=True)
        else:
            print(f"[bench] (the one run is not exactly raw + every table model but visual_similarity: "
                  f"also {extra or 'nothing'}, without {missing or 'nothing'})", flush=True)
        return
    seconds = {r["asset"]: r["seconds"] for r in results["assets"]}
    missing = [s for s in steps if s not in seconds]
    total = sum(seconds.get(s, 0.0) for s in steps)
    results["raw_and_table_models"] = {"seconds": round(total, 1), "steps": len(steps) - len(missing), "not_run": missing}
    print(
        f"[bench] raw + every table model but visual_similarity: {total / 60:.1f} min over "
        f"{len(steps) - len(missing)} steps" + (f" (INCOMPLETE, not run: {', '.join(missing)})" if missing else ""),
        flush=True,
    )


def _machine() -> dict:
    import psutil

    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="demo")
    parser.add_argument("--data", help="an existing dataset to use (default: generate one under --root)")
    parser.add_argument("--work", help="work dir (default: <root>/<scale>/work)")
    parser.add_argument("--root", help="where generated data and work dirs go (default: .kuai/bench)")
    parser.add_argument("--vector-dim", type=int, help="generate vectors of this length (e.g. 64 for --scale final)")
    parser.add_argument("--assets", help="comma-separated assets to run (default: all, in dependency order)")
    parser.add_argument(
        "--run-config",
        help='JSON: {"step": {"config": {...}}} passed to those steps (an asset, or visual_stage for the visual assets)',
    )
    parser.add_argument("--fresh", action="store_true", help="start from an empty work dir")
    parser.add_argument("--skip-pandas", action="store_true", help="skip the pandas comparison")
    parser.add_argument("--clean", action="store_true", help="delete generated data and the work dir at the end")
    parser.add_argument(
        "--with-checks", action="store_true",
        help="run each asset's checks after it, in its step (as `kuai run` does); a failed ERROR check fails the step",
    )
    parser.add_argument(
        "--one-run", action="store_true",
        help="materialize the selection as one Dagster run on the project's executor (steps two at a time, as "
        "`dagster asset materialize --select ...` runs them) instead of one step at a time; prints the run's wall "
        "time, each step's time and the peak memory of all steps together",
    )
    parser.add_argument(
        "--visual-without-store", action="store_true",
        help="after the visual stage, time its pass again without writing the store (PCA and clusters only), with "
        "its CPU time: what the stage's own work costs, apart from the store's writes",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--visual-pass-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one-run-child", help=argparse.SUPPRESS)
    parser.add_argument("--pandas", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return materialize_one(args.one, json.loads(args.run_config) if args.run_config else {}, args.with_checks)
    if args.one_run_child:
        return materialize_as_one_run(Path(args.one_run_child), json.loads(args.run_config) if args.run_config else {})
    if args.visual_pass_child:
        figures = visual_pass_without_store(Path(args.data), Path(args.work), json.loads(args.run_config or "{}"))
        print("BENCH_VISUAL_PASS " + json.dumps(figures), flush=True)
        return 0
    if args.pandas:
        figures = pandas_first_stages(Path(args.data), Path(args.work))
        print("BENCH_PANDAS " + json.dumps(figures), flush=True)
        return 0
    return run_benchmark(args)


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
