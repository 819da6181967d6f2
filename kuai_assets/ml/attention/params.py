"""The attention model's settings (its config in the Launchpad), without torch: the definitions
import this module when they load, and torch only when the network trains."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from kuai_assets.ml.blend import MIN_GAIN

DEFAULT_CONTEXT_GROUPS = ("impression_context", "time_and_duration", "session_context")


class AttentionParams(BaseModel):
    """How the attention model is trained and shaped (also its config in the Launchpad)."""

    history_length: int = Field(default=50, ge=1, description="Most recent fit rows a row attends over.")
    max_epochs: int = Field(default=6, ge=1, description="Most validation epochs.")
    patience: int = Field(default=2, ge=1, description="Stop after this many epochs without a better validation AUC.")
    min_improvement: float = Field(
        default=MIN_GAIN, ge=0,
        description="An epoch is better than the best so far only when its validation AUC is higher by more than "
        "this (the same bar as the blend's gain): smaller steps are the AUC's noise from epoch to epoch, so they "
        "neither reset the patience nor move the best epoch.",
    )
    early_stopping_rows: int = Field(
        default=100_000, ge=0,
        description="Validation scored rows (a seeded sample) whose AUC picks the best epoch; 0, or at least "
        "half of the rows, = all of them. The best epoch's network then scores every validation row.",
    )
    fit_targets_per_epoch: int = Field(
        default=150_000, ge=1, description="Fit rows sampled per epoch."
    )
    batch_size: int = Field(default=512, ge=1, description="Targets per gradient step.")
    learning_rate: float = Field(default=2e-3, gt=0, description="Adam's learning rate.")
    weight_decay: float = Field(default=1e-6, ge=0, description="Adam's L2 penalty.")
    item_dim: int = Field(default=32, ge=1, description="Width of a photo's vector (query and keys).")
    cluster_dim: int = Field(default=8, ge=1, description="Width of each cluster id's embedding.")
    word_dim: int = Field(default=8, ge=1, description="Width of each cover word's embedding.")
    words_per_photo: int = Field(default=8, ge=1, description="Cover words kept per photo.")
    word_buckets: int = Field(default=1 << 15, ge=1, description="Hash buckets of the word ids.")
    user_dim: int = Field(default=8, ge=1, description="Width of the user embedding.")
    attention_hidden: int = Field(default=32, ge=1, description="Hidden width of the attention unit.")
    taste_dim: int = Field(
        default=32, ge=0,
        description="Width of the user-taste factors: the logit adds <taste(user), W q>, a taste learnt from all of "
        "the user's fit rows (the history holds only the latest); 0 = none.",
    )
    hidden: list[int] = Field(default=[128, 64], description="Hidden widths of the click tower.")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout in the click tower.")
    refit_epochs_factor: float = Field(
        default=1.1, gt=0, description="The submission network trains best_epoch x this factor epochs."
    )
    min_blend_gain: float = Field(
        default=MIN_GAIN, ge=0,
        description="Validation AUC the blend must add over the better model alone (and 2 standard errors) to "
        "use the network; the blend asset applies the value this run recorded.",
    )
    refit: Literal["when_blended", "always"] = Field(
        default="when_blended",
        description="when_blended: refit on every train row only when the blend, chosen on the validation rows "
        "against the GBDT's predictions, gives the network weight; otherwise the best validation network scores "
        "the test. always: refit every time (for submitting the network alone).",
    )
    context_groups: list[str] = Field(
        default=list(DEFAULT_CONTEXT_GROUPS),
        description="Label-free feature groups of the training matrix given as the row's context.",
    )
    device: Literal["cpu", "cuda", "auto"] = Field(default="cpu", description="cpu, cuda, or auto (cuda when present).")
    threads: int = Field(
        default=0, ge=0,
        description="CPU threads; 0 uses every core. The step's shards (step_shards) train on them and the "
        "scoring's batches run on them, each with torch on one thread, so the outcome does not depend on this "
        "number; in the validation epochs each epoch is scored on one more thread while the next trains.",
    )
    step_shards: int = Field(
        default=2, ge=1,
        description="On the CPU, each gradient step's targets are split into this many shards, whose gradients "
        "are computed on threads of their own (at most `threads`; torch on one thread each) and summed in "
        "shard order before the step: the same gradient as one pass, faster on two cores or more, since one step's "
        "small tensors keep one core busy, not two. The outcome depends on this number, not on the threads. "
        "1 = one pass.",
    )
    seed: int = Field(default=7, description="Seed of the weights, of the per-epoch samples and of the dropout.")
    leak_check_targets: int = Field(
        default=20_000, ge=1, description="Rows per (setup, role) whose history the leak check proves."
    )


def params_dict(params: AttentionParams) -> dict:
    values = params.model_dump()
    values["hidden"] = ",".join(str(h) for h in params.hidden)
    values["context_groups"] = ",".join(params.context_groups)
    return values
