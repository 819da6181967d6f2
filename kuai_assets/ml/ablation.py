"""Which feature group carries the gain: the validation AUC of one fast GBDT per variant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kuai_assets.features.matrix import Feature
from kuai_assets.features.spec import CatalogError
from kuai_assets.ml.training import LightGbmParams, Rows, early_stopped, lightgbm_dataset, require_validation_labels


@dataclass(frozen=True)
class VariantResult:
    variant: str
    groups: tuple[str, ...]
    valid_auc: float
    best_iteration: int
    kept_from: str | None = None  # a kept result: where it was trained (see run_ablation's `keep`)


# keep(variant, groups, used) -> a previous result to report instead of training, or None
Keep = Callable[[str, tuple[str, ...], tuple[bool, ...]], "VariantResult | None"]


def variants(groups: list[str], base_group: str) -> dict[str, list[str]]:
    """All groups; each group removed; the base group alone; the base group plus each other one."""
    if base_group not in groups:
        raise CatalogError(f"base_group {base_group!r} is not among the feature groups {groups}")
    out = {"all groups": list(groups)}
    out.update({f"without {g}": [h for h in groups if h != g] for g in groups})
    out[f"{base_group} alone"] = [base_group]
    out.update({f"{base_group} + {g}": [base_group, g] for g in groups if g != base_group})
    return {name: chosen for name, chosen in out.items() if chosen}


def run_ablation(
    fit: Rows,
    scored: Rows,
    features: list[Feature],
    groups: list[str],
    base_group: str,
    params: LightGbmParams,
    on_result: Callable[[VariantResult], None] = lambda r: None,
    keep: Keep | None = None,
) -> list[VariantResult]:
    """Train one model per variant on the same fit and scored rows; the first result is all groups.

    The rows are binned into LightGBM Datasets once, with every feature; each variant is then
    restricted to its groups' columns (`early_stopped`'s `only_features`), which raises if a tree
    splits on another column. A feature's bins depend only on its own values, so this learns from
    the same bins as a Dataset of the variant's columns alone, without binning the rows 41 times
    (BENCHMARKS.md, "The feature-group ablation on Datasets binned once"). A variant's AUC is the
    one LightGBM recorded at its best iteration; the scored rows are not predicted again.

    `keep(variant, groups, used)`, when given, is asked first for each variant and may return a
    result to report as it is, untrained (with `kept_from` set): the caller's to decide, from
    whether what the variant learns from is unchanged. `used` says, column by column, whether
    LightGBM keeps the feature (a constant column, or one no split could use, it drops): a tree's
    column sample is drawn from the kept features, so a variant's model depends on that list as
    well as on its own columns, its rows and its settings.
    """
    require_validation_labels(fit, scored, "the ablation")
    train_set = lightgbm_dataset(fit, features, params=params.lightgbm())
    valid_set = lightgbm_dataset(scored, features, reference=train_set)
    used: tuple[bool, ...] = ()
    if keep is not None:
        train_set.construct()
        used = tuple(train_set.feature_num_bin(i) > 0 for i in range(len(features)))
    results = []
    for name, chosen in variants(groups, base_group).items():
        previous = keep(name, tuple(chosen), used) if keep is not None else None
        if previous is not None:
            on_result(previous)
            results.append(previous)
            continue
        columns = [i for i, f in enumerate(features) if f.group in chosen]
        result = early_stopped(
            train_set, valid_set, fit, scored, params, only_features=columns, name=name, predict=False
        )
        outcome = VariantResult(name, tuple(chosen), result.auc, result.best_iteration)
        on_result(outcome)
        results.append(outcome)
    return results
