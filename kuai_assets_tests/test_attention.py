"""The attention model and the blend: honest histories (the leak check catches planted leaks),
end-to-end training on tiny data, the blend's weight chosen on validation rows only, the assets."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kuai_assets.ml.attention import AttentionParams, HistoryLeakError, build_history, check_histories
from kuai_assets.ml.attention import history as history_module
from kuai_assets.ml.attention.training import EarlyStopping, early_stopping_subset, train_attention_model
from kuai_assets.ml.blend import BlendError, choose_blend, choose_weight
from kuai_assets.ml.metrics import roc_auc
from kuai_assets.storage import WorkDir

LENGTH = 30


def model_rows(work: WorkDir, setup: str, role: str) -> dict:
    con = work.connect(["model_rows"])
    try:
        return con.execute(
            "select row_id, user_id, time from model_rows where setup = ? and role = ? order by row_id", [setup, role]
        ).fetchnumpy()
    finally:
        con.close()


def histories_of(history, rows: dict):
    start, end = history.bounds(rows["user_id"], rows["time"])
    index, mask = history.gather(start, end)
    return history.row_id[index], history.user_id[index], history.time[index], mask


# -- the history builder ----------------------------------------------------------------------------


def test_validation_scored_rows_see_only_validation_fit_rows_before_the_cut(materialized):
    work = WorkDir(materialized["work"])
    history = build_history(work, "validation", LENGTH)
    scored = model_rows(work, "validation", "scored")
    fit = model_rows(work, "validation", "fit")
    train_end = max(model_rows(work, "submission", "fit")["time"])
    cut = train_end - 12 * 3_600_000  # model_rows' default validation window
    row, user, time, mask = histories_of(history, scored)

    assert mask.sum(axis=1).min() > 0, "every validation user has history before the cut"
    assert np.isin(row[mask], fit["row_id"]).all(), "only validation fit rows"
    assert not np.isin(row[mask], scored["row_id"]).any(), "never a row of the scored window"
    assert (user == scored["user_id"][:, None])[mask].all(), "only the row's own user"
    assert (time[mask] < cut).all() and fit["time"].max() < cut
    # the history is the user's most recent fit rows: as many as allowed, the newest one included
    for u in np.unique(scored["user_id"])[:20]:
        own = fit["time"][fit["user_id"] == u]
        i = np.flatnonzero(scored["user_id"] == u)[0]
        assert mask[i].sum() == min(LENGTH, len(own))
        assert time[i][mask[i]].max() == own.max()


def test_a_fit_rows_history_holds_neither_itself_nor_its_batch_nor_later_rows(materialized):
    work = WorkDir(materialized["work"])
    history = build_history(work, "validation", LENGTH)
    fit = model_rows(work, "validation", "fit")
    row, user, time, mask = histories_of(history, fit)

    assert not (row == fit["row_id"][:, None])[mask].any(), "never the row itself"
    assert (time < fit["time"][:, None])[mask].all(), "only strictly earlier rows (not the same batch)"
    assert (user == fit["user_id"][:, None])[mask].all()
    assert (mask.sum(axis=1) == LENGTH).mean() > 0.5, "most rows have a full history"
    assert (mask.sum(axis=1) == 0).any(), "a user's first batch has none"
    # rows of one batch (same user and time) share one history
    order = np.lexsort((fit["time"], fit["user_id"]))
    r, m = row[order], mask[order]
    same = (fit["user_id"][order][1:] == fit["user_id"][order][:-1]) & (fit["time"][order][1:] == fit["time"][order][:-1])
    assert same.any()
    assert all((r[i][m[i]] == r[i + 1][m[i + 1]]).all() for i in np.flatnonzero(same)[:200])


def test_the_leak_check_passes_on_the_builder(materialized):
    work = WorkDir(materialized["work"])
    for setup in ("validation", "submission"):
        checks = check_histories(work, build_history(work, setup, LENGTH), targets_per_role=3_000)
        assert {c.role for c in checks} == {"fit", "scored"}
        assert all(c.history_items_checked > c.targets_checked for c in checks)


def test_the_leak_check_catches_a_history_holding_the_target_and_its_batch(materialized, monkeypatch):
    work = WorkDir(materialized["work"])
    monkeypatch.setattr(history_module, "_history_end", lambda keys, target: np.searchsorted(keys, target, side="right"))
    with pytest.raises(HistoryLeakError, match="is the target itself|is not earlier than the target"):
        check_histories(work, build_history(work, "validation", LENGTH), targets_per_role=3_000)


def test_the_leak_check_catches_scored_rows_in_the_history(materialized, monkeypatch):
    work = WorkDir(materialized["work"])

    def with_scored_rows(con, setup):  # the scored window's labelled rows slipped into the history
        leaky = work.connect(["model_rows", "raw_interactions"])
        try:
            return leaky.execute(
                "select r.row_id, r.user_id, r.photo_id, r.time, coalesce(i.click, 0) as click from model_rows r "
                "join raw_interactions i using (row_id) where r.setup = ? order by r.user_id, r.time, r.row_id",
                [setup],
            ).fetchnumpy()
        finally:
            leaky.close()

    monkeypatch.setattr(history_module, "history_rows", with_scored_rows)
    with pytest.raises(HistoryLeakError, match="is not a fit row of this setup"):
        check_histories(work, build_history(work, "validation", LENGTH), targets_per_role=3_000)


def test_training_refuses_a_leaky_history_before_it_trains(materialized, monkeypatch):
    work = WorkDir(materialized["work"])
    monkeypatch.setattr(history_module, "_history_end", lambda keys, target: np.searchsorted(keys, target, side="right"))
    with pytest.raises(HistoryLeakError):
        train_attention_model(work, AttentionParams(max_epochs=1, leak_check_targets=2_000, refit="always"))


# -- training ---------------------------------------------------------------------------------------


def test_the_attention_model_trains_one_epoch_end_to_end(materialized):
    work = WorkDir(materialized["work"])
    params = AttentionParams(max_epochs=1, fit_targets_per_epoch=20_000, history_length=LENGTH, leak_check_targets=2_000,
                             refit="always")
    result = train_attention_model(work, params)
    scored = model_rows(work, "validation", "scored")
    test = model_rows(work, "submission", "scored")

    assert len(result.auc_by_epoch) == 1 and result.best_epoch == 1 and result.refit_epochs == 1
    assert result.refitted and result.rows["submission_fit_rows"] > 0
    assert 0.6 < result.valid_auc < 1.0, "learns something from histories and context on tiny data"
    assert np.array_equal(np.sort(result.validation.row_id), scored["row_id"])
    assert np.array_equal(np.sort(result.test.row_id), test["row_id"])
    assert ((result.test.p_click > 0) & (result.test.p_click < 1)).all()
    # the packed module (what MLflow logs) gives the test rows' predictions from one float matrix
    with torch.no_grad():
        packed = result.model(torch.from_numpy(result.example)).numpy()
    assert np.allclose(packed, result.test.p_click[: len(packed)], atol=1e-5)
    # seeded: the same run gives the same numbers
    again = train_attention_model(work, params)
    assert again.auc_by_epoch == result.auc_by_epoch
    assert np.array_equal(again.test.p_click, result.test.p_click)


def test_early_stopping_reads_a_sample_and_the_best_epoch_scores_every_validation_row(materialized):
    work = WorkDir(materialized["work"])
    scored = model_rows(work, "validation", "scored")
    sample = len(scored["row_id"]) // 3
    params = AttentionParams(max_epochs=2, patience=1, fit_targets_per_epoch=5_000, history_length=LENGTH,
                             leak_check_targets=1_000, early_stopping_rows=sample, refit="always")
    result = train_attention_model(work, params)

    assert result.rows["early_stopping_rows"] == sample < result.rows["validation_scored_rows"]
    # the reported validation AUC is the best epoch's over every scored row, not the sample's
    assert np.array_equal(np.sort(result.validation.row_id), scored["row_id"])
    assert result.valid_auc == pytest.approx(roc_auc(result.validation.click, result.validation.p_click))
    # the epoch's AUC is the sample's: recomputed from the best epoch's full predictions
    subset = early_stopping_subset(result.validation.click, sample, params.seed)
    assert subset is not None and len(subset) == sample
    best = result.auc_by_epoch[result.best_epoch - 1]
    assert best == pytest.approx(roc_auc(result.validation.click[subset], result.validation.p_click[subset]), abs=1e-9)
    assert best != pytest.approx(result.valid_auc, abs=1e-9)


@pytest.mark.parametrize(
    "min_improvement, best_epoch, epochs_run",
    [(0.0005, 2, 4),  # +0.0002 at epoch 4 is noise: the best stays at 2, and 2 epochs later the epochs end
     (0.0, 4, 6)],  # any rise counts: epoch 4 is the best, and the epochs run on to 6
)
def test_early_stopping_counts_only_a_rise_above_the_bar(min_improvement, best_epoch, epochs_run):
    # the validation AUCs of the network's epochs on the loop's default-size dataset (benchmarks/loop.py)
    aucs = [0.7001, 0.7007, 0.6987, 0.7009, 0.6980, 0.6955]
    stopping = EarlyStopping(patience=2, min_improvement=min_improvement)
    run = 0
    for epoch, auc in enumerate(aucs, start=1):
        run = epoch
        stopping.record(epoch, auc)
        if stopping.done(epoch):
            break
    assert (stopping.best_epoch, run) == (best_epoch, epochs_run)
    assert stopping.best_auc == aucs[best_epoch - 1]


def test_scoring_each_epoch_beside_the_next_decides_as_scoring_it_before(materialized):
    """threads: 0 scores each epoch's network on a second thread while the next epoch trains (on a
    machine with two cores or more); threads: 1 scores it first, then trains the next. Both train
    on one torch thread, so the epochs are the same numbers: the same AUCs, the same best epoch,
    the same stop (an epoch begun before the scoring that stops the validation is dropped)."""
    work = WorkDir(materialized["work"])
    # a learning rate high enough that the validation AUC stops rising within the epochs (without the
    # taste factors and the session's context, which keep it rising for longer on this data)
    params = AttentionParams(max_epochs=16, patience=1, fit_targets_per_epoch=4_000, learning_rate=0.05, taste_dim=0,
                             context_groups=["impression_context", "time_and_duration"],
                             history_length=LENGTH, leak_check_targets=1_000, refit="always", refit_epochs_factor=0.01)
    beside = train_attention_model(work, params.model_copy(update={"threads": 0}))
    before = train_attention_model(work, params.model_copy(update={"threads": 1}))
    assert beside.auc_by_epoch == before.auc_by_epoch
    assert len(before.auc_by_epoch) < params.max_epochs, "early stopping ended the epochs (the case that matters)"
    assert beside.best_epoch == before.best_epoch and beside.valid_auc == before.valid_auc
    assert np.array_equal(beside.validation.p_click, before.validation.p_click)


def _validation_network(work: WorkDir, params: AttentionParams, role: str) -> SimpleNamespace:
    """A fresh network (untrained) on the validation setup's `role` rows, on the CPU, with its
    photos, context features, targets, setup data and prepared targets."""
    from kuai_assets.ml.attention import training
    from kuai_assets.ml.attention.inputs import context_features, load_photos, load_targets

    photos = load_photos(work, params.words_per_photo, params.word_buckets)
    features = context_features(work, list(params.context_groups))
    targets = load_targets(work, "validation", role, features)
    data = training.SetupData(photos, build_history(work, "validation", params.history_length),
                              training.model_users(work), torch.device("cpu"))
    model = training._new_model(training._shape(params, photos, len(data.users), len(features)), photos, targets,
                                params, torch.device("cpu"))
    return SimpleNamespace(photos=photos, features=features, targets=targets, data=data,
                           prepared=data.prepare(targets), model=model)


def test_a_step_cut_into_shards_has_the_gradient_of_one_pass(materialized):
    """step_shards splits a step's targets over threads; the summed shard gradients are the
    gradient of the step's mean loss in one pass (to float rounding), the same bits whichever
    thread ends first, and their dropout masks come from the generators given, not from torch's
    global one."""
    from concurrent.futures import ThreadPoolExecutor

    from kuai_assets.ml.attention import training

    params = AttentionParams(history_length=LENGTH, dropout=0.0)
    net = _validation_network(WorkDir(materialized["work"]), params, "fit")
    photos, features, fit = net.photos, net.features, net.targets
    data, prepared, model = net.data, net.prepared, net.model
    model.train()
    rows = np.sort(np.random.default_rng(3).choice(len(fit), size=301, replace=False))

    def gradient(shards, pool=None):
        model.zero_grad(set_to_none=True)
        generators = [torch.Generator().manual_seed(shard) for shard in range(shards)]
        loss = training.step_gradient(model, data, prepared, fit, rows, generators, pool)
        return loss, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    one_loss, one = gradient(1)
    with ThreadPoolExecutor(3) as pool:
        shard_loss, shards = gradient(3, pool)
        _, again = gradient(3, pool)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        model(data.batch(prepared, rows)), torch.from_numpy(fit.click[rows])).item()
    assert one_loss == pytest.approx(expected, rel=1e-5) and shard_loss == pytest.approx(expected, rel=1e-5)
    assert one.keys() == shards.keys() == again.keys() and len(one) > 10
    for name in one:
        assert torch.allclose(one[name], shards[name], rtol=1e-4, atol=1e-7), name
        assert torch.equal(shards[name], again[name]), f"{name}: the shards' sum depends on the threads' timing"

    # dropout on: the generator decides the masks; torch's global generator is not drawn from
    with_dropout = training._new_model(training._shape(params.model_copy(update={"dropout": 0.5}), photos,
                                                      len(data.users), len(features)), photos, fit, params,
                                       torch.device("cpu")).train()
    batch = data.batch(prepared, rows)
    state = torch.get_rng_state()
    a = with_dropout(batch, torch.Generator().manual_seed(5))
    b = with_dropout(batch, torch.Generator().manual_seed(5))
    c = with_dropout(batch, torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_scoring_gives_the_same_bits_on_any_number_of_threads(materialized):
    """predict scores each batch with torch on one thread, the batches on `workers` threads: the
    probabilities are the same to the bit for one worker or three, whatever torch's thread count
    was before, and that count is restored."""
    from kuai_assets.ml.attention import training

    net = _validation_network(WorkDir(materialized["work"]), AttentionParams(history_length=LENGTH), "scored")
    scored, data, prepared, model = net.targets, net.data, net.prepared, net.model
    threads = torch.get_num_threads()
    try:
        results = []
        for torch_threads, workers in ((1, 1), (2, 1), (2, 3), (1, 3)):
            torch.set_num_threads(torch_threads)
            results.append(training.predict(model, data, prepared, scored, workers=workers))
            assert torch.get_num_threads() == torch_threads
    finally:
        torch.set_num_threads(threads)
    assert len(scored) > 4 * training.SCORING_BATCH_ROWS["cpu"]
    for other in results[1:]:
        assert np.array_equal(results[0], other)


def test_sharded_epochs_repeat_exactly(materialized):
    """Runs with the step cut into two shards give the same numbers, bit for bit, whether the shards
    run on two threads (twice) or one after the other on one (`threads: 1`): the shards' gradients
    are summed in shard order and their dropout is seeded per shard."""
    work = WorkDir(materialized["work"])
    params = AttentionParams(max_epochs=2, patience=5, fit_targets_per_epoch=3_000, history_length=LENGTH,
                             leak_check_targets=500, refit="always", refit_epochs_factor=0.01, step_shards=2)
    first = train_attention_model(work, params.model_copy(update={"threads": 2}))
    again = train_attention_model(work, params.model_copy(update={"threads": 2}))
    one_thread = train_attention_model(work, params.model_copy(update={"threads": 1}))
    for other in (again, one_thread):
        assert first.auc_by_epoch == other.auc_by_epoch
        assert np.array_equal(first.validation.p_click, other.validation.p_click)
        assert np.array_equal(first.test.p_click, other.test.p_click)


def test_the_network_is_refitted_only_when_the_validation_blend_uses_it(materialized):
    work = WorkDir(materialized["work"])
    scored = model_rows(work, "validation", "scored")
    params = AttentionParams(max_epochs=1, fit_targets_per_epoch=5_000, history_length=LENGTH, leak_check_targets=1_000)
    with pytest.raises(ValueError, match="needs the GBDT's validation predictions"):
        train_attention_model(work, params)

    # a GBDT that knows every validation click: no blend beats it, so no refit; the validation
    # network scores the test rows
    first = train_attention_model(work, params.model_copy(update={"refit": "always"}))
    order = np.argsort(first.validation.row_id)
    click = first.validation.click[order]
    knowing = (scored["row_id"], np.where(click == 1, 0.9, 0.1))
    skipped = train_attention_model(work, params, gbdt_validation=knowing)
    assert not skipped.refitted and skipped.refit_epochs == 0 and skipped.rows["submission_fit_rows"] == 0
    assert skipped.blend_check.weight == 1.0 and "not refitted" in skipped.refit_decision
    assert np.array_equal(np.sort(skipped.test.row_id), model_rows(work, "submission", "scored")["row_id"])
    assert np.array_equal(skipped.validation.p_click, first.validation.p_click), "the same validation network"
    assert not np.array_equal(skipped.test.p_click, first.test.p_click), "scored by the validation network, not a refit"

    # a GBDT that knows nothing: the network alone wins, so it is refitted, as with refit: always
    blind = (scored["row_id"], np.random.default_rng(0).uniform(0.1, 0.9, len(click)))
    used = train_attention_model(work, params, gbdt_validation=blind)
    assert used.refitted and used.refit_epochs == 1 and used.blend_check.weight < 1
    assert np.array_equal(used.test.p_click, first.test.p_click)


# -- the blend ---------------------------------------------------------------------------------------


def _two_models(seed: int = 0, n: int = 4_000):
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.3).astype(float)
    # each model sees the label through its own noise: together they know more than either
    signal = label * 1.0
    p_a = 1 / (1 + np.exp(-(signal + rng.normal(0, 1.2, n) - 0.5)))
    p_b = 1 / (1 + np.exp(-(2 * signal + rng.normal(0, 2.5, n) - 1)))
    return np.arange(n), label, p_a, p_b


# -- the network's arithmetic -------------------------------------------------------------------------


def test_the_factored_attention_unit_is_dins_mlp_over_q_k_their_difference_and_product():
    from kuai_assets.ml.attention.network import TargetAttention

    torch.manual_seed(3)
    dim, hidden, targets, length = 6, 5, 4, 7
    unit = TargetAttention(dim, hidden)
    query, keys = torch.randn(targets, dim), torch.randn(targets, length, dim)
    mask = torch.rand(targets, length) > 0.3
    mask[0] = False  # an empty history pools to zeros
    pooled, weight = unit(query, keys, mask)

    q = query.unsqueeze(1).expand_as(keys)
    score = unit.last(unit.activation(unit.first(torch.cat([q, keys, q - keys, q * keys], -1)))).squeeze(-1)
    expected_weight = torch.softmax(score.masked_fill(~mask, -1e9), -1) * mask
    expected_pooled = (expected_weight.unsqueeze(-1) * keys).sum(1)
    assert torch.allclose(weight, expected_weight, atol=1e-5)
    assert torch.allclose(pooled, expected_pooled, atol=1e-5)
    assert torch.all(pooled[0] == 0) and torch.all(weight[0] == 0)


def test_a_photos_words_vector_is_the_mean_of_its_present_words():
    from kuai_assets.ml.attention.network import ItemEncoder, NetworkShape

    torch.manual_seed(4)
    shape = NetworkShape(dense=3, cluster_ks=(4,), words_per_photo=3, word_buckets=10, users=2, context=1,
                         history_length=5, item_dim=6, word_dim=4)
    encoder = ItemEncoder(shape, np.random.default_rng(0).random((8, 3)))
    words = torch.tensor([[3, 5, 0], [0, 0, 0], [7, 0, 0]])
    captured = {}
    encoder.embedded.register_forward_hook(lambda module, inputs, output: captured.update(x=inputs[0]))
    encoder(torch.zeros(3, 3), torch.zeros(3, 1, dtype=torch.long), words)
    word_part = captured["x"][:, shape.cluster_dim:]
    table = encoder.words.weight.detach()
    assert torch.allclose(word_part[0], (table[3] + table[5]) / 2)
    assert torch.all(word_part[1] == 0), "a photo without words has a zero words vector"
    assert torch.allclose(word_part[2], table[7])
    word_part.sum().backward()
    assert torch.all(encoder.words.weight.grad[0] == 0), "the padding row (no word) learns nothing"
    assert torch.all(encoder.words.weight.grad[[3, 5, 7]] != 0)


def test_the_taste_term_adds_the_users_factors_dotted_with_the_candidates_projection():
    from kuai_assets.ml.attention.network import AttentionClickModel, NetworkShape

    torch.manual_seed(5)
    rng = np.random.default_rng(5)
    shape = NetworkShape(dense=3, cluster_ks=(4,), words_per_photo=2, word_buckets=10, users=3, context=2,
                         history_length=4, item_dim=6, taste_dim=5)
    model = AttentionClickModel(shape, rng.random((8, 3)), rng.random((20, 2))).eval()
    with torch.no_grad():
        model.taste.weight.normal_()  # trained factors, not the small initial ones
    targets, items = 3, 5
    batch = {
        "dense": torch.rand(targets, 3), "clusters": torch.randint(0, 5, (targets, 1)),
        "words": torch.randint(0, 11, (targets, 2)), "history_dense": torch.rand(items, 3),
        "history_clusters": torch.randint(0, 5, (items, 1)), "history_words": torch.randint(0, 11, (items, 2)),
        "history_click": torch.randint(0, 2, (items,)), "history_index": torch.randint(0, items, (targets, 4)),
        "mask": torch.rand(targets, 4) > 0.3, "user": torch.tensor([1, 3, 1]), "earlier": torch.rand(targets, 2) * 9,
        "context": torch.rand(targets, 2),
    }
    captured = {}
    model.item.register_forward_hook(lambda module, inputs, output: captured.update(query=output[:targets]))
    model.head[-1].register_forward_hook(lambda module, inputs, output: captured.update(head=output.squeeze(-1)))
    logit = model(batch)
    taste = (model.taste.weight[batch["user"]] * model.taste_item(captured["query"])).sum(-1)
    assert torch.allclose(logit, captured["head"] + taste, atol=1e-5)
    assert not torch.allclose(logit, captured["head"], atol=1e-3), "the term is not negligible here"
    logit.sum().backward()
    grad = model.taste.weight.grad
    assert torch.all(grad[[0, 2]] == 0), "users outside the batch learn nothing from it"
    assert torch.all(grad[[1, 3]] != 0)


def test_blend_weight_comes_from_validation_rows_only():
    row, label, p_a, p_b = _two_models()
    test_row = np.arange(100, 1100)
    rng = np.random.default_rng(1)
    t_a, t_b = rng.random(1000), rng.random(1000)
    result = choose_blend(row, p_a, row[::-1], p_b[::-1], row, label, test_row, t_a, test_row, t_b)
    assert 0 < result.weight < 1, "two partly independent models blend"
    assert result.valid_auc_blend > max(result.valid_auc_a, result.valid_auc_b)
    # any other test predictions (and test labels are never an input): the same weight
    permuted = rng.permutation(1000)
    other = choose_blend(row, p_a, row, p_b, row, label, test_row, t_a[permuted], test_row[::-1], rng.random(1000))
    assert other.weight == result.weight and other.valid_auc_blend == result.valid_auc_blend
    # but validation labels drive it
    flipped = choose_blend(row, p_a, row, p_b, row, 1 - label, test_row, t_a, test_row, t_b)
    assert flipped.valid_auc_blend != result.valid_auc_blend


def test_a_model_perfect_on_validation_takes_all_the_weight():
    row, label, _, p_b = _two_models()
    perfect = np.where(label == 1, 0.9, 0.1)
    test_row = np.arange(10)
    result = choose_blend(row, perfect, row, p_b, row, label, test_row, np.full(10, 0.2), test_row, np.full(10, 0.7))
    assert result.weight == 1.0 and result.valid_auc_blend == 1.0
    assert np.allclose(result.test_p_click, 0.2)
    swapped = choose_blend(row, p_b, row, perfect, row, label, test_row, np.full(10, 0.7), test_row, np.full(10, 0.2))
    assert swapped.weight == 0.0


def test_a_blend_is_kept_only_when_its_validation_gain_clears_both_bars():
    row, label, p_a, p_b = _two_models()
    blended = choose_weight(p_a, p_b, label)
    assert 0 < blended.weight < 1 and blended.gain > 0.005 and blended.gain / blended.gain_se > 2
    assert blended.decision.startswith("blend: weight")
    # the same rows, with a gain bar above the blend's gain: the better model alone
    costly = choose_weight(p_a, p_b, label, min_gain=blended.gain + 1e-6)
    assert costly.weight == 1.0 and costly.best_grid_weight == blended.weight
    assert costly.valid_auc_blend == costly.valid_auc_a and "below the bars" in costly.decision
    # a second model that is the first plus a whisper of noise: a gain, if any, is not evidence
    rng = np.random.default_rng(5)
    echo = 1 / (1 + np.exp(-(np.log(p_a / (1 - p_a)) + rng.normal(0, 0.05, len(p_a)))))
    noise = choose_weight(p_a, echo, label, min_gain=0.0)
    assert 0 < noise.best_grid_weight < 1 and 0 < noise.gain < 2 * noise.gain_se, "a small, insignificant gain"
    assert noise.weight == 1.0 and "standard errors" in noise.decision
    without_the_error_bar = choose_weight(p_a, echo, label, min_gain=0.0, min_gain_z=0.0)
    assert without_the_error_bar.weight == noise.best_grid_weight


def test_the_blend_refuses_a_network_that_was_not_refitted_when_it_would_use_it():
    from kuai_assets.defs.attention import require_refitted_when_used

    not_refitted = {"refitted": False, "refit_decision": "not refitted: the validation blend does not use the network"}
    require_refitted_when_used(1.0, not_refitted)  # the GBDT alone: nothing of the network is used
    require_refitted_when_used(0.7, {"refitted": True})
    with pytest.raises(BlendError, match="weight 0.30, but `attention_model` was not refitted"):
        require_refitted_when_used(0.7, not_refitted)


def test_the_blend_refuses_predictions_of_different_rows():
    row, label, p_a, p_b = _two_models(n=100)
    with pytest.raises(BlendError, match="cover different rows"):
        choose_blend(row, p_a, row[:-1], p_b[:-1], row, label, row, p_a, row, p_b)
    with pytest.raises(BlendError, match="test rows"):
        choose_blend(row, p_a, row, p_b, row, label, row, p_a, row + 1, p_b)
    with pytest.raises(BlendError, match="within"):
        choose_blend(row, p_a, row, p_b * 2, row, label, row, p_a, row, p_b)


# -- the assets -------------------------------------------------------------------------------------


def test_attention_and_blend_assets_publish_track_and_feed_the_submission(materialized):
    import mlflow
    import pyarrow.parquet as pq
    from mlflow import MlflowClient

    from kuai_assets_tests.test_pipeline import metadata

    result, work = materialized["result"], WorkDir(materialized["work"])
    attention = metadata(result, "attention_model")
    blend = metadata(result, "blend")
    assert 0.6 < attention["valid_auc"] < 1
    assert 0 <= blend["gbdt_weight"] <= 1
    assert blend["valid_auc"] >= max(blend["valid_auc_gbdt"], blend["valid_auc_attention"]) - 1e-12
    assert "| blend |" in blend["side_by_side"] and "attention" in blend["side_by_side"]

    scored = model_rows(work, "validation", "scored")["row_id"]
    test = model_rows(work, "submission", "scored")["row_id"]
    for store in ("model", "attention_model", "blend"):
        folder = work.require_store(store)
        valid = pq.read_table(folder / "validation_predictions.parquet")
        assert np.array_equal(np.sort(valid.column("row_id").to_numpy()), scored), store
        tests = pq.read_table(folder / "test_predictions.parquet")
        assert tests.column_names == ["row_id", "user_id", "photo_id", "p_click"], store
        assert np.array_equal(np.sort(tests.column("row_id").to_numpy()), test), store

    # the submission is the blend's by default, and the evaluation says so
    assert metadata(result, "submission")["source"] == "blend"
    evaluation = metadata(result, "evaluation")
    assert evaluation["submitted"] == "blend"
    assert abs(evaluation["test_auc"] - evaluation["blend_test_auc"]) < 1e-3
    assert "attention_model_test_auc" in evaluation and "model_test_auc" in evaluation

    info = json.loads((work.require_store("attention_model") / "run.json").read_text())
    # the refit was decided by the validation blend with the GBDT, and the blend agrees with it
    assert attention["refitted"] == info["refitted"] and attention["refit_decision"] == info["refit_decision"]
    assert info["blend_check"]["weight"] == blend["gbdt_weight"]
    assert info["refitted"] == (blend["gbdt_weight"] < 1) and blend["decision"] == info["blend_check"]["decision"]
    client = MlflowClient(f"sqlite:///{materialized['work']}/mlflow/mlflow.db")
    run = client.get_run(info["mlflow_run_id"])
    assert run.data.params["history_length"] == "50" and run.data.params["refit"] == "when_blended"
    assert run.data.metrics["refitted"] == int(info["refitted"]) and run.data.tags["refit_decision"] == info["refit_decision"]
    assert "test_auc" in run.data.metrics
    steps = client.get_metric_history(run.info.run_id, "valid_auc_by_epoch")
    assert [m.step for m in steps] == list(range(1, len(info["auc_by_epoch"]) + 1))
    mlflow.set_tracking_uri(f"sqlite:///{materialized['work']}/mlflow/mlflow.db")
    logged = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    example = np.asarray(logged.input_example, dtype=np.float32)
    p = np.asarray(logged.predict(example)).ravel()
    assert p.shape == (len(example),) and ((p > 0) & (p < 1)).all()
    blend_info = json.loads((work.require_store("blend") / "run.json").read_text())
    blend_run = client.get_run(blend_info["mlflow_run_id"])
    assert {"valid_auc", "valid_auc_gbdt", "valid_auc_attention", "gbdt_weight"} <= set(blend_run.data.metrics)


def test_a_network_the_blend_would_not_use_is_not_refitted_and_the_gbdt_is_submitted(materialized, tmp_path,
                                                                                       monkeypatch):
    """... and its MLflow run is RUNNING from the start, holding each epoch's AUC and loss as soon
    as they are known (read here when the refit is being decided, after the epochs)."""
    import shutil

    import dagster as dg
    import pyarrow.parquet as pq
    from mlflow import MlflowClient

    from kuai_assets.definitions import defs
    from kuai_assets.ml.attention import training
    from kuai_assets_tests.conftest import SMALLEST_ATTENTION, make_resources
    from kuai_assets_tests.test_pipeline import metadata

    work_dir = tmp_path / "work"
    # symlinks kept: a published store is a link to its current version
    shutil.copytree(materialized["work"], work_dir, symlinks=True, ignore=shutil.ignore_patterns("dagster_home"))
    work = WorkDir(work_dir)
    client = MlflowClient(f"sqlite:///{work_dir}/mlflow/mlflow.db")
    seen, decide = {}, training.refit_decision

    def watched_decision(*args, **kwargs):
        experiment = client.get_experiment_by_name("kuai_assets").experiment_id
        [running] = client.search_runs([experiment], "attributes.status = 'RUNNING' and tags.dagster_asset = 'attention_model'")
        seen.update(run_id=running.info.run_id,
                    aucs=[(m.step, m.value) for m in client.get_metric_history(running.info.run_id, "valid_auc_by_epoch")],
                    losses=[m.step for m in client.get_metric_history(running.info.run_id, "train_loss_by_epoch")])
        return decide(*args, **kwargs)

    monkeypatch.setattr(training, "refit_decision", watched_decision)
    # a bar no blend can clear: the blend is the GBDT alone, so the network is not refitted
    config = {**SMALLEST_ATTENTION, "min_blend_gain": 1.0}
    result = dg.materialize(
        [*defs.assets], selection=["attention_model", "blend", "submission"],
        resources=make_resources(materialized["data"], work_dir),
        run_config={"ops": {"attention_model": {"config": config}}},
    )
    assert result.success
    attention, blend = metadata(result, "attention_model"), metadata(result, "blend")
    assert attention["refitted"] is False and attention["refit_epochs"] == 0
    assert "not refitted" in attention["refit_decision"] and "below the bars of 1" in attention["refit_decision"]
    assert blend["gbdt_weight"] == 1.0 and "not refitted" in blend["side_by_side"]

    info = json.loads((work.require_store("attention_model") / "run.json").read_text())
    assert info["refitted"] is False and info["min_blend_gain"] == 1.0 and info["rows"]["submission_fit_rows"] == 0
    run = client.get_run(info["mlflow_run_id"])
    assert run.data.metrics["refitted"] == 0
    # live: every epoch's AUC and loss were in the RUNNING run before the refit decision, once each
    epochs = list(range(1, len(info["auc_by_epoch"]) + 1))
    assert seen["run_id"] == run.info.run_id and run.info.status == "FINISHED"
    assert [step for step, _ in seen["aucs"]] == epochs == seen["losses"]
    assert [auc for _, auc in seen["aucs"]] == pytest.approx(info["auc_by_epoch"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_auc_by_epoch")] == epochs
    assert not [d for d in run.inputs.dataset_inputs if "submission/fit" in d.dataset.name], "no refit rows"
    # the network still scores every test row (the validation network), and the submission is the GBDT's
    test = model_rows(work, "submission", "scored")["row_id"]
    network = pq.read_table(work.require_store("attention_model") / "test_predictions.parquet")
    assert np.array_equal(np.sort(network.column("row_id").to_numpy()), test)
    gbdt = pq.read_table(work.require_store("model") / "test_predictions.parquet").to_pandas()
    blended = pq.read_table(work.require_store("blend") / "test_predictions.parquet").to_pandas()
    joined = gbdt.merge(blended, on="row_id", suffixes=("_gbdt", "_blend"))
    assert len(joined) == len(test) and np.allclose(joined.p_click_gbdt, joined.p_click_blend, atol=1e-6)


def test_a_failed_attention_training_ends_its_mlflow_run_failed_and_publishes_nothing(materialized, tmp_path,
                                                                                     monkeypatch):
    """The run opened at the step's start holds the epochs done before the failure, ends FAILED,
    and the published store is the previous one."""
    import shutil

    import dagster as dg
    from mlflow import MlflowClient

    from kuai_assets.definitions import defs
    from kuai_assets.ml.attention import training
    from kuai_assets_tests.conftest import SMALLEST_ATTENTION, make_resources

    work_dir = tmp_path / "work"
    shutil.copytree(materialized["work"], work_dir, symlinks=True, ignore=shutil.ignore_patterns("dagster_home"))
    before = (WorkDir(work_dir).require_store("attention_model") / "run.json").read_text()

    def failing_decision(*args, **kwargs):
        raise ValueError("planted: the refit decision failed")

    monkeypatch.setattr(training, "refit_decision", failing_decision)
    result = dg.materialize(
        [*defs.assets], selection=["attention_model"], raise_on_error=False,
        resources=make_resources(materialized["data"], work_dir),
        run_config={"ops": {"attention_model": {"config": SMALLEST_ATTENTION}}},
    )
    assert not result.success
    client = MlflowClient(f"sqlite:///{work_dir}/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name("kuai_assets").experiment_id
    [run] = client.search_runs([experiment], f"tags.dagster_run_id = '{result.run_id}'")
    assert run.info.status == "FAILED" and run.data.tags["dagster_asset"] == "attention_model"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_auc_by_epoch")] == [1]
    assert (WorkDir(work_dir).require_store("attention_model") / "run.json").read_text() == before
