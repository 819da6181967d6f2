"""Train the attention model: validate with early stopping, refit on the train rows, score the test.

Same protocol as the GBDT: epochs on the `validation` setup's fit rows, each followed by the AUC
of the validation scored rows (cold-start photos after the cut; a seeded sample of
`early_stopping_rows` of them when there are more); the best epoch's network is kept and scores
every validation scored row (the blend's input and the reported validation AUC); then a fresh
network is fitted on the `submission` setup's fit rows for round(best_epoch * factor) epochs and
scores the test rows. An epoch is a seeded sample of `fit_targets_per_epoch` fit rows. Seeded
and deterministic on CPU. Each gradient step is cut into `step_shards` shards computed on threads
of their own and summed in a fixed order (`step_gradient`), and the scoring's batches run on
threads of their own (`predict`), each with torch on one thread: the outcome depends on the shard
count, not on the threads or on which thread finishes first. With `threads: 0` on two cores or more,
each validation epoch's scoring runs on a thread of its own while the next epoch trains
(`_validation_epochs`), with the same outcome.

With `refit: when_blended` (the default) the refit runs only when the blend will use the network:
its weight is chosen first, on the validation rows alone, against the GBDT's validation
predictions (kuai_assets.ml.blend.choose_weight, the rule the `blend` asset applies). When the
GBDT alone wins, the best validation network scores the test rows instead (with every train row
as history), so the network still has test predictions to report, and the result says so.
"""

from __future__ import annotations

import copy
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from kuai_assets.ml.attention.history import HistoryCheck, SetupHistory, build_history, check_histories
from kuai_assets.ml.attention.inputs import PhotoTable, Targets, context_features, load_photos, load_targets
from kuai_assets.ml.attention.network import AttentionClickModel, NetworkShape, PackedClickModel, pack
from kuai_assets.ml.attention.params import AttentionParams
from kuai_assets.ml.blend import WeightChoice, align_validation, choose_weight
from kuai_assets.ml.metrics import roc_auc
from kuai_assets.storage import WorkDir

@dataclass
class Predictions:
    row_id: np.ndarray
    p_click: np.ndarray
    user_id: np.ndarray
    photo_id: np.ndarray
    click: np.ndarray | None = None


@dataclass
class AttentionResult:
    auc_by_epoch: list[float]  # validation AUC of each epoch on the early-stopping rows
    best_epoch: int
    valid_auc: float  # the best epoch's AUC on every validation scored row
    refit_epochs: int  # 0 when not refitted
    validation: Predictions  # the best epoch's predictions on the validation scored rows
    test: Predictions
    model: PackedClickModel  # the network that scored the test rows, on one packed float32 matrix
    example: np.ndarray  # a few packed test rows (the logged model's input example)
    shape: NetworkShape
    history_checks: list[HistoryCheck]
    rows: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    refitted: bool = True
    refit_decision: str = "refit: always"
    blend_check: WeightChoice | None = None  # the validation blend with the GBDT that decided the refit


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device; use 'cpu' or 'auto'")
    return torch.device(device)


def thread_budget(params: AttentionParams) -> int:
    """The threads the network may use: `threads`, or every core when it is 0."""
    return params.threads or os.cpu_count() or 1


@contextmanager
def _torch_settings(threads: int):
    """Deterministic algorithms and the thread count for the training, restored afterwards."""
    old_threads, old_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic)


@contextmanager
def _one_torch_thread():
    """Torch on one thread (process-wide, as `torch.set_num_threads` is) until the block ends;
    untouched when it already is, so a scoring beside the training does not reset it."""
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


class SetupData:
    """Everything one setup trains or scores on, on `device`: photo content, history, targets."""

    def __init__(self, photos: PhotoTable, history: SetupHistory, users: np.ndarray, device: torch.device):
        self.history = history
        self.device = device
        self.users = users  # sorted user ids; index + 1 is the embedding row (0 = unknown)
        self.dense = torch.from_numpy(photos.dense).to(device)
        self.clusters = torch.from_numpy(photos.clusters).to(device)
        self.words = torch.from_numpy(photos.words).to(device)
        self.history_photo = photos.index(history.photo_id)
        self.history_click = history.click.astype(np.int64)
        self._photos = photos

    def prepare(self, targets: Targets) -> dict[str, np.ndarray]:
        start, end = self.history.bounds(targets.user_id, targets.time)
        position = np.searchsorted(self.users, targets.user_id)
        position = np.minimum(position, len(self.users) - 1)
        user = np.where(self.users[position] == targets.user_id, position + 1, 0)
        return {"photo": self._photos.index(targets.photo_id), "start": start, "end": end, "user": user,
                "earlier": self.history.earlier(targets.user_id, targets.time), "context": targets.context}

    def batch(self, prepared: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The tensors of targets `rows`: each distinct history item of the batch once (targets of
        one user share most of their history), indexed per target by history_index."""
        index, mask = self.history.gather(prepared["start"][rows], prepared["end"][rows])
        distinct, inverse = np.unique(index, return_inverse=True)
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        photo = to(prepared["photo"][rows])
        history_photo = to(self.history_photo[distinct])
        return {
            "dense": self.dense[photo],
            "clusters": self.clusters[photo],
            "words": self.words[photo],
            "history_dense": self.dense[history_photo],
            "history_clusters": self.clusters[history_photo],
            "history_words": self.words[history_photo],
            "history_click": to(self.history_click[distinct]),
            "history_index": to(inverse.reshape(index.shape)),
            "mask": to(mask),
            "user": to(prepared["user"][rows]),
            "earlier": to(prepared["earlier"][rows]),
            "context": to(prepared["context"][rows]),
        }


def _shape(params: AttentionParams, photos: PhotoTable, users: int, context: int) -> NetworkShape:
    return NetworkShape(
        dense=photos.dense.shape[1], cluster_ks=tuple(photos.cluster_ks), words_per_photo=photos.words.shape[1],
        word_buckets=params.word_buckets, users=users, context=context, history_length=params.history_length,
        item_dim=params.item_dim, cluster_dim=params.cluster_dim, word_dim=params.word_dim, user_dim=params.user_dim,
        attention_hidden=params.attention_hidden, hidden=tuple(params.hidden), dropout=params.dropout,
        taste_dim=params.taste_dim,
    )


def _new_model(shape: NetworkShape, photos: PhotoTable, fit: Targets, params: AttentionParams, device) -> AttentionClickModel:
    torch.manual_seed(params.seed)
    return AttentionClickModel(shape, photos.dense, fit.context).to(device)


def epoch_batches(user: np.ndarray, time: np.ndarray, size: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A seeded sample of `size` targets, in batches of consecutive (user, time) order, the
    batches shuffled: a batch holds few users, whose targets share most history items (encoded
    once per batch), while the order of users and of batches is random."""
    n = len(user)
    chosen = rng.choice(n, size=min(n, size), replace=False)
    chosen = chosen[np.lexsort((time[chosen], user[chosen]))]
    batches = [chosen[i : i + batch_size] for i in range(0, len(chosen), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _shard_gradient(model, parameters: list[torch.Tensor], data: SetupData, prepared, fit: Targets, rows: np.ndarray,
                    total: int, generator: torch.Generator) -> tuple[float, tuple[torch.Tensor | None, ...]]:
    """One shard of a step: its share of the step's mean loss (the sum of its targets' losses /
    the step's `total` targets) and that share's gradient for each of `parameters` (None where
    the shard does not reach one)."""
    batch = data.batch(prepared, rows)
    target = torch.from_numpy(fit.click[rows]).to(data.device)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch, generator), target, reduction="sum") / total
    return float(loss.detach()), torch.autograd.grad(loss, parameters, allow_unused=True)


def step_gradient(model, data: SetupData, prepared, fit: Targets, rows: np.ndarray, generators: list[torch.Generator],
                  pool=None) -> float:
    """Set the gradient of every parameter of `model` to that of the mean loss of targets `rows`,
    computed in len(generators) shards (each drawing its dropout from its generator; on `pool`'s
    threads when given) and summed in shard order, so that the result does not depend on which
    thread finishes first. Returns the mean loss."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    pieces = np.array_split(rows, len(generators))
    jobs = [(piece, generator) for piece, generator in zip(pieces, generators) if len(piece)]
    if pool is None or len(jobs) == 1:
        results = [_shard_gradient(model, parameters, data, prepared, fit, piece, len(rows), g) for piece, g in jobs]
    else:
        futures = [pool.submit(_shard_gradient, model, parameters, data, prepared, fit, piece, len(rows), g)
                   for piece, g in jobs]
        results = [future.result() for future in futures]
    for i, parameter in enumerate(parameters):
        parts = [grads[i] for _, grads in results if grads[i] is not None]
        gradient = parts[0] if parts else None
        for part in parts[1:]:
            gradient = gradient + part
        parameter.grad = gradient
    return sum(loss for loss, _ in results)


def shard_generators(params: AttentionParams, epoch: int, step: int, shards: int, device) -> list[torch.Generator]:
    """The dropout generators of a step's shards, seeded by (seed, epoch, step, shard)."""
    return [torch.Generator(device=device).manual_seed(
        int(np.random.SeedSequence([params.seed, epoch, step, shard]).generate_state(1)[0])) for shard in range(shards)]


def _train_epoch(model, optimizer, data: SetupData, prepared, fit: Targets, params: AttentionParams, epoch: int,
                 abort=lambda: False) -> float | None:
    """One epoch; its mean loss, or None when `abort()` (asked before each step) said to stop.

    Each step's targets are cut into `params.step_shards` shards (on the CPU; one on a GPU), each
    shard's gradient computed on a thread of its own, then summed in shard order before the
    optimizer's step (`step_gradient`); each shard draws its dropout from a generator seeded by
    (seed, epoch, step, shard). So an epoch's numbers depend on the shard count, never on which
    thread finishes first. The shards run on min(step_shards, threads) threads (`threads` 0: the
    cores), one after the other with `threads: 1`, each with torch on one thread, to the same
    numbers: torch sharing a shard's operations among threads would round some of them
    differently."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng([params.seed, epoch])
    shards = params.step_shards if data.device.type == "cpu" else 1
    budget = thread_budget(params)
    workers = min(shards, budget)  # with one thread, the shards run one after the other: the same numbers
    model.train()
    total, batches = 0.0, 0
    pool = ThreadPoolExecutor(workers, thread_name_prefix="attention-shard") if workers > 1 else None
    # every shard with torch on one thread, whatever `threads` is (see predict)
    with _one_torch_thread() if data.device.type == "cpu" else nullcontext():
        try:
            for step, rows in enumerate(epoch_batches(fit.user_id, fit.time, params.fit_targets_per_epoch,
                                                      params.batch_size, rng)):
                if abort():
                    return None
                generators = shard_generators(params, epoch, step, shards, data.device)
                total += step_gradient(model, data, prepared, fit, rows, generators, pool)
                optimizer.step()
                batches += 1
        finally:
            if pool is not None:
                pool.shutdown()
    return total / max(batches, 1)


# rows per scoring batch: on the CPU a batch of 1,024 targets keeps the attention's temporaries
# in cache and scores twice as fast as 4,096, with the same probabilities
# (benchmarks/attention_step.py); a GPU keeps the larger batch
SCORING_BATCH_ROWS = {"cpu": 1024}
SCORING_BATCH_ROWS_ELSEWHERE = 4096


def predict(model: AttentionClickModel, data: SetupData, prepared: dict[str, np.ndarray], targets: Targets,
            batch_size: int | None = None, subset: np.ndarray | None = None, workers: int = 1) -> np.ndarray:
    """Click probabilities of every target (or of the targets `subset`, in its order), scored in
    (user, time) order so that a batch's histories overlap, `batch_size` targets at a time
    (default SCORING_BATCH_ROWS for the device).

    On the CPU each batch runs with torch on one thread, the batches on `workers` threads of
    their own: the batches are independent, so the probabilities are the same to the bit for any
    `workers` and whatever torch's thread setting was (torch sharing one batch's operations among
    threads rounds some of them differently, and 1,024 targets are too few to share well)."""
    model.eval()
    batch_size = batch_size or SCORING_BATCH_ROWS.get(data.device.type, SCORING_BATCH_ROWS_ELSEWHERE)
    subset = np.arange(len(targets)) if subset is None else np.asarray(subset)
    order = np.lexsort((targets.time[subset], targets.user_id[subset]))
    out = np.empty(len(subset), dtype=np.float64)

    def score(begin: int) -> None:
        rows = order[begin : begin + batch_size]
        with torch.no_grad():  # grad mode is per thread
            out[rows] = torch.sigmoid(model(data.batch(prepared, subset[rows]))).double().cpu().numpy()

    begins = range(0, len(order), batch_size)
    cpu = data.device.type == "cpu"
    with _one_torch_thread() if cpu else nullcontext():
        if cpu and workers > 1 and len(begins) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(workers, len(begins)), thread_name_prefix="attention-scoring-batch") as pool:
                list(pool.map(score, begins))
        else:
            for begin in begins:
                score(begin)
    return out


def early_stopping_subset(click: np.ndarray, rows: int, seed: int) -> np.ndarray | None:
    """The validation scored rows whose AUC picks the best epoch: a seeded sample of `rows` of
    them (sorted), or None (all of them) when `rows` is 0, when the sample would hold half the rows
    or more (scoring them all each epoch then costs little more than the sample plus the final
    scoring of every row), or when the sample would miss a class."""
    if rows <= 0 or 2 * rows >= len(click):
        return None
    subset = np.sort(np.random.default_rng([seed, 17]).choice(len(click), size=rows, replace=False))
    return subset if len(np.unique(click[subset])) == 2 else None


def require_gbdt_validation(params: AttentionParams, gbdt_validation) -> None:
    if params.refit == "when_blended" and gbdt_validation is None:
        raise ValueError("refit: when_blended needs the GBDT's validation predictions (materialize `model` first), "
                         "or set refit: always")


def refit_decision(params: AttentionParams, validation: Predictions,
                   gbdt_validation: tuple[np.ndarray, np.ndarray] | None) -> tuple[bool, str, WeightChoice | None]:
    """Whether to refit, why, and the validation blend that decided it. `gbdt_validation` is the
    GBDT's validation (row_id, p_click); required with `refit: when_blended`."""
    if params.refit == "always":
        return True, "refit: always (config)", None
    require_gbdt_validation(params, gbdt_validation)
    gbdt_p, network_p, label = align_validation(gbdt_validation[0], gbdt_validation[1], validation.row_id,
                                                validation.p_click, validation.row_id, validation.click)
    choice = choose_weight(gbdt_p, network_p, label, min_gain=params.min_blend_gain)
    if choice.uses_b:
        return True, f"refitted: the validation blend uses the network ({choice.decision})", choice
    return False, f"not refitted: the validation blend does not use the network ({choice.decision})", choice


@dataclass
class EarlyStopping:
    """The validation epochs' stopping rule. An epoch is the new best only when its AUC beats the
    best so far by more than `min_improvement` (the first epoch is the first best); the epochs
    stop once `patience` epochs have passed since the best."""

    patience: int
    min_improvement: float = 0.0
    best_epoch: int = 0
    best_auc: float = float("-inf")

    def record(self, epoch: int, auc: float) -> bool:
        """Note an epoch's validation AUC; True when it is the new best."""
        better = self.best_epoch == 0 or auc > self.best_auc + self.min_improvement
        if better:
            self.best_epoch, self.best_auc = epoch, auc
        return better

    def done(self, epoch: int) -> bool:
        """Whether the epochs end after `epoch`."""
        return epoch - self.best_epoch >= self.patience


def _validation_epochs(model, optimizer, data: SetupData, fit_prepared, fit: Targets, scored_prepared, scored: Targets,
                       subset: np.ndarray | None, params: AttentionParams, log_epoch, scorer) -> tuple[list[float], int, dict, np.ndarray]:
    """Epochs on the fit rows until early stopping: each epoch's network is scored on the
    validation rows on a thread of its own while the next epoch trains (torch on one thread each:
    a step's small tensors keep one core busy, not two, so the training splits each step into
    `step_shards` shards on threads of their own instead, and the scoring runs beside them;
    BENCHMARKS.md has the figures). The decisions are those of scoring each epoch before
    training the next: the AUCs, the best epoch and the stop are the same; an epoch begun before
    the scoring that stops the validation came back is dropped unfinished.
    An epoch is the best only when it beats the best before it by more than `min_improvement`.
    Returns the AUCs by epoch, the best epoch, its state and its predictions (on `subset`, or all)."""
    from concurrent.futures import ThreadPoolExecutor

    aucs: list[float] = []
    best: dict = {}
    stopping = EarlyStopping(params.patience, params.min_improvement)
    label = scored.click if subset is None else scored.click[subset]

    def settle(pending) -> bool:
        """The scored epoch's AUC (logged, kept if best); True when early stopping ends the epochs."""
        epoch, loss, state, future = pending
        prediction = future.result()
        aucs.append(roc_auc(label, prediction))
        log_epoch(epoch, loss, aucs[-1])
        if stopping.record(epoch, aucs[-1]):
            best.update(state=state, prediction=prediction)
        return stopping.done(epoch)

    overlap = params.threads == 0 and (os.cpu_count() or 1) > 1 and data.device.type == "cpu"
    budget = thread_budget(params)
    pending, stopped = None, False

    def scored_now() -> bool:
        """Between training steps: settle the previous epoch's scoring once it is back."""
        nonlocal pending, stopped
        if pending is not None and pending[3].done():
            stopped, pending = settle(pending), None
        return stopped

    with (_one_torch_thread() if overlap else nullcontext(),
          ThreadPoolExecutor(1, thread_name_prefix="attention-scoring") as pool):
        for epoch in range(1, params.max_epochs + 1):
            loss = _train_epoch(model, optimizer, data, fit_prepared, fit, params, epoch, abort=scored_now)
            if pending is not None:  # the scoring took longer than the epoch
                stopped, pending = settle(pending), None
            if stopped or loss is None:
                break
            state = copy.deepcopy(model.state_dict())
            scorer.load_state_dict(state)
            future = pool.submit(predict, scorer, data, scored_prepared, scored, subset=subset,
                                 workers=1 if overlap else budget)
            pending = (epoch, loss, state, future)
            if not overlap:
                stopped, pending = settle(pending), None
                if stopped:
                    break
        if pending is not None:
            settle(pending)
    return aucs, stopping.best_epoch, best["state"], best["prediction"]


def model_users(work: WorkDir) -> np.ndarray:
    """The sorted user ids of model_rows (index + 1 is a user's embedding row; 0 = unknown)."""
    con = work.connect(["model_rows"])
    try:
        users = con.execute("select distinct user_id from model_rows order by user_id").fetchnumpy()["user_id"]
    finally:
        con.close()
    return np.asarray(users, dtype=np.int64)


def train_attention_model(work: WorkDir, params: AttentionParams, log=lambda message: None,
                          gbdt_validation: tuple[np.ndarray, np.ndarray] | None = None,
                          on_epoch=lambda epoch, loss, auc: None) -> AttentionResult:
    """Check the histories, validate with early stopping, refit (see `refit_decision`) and score
    the test rows. `on_epoch(epoch, loss, auc)` is called for each validation epoch as soon as its
    AUC is known (from the calling thread), in epoch order.

    Reads model_rows, label_history, training_matrix (context columns of `params.context_groups`,
    label-free groups only), pca_visual_features, video_clusters, raw_text, raw_faces and
    raw_interactions (duration only). Raises HistoryLeakError before any training if a sampled
    history breaks the rule of `history.py`.
    """
    device = resolve_device(params.device)
    require_gbdt_validation(params, gbdt_validation)  # before any work, not after the epochs
    seconds: dict[str, float] = {}
    started = time.time()
    with _torch_settings(params.threads):
        photos = load_photos(work, params.words_per_photo, params.word_buckets)
        features = context_features(work, list(params.context_groups))
        users = model_users(work)
        histories, checks = {}, []
        for setup in ("validation", "submission"):
            histories[setup] = build_history(work, setup, params.history_length)
            checks += check_histories(work, histories[setup], params.leak_check_targets, params.seed)
        seconds["load_and_check"] = round(time.time() - started, 1)
        log(f"attention: {len(photos.photo_id):,} photos, {len(users):,} users, histories checked "
            f"({sum(c.targets_checked for c in checks):,} targets) in {seconds['load_and_check']:.0f} s")

        # validation: fit on the rows before the cut, AUC on the cold-start rows after it each epoch
        started = time.time()
        fit = load_targets(work, "validation", "fit", features)
        scored = load_targets(work, "validation", "scored", features)
        if len(np.unique(scored.click)) < 2:
            raise ValueError("the validation scored rows hold only one class; widen the validation window")
        data = SetupData(photos, histories["validation"], users, device)
        fit_prepared, scored_prepared = data.prepare(fit), data.prepare(scored)
        shape = _shape(params, photos, len(users), len(features))
        model = _new_model(shape, photos, fit, params, device)
        optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay, fused=device.type == "cpu" or None)
        subset = early_stopping_subset(scored.click, params.early_stopping_rows, params.seed)
        stopping = "every" if subset is None else f"{len(subset):,} of the"
        aucs, best_epoch, best_state, best_prediction = _validation_epochs(
            model, optimizer, data, fit_prepared, fit, scored_prepared, scored, subset, params,
            lambda epoch, loss, auc: (
                log(f"attention: epoch {epoch}, loss {loss:.4f}, validation AUC {auc:.4f} on "
                    f"{stopping} {len(scored):,} validation rows ({time.time() - started:.0f} s)"),
                on_epoch(epoch, loss, auc),
            ),
            scorer=copy.deepcopy(model),
        )
        if subset is not None:  # the best epoch's network scores every validation row
            model.load_state_dict(best_state)
            best_prediction = predict(model, data, scored_prepared, scored, workers=thread_budget(params))
        valid_auc = roc_auc(scored.click, best_prediction)
        seconds["validation"] = round(time.time() - started, 1)
        rows = {"validation_fit_rows": len(fit), "validation_scored_rows": len(scored),
                "early_stopping_rows": len(scored) if subset is None else len(subset)}
        validation = Predictions(scored.row_id, best_prediction, scored.user_id, scored.photo_id, scored.click)
        refitted, decision, blend_check = refit_decision(params, validation, gbdt_validation)
        log(f"attention: {decision}")
        del fit, scored, fit_prepared, scored_prepared, data, optimizer

        started = time.time()
        data = SetupData(photos, histories["submission"], users, device)
        if refitted:  # refit on every train row for the validated number of epochs
            refit_epochs = max(1, int(round(best_epoch * params.refit_epochs_factor)))
            fit = load_targets(work, "submission", "fit", features)
            fit_prepared = data.prepare(fit)
            model = _new_model(shape, photos, fit, params, device)
            optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay, fused=device.type == "cpu" or None)
            for epoch in range(1, refit_epochs + 1):
                loss = _train_epoch(model, optimizer, data, fit_prepared, fit, params, epoch)
                log(f"attention: refit epoch {epoch}/{refit_epochs}, loss {loss:.4f} ({time.time() - started:.0f} s)")
            seconds["refit"] = round(time.time() - started, 1)
            submission_fit_rows = len(fit)
        else:  # the best validation network scores the test, with every train row as history
            refit_epochs, submission_fit_rows = 0, 0
            model.load_state_dict(best_state)
        del best_state
        started = time.time()
        test = load_targets(work, "submission", "scored", features)
        test_prepared = data.prepare(test)
        test_prediction = predict(model, data, test_prepared, test, workers=thread_budget(params))
        seconds["test_scoring"] = round(time.time() - started, 1)
        rows.update(submission_fit_rows=submission_fit_rows, test_rows=len(test))
        model.eval()
        packed = PackedClickModel(model.cpu()).eval()
        example = pack({k: v.cpu() for k, v in data.batch(test_prepared, np.arange(min(5, len(test)))).items()}).numpy()
    log(f"attention: best epoch {best_epoch} (validation AUC {valid_auc:.4f}); "
        f"{f'refitted {refit_epochs} epochs' if refitted else 'not refitted'}; scored {len(test):,} test rows")
    return AttentionResult(
        auc_by_epoch=aucs, best_epoch=best_epoch, valid_auc=float(valid_auc), refit_epochs=refit_epochs,
        validation=validation,
        test=Predictions(test.row_id, test_prediction, test.user_id, test.photo_id),
        model=packed, example=example, shape=shape, history_checks=checks, rows=rows, seconds=seconds,
        device=str(device), refitted=refitted, refit_decision=decision, blend_check=blend_check,
    )
