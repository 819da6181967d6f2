"""A/B of the visual stage: another commit's code (A, by default `main`) against this tree's (B),
on the same released vectors in one run: `python -m benchmarks.visual_ab --data <folder> --work <scratch>`
(from the repo root; `<folder>` in the released layout, e.g. made by `python -m kuai_assets.synth
--size demo` or `python -m benchmarks.scale --scale preliminary`).

A's sources are taken with `git archive <ref> kuai_assets` into `<work>/tree_A`. Each run is a
fresh process making the store, the PCA table and the clusters (the whole visual stage, no
Dagster) with the same settings; runs alternate A B B A A B ..., the released files evicted from the
page cache before each (unless `--warm`); `--without-store` makes only the two tables, the
pass's own work without the store's writes. Printed per run: wall time, the stage's own seconds,
peak memory (the process's maximum resident set), CPU time and the share the host took; then
each side's median and the B/A ratio of every round. Every round's outputs are compared: the
store files byte for byte (vectors.npy, photo_id.npy, split.npy) and the two tables row for row;
any difference is printed and makes the exit code 1. On a shared machine compare the ratios,
not single figures.

Benchmarks are not tests: they are run by hand and their figures recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

MARK = "BENCH_VISUAL_AB "
STORE_FILES = ("vectors.npy", "photo_id.npy", "split.npy")


def child(data: Path, out: Path, settings_json: str, with_store: bool) -> None:
    """In a fresh process, with PYTHONPATH naming the tree under test: the whole visual stage."""
    import kuai_assets
    from kuai_assets.formats import layout

    try:
        from kuai_assets.visual.settings import VisualSettings
        from kuai_assets.visual.sources import Released
        from kuai_assets.visual.stage import VisualStage
    except ImportError:  # the code before kuai_assets.visual
        from kuai_assets.vectors import Released, VisualSettings, VisualStage

    options = json.loads(settings_json)
    if "ks" in options:
        options["ks"] = tuple(options["ks"])
    settings = VisualSettings(**options)
    sources = {split: layout.find_visual_source_checked(data, split) for split in layout.SPLITS}
    (out / "store").mkdir(parents=True)
    started = time.time()
    store = out / "store" if with_store else None
    # the stage's own messages (when the PCA and the fits arrived, how many rows were kept) to the run's log
    progress = lambda message: print(f"[{time.time() - started:7.2f} s] {message}", flush=True)
    VisualStage(settings, progress).run(Released(sources), store, out / "pca.parquet", out / "clusters.parquet")
    seconds = time.time() - started
    print(MARK + json.dumps({"seconds": round(seconds, 2), "package": str(Path(kuai_assets.__file__).parent)}), flush=True)


def differences(a: Path, b: Path, with_store: bool = True) -> list[str]:
    """What differs between two runs' outputs (empty: the same store bytes and the same tables)."""
    import pandas as pd

    names = STORE_FILES if with_store else ()
    found = [f"store {name} differs" for name in names if (a / "store" / name).read_bytes() != (b / "store" / name).read_bytes()]
    for table in ("pca.parquet", "clusters.parquet"):
        left, right = pd.read_parquet(a / table), pd.read_parquet(b / table)
        if not left.equals(right):
            found.append(f"{table} differs" + (f" (max abs difference {_max_difference(left, right)})" if left.shape == right.shape else ""))
    return found


def _max_difference(left, right) -> float:
    numeric = left.select_dtypes("number").columns
    return float((left[numeric] - right[numeric]).abs().max().max())


def export_tree(ref: str, into: Path) -> str:
    """`ref`'s kuai_assets into `into` (replaced); returns the commit."""
    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "rev-parse", ref], cwd=root, check=True, capture_output=True, text=True).stdout.strip()
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit, "kuai_assets"], cwd=root, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="released layout folder (read only)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (A's tree and the runs' outputs)")
    parser.add_argument("--base", default="main", help="git ref of A (default: main)")
    parser.add_argument("--rounds", type=int, default=2, help="A B rounds (default 2)")
    parser.add_argument("--settings", default="{}", help='VisualSettings fields as JSON, e.g. \'{"ks": [100, 500]}\'')
    parser.add_argument("--warm", action="store_true", help="do not evict the released files from the page cache before each run")
    parser.add_argument("--without-store", action="store_true",
                        help="make only the PCA and the clusters (the pass's own work, without the store's writes)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.data, args.child, args.settings, not args.without_store)
        return 0

    from benchmarks.scale import _marked, _run_child, evict_from_page_cache, visual_files

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    trees = {"A": work / "tree_A", "B": Path(__file__).resolve().parent.parent}
    commit = export_tree(args.base, trees["A"])
    print(f"[ab] A: {args.base} ({commit[:10]}) from {trees['A']}; B: this tree, {trees['B']}", flush=True)
    files = visual_files(args.data)
    print(f"[ab] data: {args.data} ({sum(p.stat().st_size for p in files) / 1e9:.2f} GB of released vectors)", flush=True)
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    failed = False
    for round_ in range(args.rounds):
        outs = {}
        for side in ("A", "B") if round_ % 2 == 0 else ("B", "A"):  # A B B A ...: a drift in the machine's load favours neither
            out = work / f"run_{side}"
            shutil.rmtree(out, ignore_errors=True)
            if not args.warm:
                for path in files:
                    evict_from_page_cache(path)
            env = {**os.environ, "PYTHONPATH": str(trees[side]), "MLFLOW_DISABLE_TELEMETRY": "true"}
            argv_child = [sys.executable, str(Path(__file__).resolve()), "--data", str(args.data.resolve()), "--work", str(work),
                          "--settings", args.settings, "--child", str(out)] + (["--without-store"] if args.without_store else [])
            run = _run_child(argv_child, env, work / f"run_{side}.log")
            marked = _marked(run.output, MARK)
            if run.code or marked is None:
                print(f"[ab] round {round_ + 1} {side} failed (exit {run.code}); see {work / f'run_{side}.log'}", flush=True)
                return 1
            figures = {"round": round_ + 1, "seconds": round(run.seconds, 1), "stage_seconds": marked["seconds"],
                       "peak_mb": round(run.peak_mb), "cpu_seconds": round(run.cpu_seconds, 1), "steal": run.stolen_share,
                       "package": marked["package"]}
            runs[side].append(figures)
            outs[side] = out
            print(f"[ab] round {round_ + 1} {side}: {figures['seconds']} s wall ({figures['stage_seconds']} s in the stage), "
                  f"peak {figures['peak_mb']:,} MB, CPU {figures['cpu_seconds']} s, host took {run.stolen_share}; "
                  f"kuai_assets from {figures['package']}", flush=True)
        found = differences(outs["A"], outs["B"], not args.without_store)
        same = "identical (" + ("store bytes, " if not args.without_store else "") + "PCA and cluster tables)"
        print(f"[ab] round {round_ + 1} outputs: " + (same if not found else "; ".join(found)), flush=True)
        failed |= bool(found)
    summary = {}
    for key in ("seconds", "stage_seconds", "peak_mb"):
        a = statistics.median(r[key] for r in runs["A"])
        b = statistics.median(r[key] for r in runs["B"])
        ratios = [round(rb[key] / ra[key], 3) for ra, rb in zip(runs["A"], runs["B"])]
        summary[key] = {"A_median": a, "B_median": b, "B_over_A_by_round": ratios}
        print(f"[ab] {key}: A median {a}, B median {b}, B/A by round {ratios}", flush=True)
    (work / "visual_ab.json").write_text(json.dumps({"base": commit, "runs": runs, "summary": summary, "identical": not failed}, indent=2))
    for side in ("A", "B"):
        shutil.rmtree(work / f"run_{side}", ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
