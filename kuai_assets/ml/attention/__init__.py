"""The second approach: a DIN-style network in which the candidate photo attends over the user's
history (plain functions and torch modules, no Dagster).

- `history`: each row's history (the user's earlier fit rows of its setup) and the leak check;
- `inputs`: photo content and the target rows' context;
- `network`: the torch modules;
- `training`: validation with early stopping, refit, test scoring.
"""

from kuai_assets.ml.attention.history import HistoryLeakError, build_history, check_histories
from kuai_assets.ml.attention.training import AttentionParams, AttentionResult, Predictions, train_attention_model

__all__ = [
    "AttentionParams",
    "AttentionResult",
    "HistoryLeakError",
    "Predictions",
    "build_history",
    "check_histories",
    "train_attention_model",
]
