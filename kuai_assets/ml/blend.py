"""Blend two models' click probabilities with a weight chosen on the validation rows only.

The blend is a weighted average of logits: p = sigmoid(w * logit(p_a) + (1 - w) * logit(p_b)).
Chosen over a rank average because it yields a probability for every row without reference to
the other rows of its set (the submission needs probabilities, and ranks would have to be
re-normalised on the test set, a set of another size and mix), and because it keeps the
models' confidence: a row one model is sure about moves the blend more than a row it is unsure
about. The weight w of model a is searched on a grid over [0, 1] by the global AUC of the
validation rows (the competition's metric); among weights with the same AUC the one nearest the
model that is better alone wins (w = 1 or 0 when blending does not help). The blend is used only
when it beats the better model alone on the validation rows by at least `min_gain` AUC and by at
least `min_gain_z` standard errors of that paired difference (DeLong): otherwise the weight is the
better model's alone (1 or 0). The first bar is a cost, not a statistic: using the second model
means refitting it for the test (kuai_assets.ml.attention refits only when the blend will use it),
and a gain below half a thousandth of AUC does not pay for that. The second guards against a gain
that is noise of these rows. Test labels are never read: the test predictions only receive the
chosen weight.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from kuai_assets.ml.metrics import paired_auc_difference, roc_auc

EPSILON = 1e-7
MIN_GAIN = 0.0005  # validation AUC the blend must add over the better model alone
MIN_GAIN_Z = 2.0  # ... in standard errors of the paired difference


class BlendError(ValueError):
    """The two models' predictions do not cover the same rows, or a probability is invalid."""


@dataclass
class WeightChoice:
    weight: float  # of model a; 1 - weight for model b
    valid_auc_a: float
    valid_auc_b: float
    valid_auc_blend: float  # at `weight`
    auc_by_weight: list[tuple[float, float]]
    best_grid_weight: float  # the weight of the best validation AUC on the grid
    gain: float  # the best grid weight's validation AUC over the better model alone
    gain_se: float  # its standard error (DeLong, paired); 0 when the best weight is a single model
    decision: str  # in words: which weight and why

    @property
    def uses_b(self) -> bool:
        return self.weight < 1.0

    def as_dict(self) -> dict:
        """The choice's fields, without the AUC curve (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in fields(WeightChoice) if f.name != "auc_by_weight"}


@dataclass
class BlendResult(WeightChoice):
    validation_p_click: np.ndarray  # in the order of the validation row_id given for model a
    test_row_id: np.ndarray  # in the order of model a's test rows
    test_p_click: np.ndarray


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(p) - np.log1p(-p)


def blend_probabilities(p_a: np.ndarray, p_b: np.ndarray, weight: float) -> np.ndarray:
    z = weight * logit(p_a) + (1.0 - weight) * logit(p_b)
    return 1.0 / (1.0 + np.exp(-z))


def align(row_id_a: np.ndarray, row_id_b: np.ndarray, what: str) -> np.ndarray:
    """Positions in b of a's rows; both must hold exactly the same distinct row_ids."""
    row_id_a, row_id_b = np.asarray(row_id_a, dtype=np.int64), np.asarray(row_id_b, dtype=np.int64)
    for name, ids in (("first", row_id_a), ("second", row_id_b)):
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise BlendError(f"{what}: the {name} model repeats row_id {unique[counts > 1][0]}")
    order = np.argsort(row_id_b)
    position = np.minimum(np.searchsorted(row_id_b[order], row_id_a), max(len(row_id_b) - 1, 0))
    found = (row_id_b[order][position] == row_id_a) if len(row_id_b) else np.zeros(len(row_id_a), dtype=bool)
    if not found.all() or len(row_id_a) != len(row_id_b):
        only_a = row_id_a[~found]
        only_b = np.setdiff1d(row_id_b, row_id_a)
        example = f"row_id {only_a[0]} only in the first" if len(only_a) else f"row_id {only_b[0]} only in the second"
        raise BlendError(
            f"{what}: the two models' predictions cover different rows ({len(row_id_a):,} vs {len(row_id_b):,}; "
            f"{len(only_a):,} only in the first, {len(only_b):,} only in the second; e.g. {example})"
        )
    return order[position]


def _check_probability(p: np.ndarray, what: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    bad = ~np.isfinite(p) | (p < 0) | (p > 1)
    if bad.any():
        raise BlendError(f"{what}: {int(bad.sum())} probabilities are not within [0, 1] (e.g. {p[bad][0]})")
    return p


def choose_weight(
    valid_p_a: np.ndarray,
    valid_p_b: np.ndarray,
    label: np.ndarray,
    steps: int = 100,
    min_gain: float = MIN_GAIN,
    min_gain_z: float = MIN_GAIN_Z,
) -> WeightChoice:
    """The weight of model a, from validation rows alone (both models' probabilities and the
    labels, aligned): the best AUC on the grid, kept only if it clears both bars (module doc)."""
    if steps < 1:
        raise BlendError(f"steps must be at least 1, got {steps}")
    y = np.asarray(label)
    za, zb = logit(valid_p_a), logit(valid_p_b)
    weights = np.linspace(0.0, 1.0, steps + 1)
    aucs = np.array([roc_auc(y, w * za + (1 - w) * zb) for w in weights])
    auc_a, auc_b = float(aucs[-1]), float(aucs[0])
    best = np.flatnonzero(aucs >= aucs.max() - 1e-12)
    chosen = best.max() if auc_a >= auc_b else best.min()
    single = steps if auc_a >= auc_b else 0  # the better model alone
    best_weight, alone = float(weights[chosen]), ("the first model" if single else "the second model")
    gain, gain_se = float(aucs[chosen] - aucs[single]), 0.0
    if chosen == single:
        decision = f"{alone} alone: no weight on the grid has a higher validation AUC"
    else:
        try:
            _, gain_se = paired_auc_difference(y, best_weight * za + (1 - best_weight) * zb, za if single else zb)
        except ValueError:  # fewer than two rows of a class: no error estimate, no evidence
            gain_se = float("inf")
        z = gain / gain_se if gain_se > 0 else float("inf")
        if gain >= min_gain and z >= min_gain_z:
            decision = (f"blend: weight {best_weight:.2f} gains {gain:+.5f} validation AUC over {alone} "
                        f"({z:.1f} standard errors; the bars are {min_gain:g} and {min_gain_z:g})")
        else:
            decision = (f"{alone} alone: the best blend (weight {best_weight:.2f}) gains only {gain:+.5f} validation "
                        f"AUC ({z:.1f} standard errors), below the bars of {min_gain:g} and {min_gain_z:g}")
            chosen = single
    return WeightChoice(
        weight=float(weights[chosen]), valid_auc_a=auc_a, valid_auc_b=auc_b, valid_auc_blend=float(aucs[chosen]),
        auc_by_weight=[(float(w), float(a)) for w, a in zip(weights, aucs)], best_grid_weight=best_weight,
        gain=gain, gain_se=gain_se, decision=decision,
    )


def align_validation(
    valid_row_id_a: np.ndarray, valid_p_a: np.ndarray, valid_row_id_b: np.ndarray, valid_p_b: np.ndarray,
    label_row_id: np.ndarray, label: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both models' validation probabilities and the labels, in the order of a's rows (checked)."""
    valid_p_a = _check_probability(valid_p_a, "validation predictions of the first model")
    valid_p_b = _check_probability(valid_p_b, "validation predictions of the second model")[
        align(valid_row_id_a, valid_row_id_b, "validation rows")
    ]
    y = np.asarray(label)[align(valid_row_id_a, label_row_id, "validation rows and their labels")]
    return valid_p_a, valid_p_b, y


def choose_blend(
    valid_row_id_a: np.ndarray,
    valid_p_a: np.ndarray,
    valid_row_id_b: np.ndarray,
    valid_p_b: np.ndarray,
    label_row_id: np.ndarray,
    label: np.ndarray,
    test_row_id_a: np.ndarray,
    test_p_a: np.ndarray,
    test_row_id_b: np.ndarray,
    test_p_b: np.ndarray,
    steps: int = 100,
    min_gain: float = MIN_GAIN,
    min_gain_z: float = MIN_GAIN_Z,
) -> BlendResult:
    """Choose the weight of model a on the validation rows (labels by row_id), apply it to the test.

    Both models must score exactly the same validation rows and the same test rows, and every
    validation row must have a label.
    """
    valid_p_a, valid_p_b, y = align_validation(valid_row_id_a, valid_p_a, valid_row_id_b, valid_p_b, label_row_id, label)
    choice = choose_weight(valid_p_a, valid_p_b, y, steps, min_gain, min_gain_z)
    test_p_a = _check_probability(test_p_a, "test predictions of the first model")
    test_p_b = _check_probability(test_p_b, "test predictions of the second model")[
        align(test_row_id_a, test_row_id_b, "test rows")
    ]
    return BlendResult(
        **vars(choice),
        validation_p_click=blend_probabilities(valid_p_a, valid_p_b, choice.weight),
        test_row_id=np.asarray(test_row_id_a, dtype=np.int64),
        test_p_click=blend_probabilities(test_p_a, test_p_b, choice.weight),
    )


def auc_by_weight_png(auc_by_weight: list[tuple[float, float]], chosen: float) -> bytes:
    """The validation AUC against the weight of model a, the chosen weight marked (PNG)."""
    from kuai_assets.ml import plots

    fig, ax = plots.plt.subplots(figsize=(5.5, 3.2))
    ax.plot([w for w, _ in auc_by_weight], [a for _, a in auc_by_weight], lw=1.5)
    ax.axvline(chosen, color="crimson", ls="--", lw=1, label=f"chosen weight {chosen:.2f}")
    ax.legend(loc="lower center")
    ax.set(title="Validation AUC of the blend", xlabel="weight of the GBDT (1 - weight of the attention model)", ylabel="AUC")
    return plots._png(fig)
