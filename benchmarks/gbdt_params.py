"""LightGBM's defaults against one-change variants, across workspaces: `python -m benchmarks.gbdt_params`.

    python -m benchmarks.gbdt_params --work W1,W2,... --data D1,D2,... [--variants NAME,...]

Each W is a workspace whose graph has run through `training_matrix`, each D its dataset (with
`ground_truth/test_ground_truth.txt`), in the same order. On each, the model is trained exactly as
`model` trains it (kuai_assets.ml.gbdt.train_gbdt on the default feature groups: validation with
early stopping, refit on every fit row of the submission setup, test scores), once with the
defaults (GbdtTraining()) and once per variant, each variant changing one or two of the defaults.
Each run's validation AUC, test AUC, best iteration and seconds print as they finish; at the end a
table of every variant's change in validation and test AUC against the defaults per dataset, with
their means and the share of datasets where both moved up. Figures go to `<out>/gbdt_params.json`.

A variant is worth a new default only where validation and test gain together on most datasets,
our worlds and the independent stories alike, by more than the seeds' noise, and where its time is
worth that gain.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

VARIANTS: dict[str, dict] = {
    "defaults": {},
    "num_leaves 7": {"num_leaves": 7},
    "num_leaves 15": {"num_leaves": 15},
    "num_leaves 31": {"num_leaves": 31},
    "num_leaves 63": {"num_leaves": 63},
    "num_leaves 127": {"num_leaves": 127},
    "learning_rate 0.05": {"learning_rate": 0.05},
    "min_data_in_leaf 50": {"min_data_in_leaf": 50},
    "min_data_in_leaf 1000": {"min_data_in_leaf": 1000},
    "feature_fraction 0.4": {"feature_fraction": 0.4},
    "every row (negative_sample_rate 1)": {"negative_sample_rate": 1.0},
    "max_bin 255": {"max_bin": 255},
    "num_leaves 31 + learning_rate 0.05": {"num_leaves": 31, "learning_rate": 0.05},
}


def run_variant(matrix: Path, groups: list[str], truth: Path, overrides: dict, scratch: Path) -> dict:
    """The model as `model` trains it on `groups` with `overrides` (candidate_columns.train_and_score);
    its validation and test AUC, and the seconds of training and scoring."""
    from benchmarks.candidate_columns import train_and_score
    from kuai_assets.ml.gbdt import GbdtTraining

    started = time.time()
    run = train_and_score(matrix, groups, truth, scratch / "predictions.parquet", GbdtTraining(**overrides))
    return {**run, "seconds": round(time.time() - started, 1)}


def summary_rows(figures: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown rows: per variant, per dataset validation / test change against the defaults, the
    mean changes, the share of datasets where both rose, and the mean seconds against the defaults'."""
    datasets = list(figures)
    variants = [v for v in next(iter(figures.values())) if v != "defaults"]
    rows = ["| variant | " + " | ".join(datasets) + " | mean valid / test | both up | seconds vs defaults |",
            "| --- |" + " --- |" * (len(datasets) + 3)]
    for variant in variants:
        cells, valid, test, up, ratio = [], [], [], 0, []
        for name in datasets:
            base, run = figures[name]["defaults"], figures[name].get(variant)
            if run is None:
                cells.append("")
                continue
            dv, dt = run["valid_auc"] - base["valid_auc"], run["test_auc"] - base["test_auc"]
            valid.append(dv), test.append(dt), ratio.append(run["seconds"] / max(base["seconds"], 1e-9))
            up += dv > 0 and dt > 0
            cells.append(f"{dv:+.4f} / {dt:+.4f}")
        mean = f"{sum(valid) / len(valid):+.4f} / {sum(test) / len(test):+.4f}" if valid else ""
        seconds = f"{sum(ratio) / len(ratio):.2f}x" if ratio else ""
        rows.append(f"| {variant} | " + " | ".join(cells) + f" | {mean} | {up} of {len(valid)} | {seconds} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gbdt_params", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="comma-separated workspaces materialized through training_matrix")
    parser.add_argument("--data", required=True, help="their datasets, comma-separated, in the same order")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from: {', '.join(VARIANTS)} (the defaults always run)")
    parser.add_argument("--out", type=Path, default=Path("gbdt_params_out"), help="where the figures go")
    args = parser.parse_args(argv)
    works = [Path(w) for w in args.work.split(",") if w]
    datas = [Path(d) for d in args.data.split(",") if d]
    if len(works) != len(datas):
        raise SystemExit(f"gbdt_params: {len(works)} workspace(s) but {len(datas)} dataset(s)")
    chosen = ["defaults"] + [v for v in args.variants.split(",") if v and v != "defaults"]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"gbdt_params: unknown variant(s) {unknown}; choose from: {', '.join(VARIANTS)}")
    from benchmarks.candidate_columns import default_groups_of
    from kuai_assets.ml.gbdt import GbdtTraining

    same = [v for v in chosen[1:] if GbdtTraining(**VARIANTS[v]) == GbdtTraining()]
    if same:
        print(f"[gbdt_params] the defaults already are {', '.join(same)}: not run twice", flush=True)
    chosen = [v for v in chosen if v not in same]
    for work, data in zip(works, datas):
        matrix, truth = work / "tables" / "training_matrix.parquet", data / "ground_truth" / "test_ground_truth.txt"
        for path in (matrix, truth):
            if not path.is_file():
                raise SystemExit(f"gbdt_params: {path} is missing")
    args.out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, dict[str, dict]] = {}
    for work, data in zip(works, datas):
        name = work.name if [w.name for w in works].count(work.name) == 1 else str(work)  # e.g. two `work` folders
        figures[name] = {}
        matrix = work / "tables" / "training_matrix.parquet"
        groups = default_groups_of(matrix)
        for variant in chosen:
            run = run_variant(matrix, groups, data / "ground_truth" / "test_ground_truth.txt", VARIANTS[variant], args.out)
            figures[name][variant] = run
            print(f"[gbdt_params] {name} | {variant}: {run}", flush=True)
            (args.out / "gbdt_params.json").write_text(json.dumps(figures, indent=2))
    print("\n".join(summary_rows(figures)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
