"""The feature-group ablation, timed both ways: `python -m benchmarks.ablation --work W`.

On a workspace whose training matrix is materialized (any `kuai run --work W`), it loads the
ablation's fit and scored rows as `feature_group_ablation` does (its default settings), then, in
one run, trains every variant twice:
- one LightGBM Dataset of each variant's own columns, binned anew for every variant (the way
  before the ablation shared its bins), written out here as the reference;
- `run_ablation`: the rows binned once with every column, each variant restricted to its
  columns by an interaction constraint.
It prints the seconds of each way, their ratio, and every variant's validation AUC both ways with
the largest difference. With `feature_fraction` and `bagging_fraction` below 1 the two ways sample
columns and rows differently, so their AUCs differ by the noise of those samples; `--exact` sets
both to 1 (and one thread), where the two ways are the same trees and the AUCs agree to the digit.
`--predicting` also times the binned-once way predicting each variant's scored rows again for its
AUC (as the ablation did before it read LightGBM's record at the best iteration), and checks the
AUCs are the same. The machines here are shared: read the ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from kuai_assets.defs.model import AblationConfig
    from kuai_assets.features.matrix import MATRIX, read_features
    from kuai_assets.ml.ablation import run_ablation, variants
    from kuai_assets.ml.gbdt import select_features
    from kuai_assets.ml.training import Rows, RowSample, load_rows, train_validation
    from kuai_assets.storage import WorkDir

    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a workspace with a materialized training matrix")
    parser.add_argument("--exact", action="store_true", help="no column or row sampling, one thread")
    parser.add_argument("--predicting", action="store_true",
                        help="also time the binned-once way predicting the scored rows again for each AUC")
    args = parser.parse_args(argv)

    config = AblationConfig()
    if args.exact:
        config = config.model_copy(update={"feature_fraction": 1.0, "bagging_fraction": 1.0, "bagging_freq": 0, "num_threads": 1})
    matrix = WorkDir(args.work).require_table(MATRIX)
    groups = list(config.feature_groups)
    features = select_features(read_features(matrix), groups)
    started = time.perf_counter()
    fit = load_rows(matrix, features, "validation", "fit", config.sample())
    scored = load_rows(matrix, features, "validation", "scored", RowSample(1.0, config.max_validation_rows, config.seed))
    print(f"rows: {len(fit.x):,} fit and {len(scored.x):,} scored, {len(features)} features in {len(groups)} groups "
          f"(loaded in {time.perf_counter() - started:.1f} s)", flush=True)

    def columns_of(rows: Rows, columns: list[int]) -> Rows:
        return Rows(rows.x[:, columns], rows.y, rows.user_id, rows.photo_id, rows.row_id)

    started = time.perf_counter()
    binned_per_variant = {}
    for name, chosen in variants(groups, config.base_group).items():
        columns = [i for i, f in enumerate(features) if f.group in chosen]
        result = train_validation(columns_of(fit, columns), columns_of(scored, columns), [features[i] for i in columns], config)
        binned_per_variant[name] = result.auc
    per_variant_seconds = time.perf_counter() - started

    started = time.perf_counter()
    binned_once = {r.variant: r.valid_auc for r in run_ablation(fit, scored, features, groups, config.base_group, config)}
    once_seconds = time.perf_counter() - started

    if args.predicting:
        from kuai_assets.ml import ablation

        recorded = ablation.early_stopped

        def predicting(*positional, **named):
            return recorded(*positional, **{**named, "predict": True})

        ablation.early_stopped = predicting
        try:
            started = time.perf_counter()
            predicted = {r.variant: r.valid_auc for r in run_ablation(fit, scored, features, groups, config.base_group, config)}
            predicting_seconds = time.perf_counter() - started
        finally:
            ablation.early_stopped = recorded

    width = max(map(len, binned_once))
    print(f"\n{'variant':{width}}  binned per variant  binned once")
    for name, auc in binned_per_variant.items():
        print(f"{name:{width}}  {auc:18.4f}  {binned_once[name]:11.4f}")
    largest = max(abs(binned_per_variant[n] - binned_once[n]) for n in binned_once)
    print(f"\n{len(binned_once)} variants{' (exact: no sampling, one thread)' if args.exact else ''}")
    print(f"binned per variant: {per_variant_seconds:6.1f} s")
    print(f"binned once:        {once_seconds:6.1f} s   ({per_variant_seconds / once_seconds:.2f}x as fast)")
    print(f"largest AUC difference: {largest:.4f}")
    if args.predicting:
        same = all(predicted[n] == binned_once[n] for n in binned_once)
        print(f"binned once, predicting each variant again: {predicting_seconds:6.1f} s "
              f"({predicting_seconds - once_seconds:+.1f} s; the AUCs {'the same' if same else 'DIFFER'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
