"""The second approach: a DIN-style network in which the candidate photo attends over the user's
history (plain functions and torch modules, no Dagster).

- `history`: each row's history (the user's earlier fit rows of its setup) and the leak check;
- `inputs`: photo content and the target rows' context;
- `network`: the torch modules;
- `params`: the settings (no torch);
- `training`: validation with early stopping, refit, test scoring.
"""

from kuai_assets.ml.attention.history import HistoryLeakError, build_history, check_histories
from kuai_assets.ml.attention.params import AttentionParams

_WITH_TORCH = ("AttentionResult", "Predictions", "train_attention_model")  # from `training`, imported on first use


def __getattr__(name: str):
    """torch is imported with `training`, only when one of its names is first asked for: the
    definitions (and every CLI command) load without it."""
    if name in _WITH_TORCH:
        from kuai_assets.ml.attention import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AttentionParams",
    "AttentionResult",
    "HistoryLeakError",
    "Predictions",
    "build_history",
    "check_histories",
    "train_attention_model",
]
