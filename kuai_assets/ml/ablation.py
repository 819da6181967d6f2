"""Which feature group carries the gain: the validation AUC of one fast GBDT per variant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kuai_assets.features.matrix import Feature
from kuai_assets.features.spec import CatalogError
from kuai_assets.ml.training import LightGbmParams, Rows, train_validation


@dataclass(frozen=True)
class VariantResult:
    variant: str
    groups: tuple[str, ...]
    valid_auc: float
    best_iteration: int


def variants(groups: list[str], base_group: str) -> dict[str, list[str]]:
    """All groups; each group removed; the base group alone; the base group plus each other one."""
    if base_group not in groups:
        raise CatalogError(f"base_group {base_group!r} is not among the feature groups {groups}")
    out = {"all groups": list(groups)}
    out.update({f"without {g}": [h for h in groups if h != g] for g in groups})
    out[f"{base_group} alone"] = [base_group]
    out.update({f"{base_group} + {g}": [base_group, g] for g in groups if g != base_group})
    return {name: chosen for name, chosen in out.items() if chosen}


def _columns(rows: Rows, columns: list[int]) -> Rows:
    return Rows(rows.x[:, columns], rows.y, rows.user_id, rows.photo_id, rows.row_id)


def run_ablation(
    fit: Rows,
    scored: Rows,
    features: list[Feature],
    groups: list[str],
    base_group: str,
    params: LightGbmParams,
    on_result: Callable[[VariantResult], None] = lambda r: None,
) -> list[VariantResult]:
    """Train one model per variant on the same fit and scored rows; the first result is all groups."""
    results = []
    for name, chosen in variants(groups, base_group).items():
        columns = [i for i, f in enumerate(features) if f.group in chosen]
        result = train_validation(_columns(fit, columns), _columns(scored, columns), [features[i] for i in columns], params)
        outcome = VariantResult(name, tuple(chosen), result.auc, result.best_iteration)
        on_result(outcome)
        results.append(outcome)
    return results
