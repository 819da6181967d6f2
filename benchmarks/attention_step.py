"""The attention network's training step, timed alone: `python -m benchmarks.attention_step --work W`.

On a workspace whose graph is materialized up to the attention model's inputs (e.g. the one
`python -m benchmarks.loop` leaves in <out>/work, or any `kuai run --work W`), it builds the
validation setup's histories and fit targets as `attention_model` does, then times `--steps`
gradient steps of `--batch-size` targets (after 5 warm-up steps), in one run: as one pass with
torch on one thread and on `--threads` threads, and cut into `--shards` shards on threads of their own (torch on
one thread each: what `attention_model` does on the CPU, `step_shards`). It
prints the milliseconds per step of each, their ratio, the share spent building the batch, and
with `--profile` the operators that took the most time (torch's profiler, 10 more one-pass
steps). Then it times the scoring (`training.predict`, forward only) of the validation's scored
rows in batches of each of `--scoring-batches` rows: as `predict` does, each batch with torch on
one thread, the batches on one thread (as each epoch is scored beside the training) and on
`--threads` (as the test is scored); and, for comparison, one batch at a time with torch sharing
each batch's operations among `--threads` threads. It prints the largest difference of each from
the first. Compare two commits by running it on each in one session: the machines here are shared,
so read ratios.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from kuai_assets.ml.attention import training
    from kuai_assets.ml.attention.history import build_history
    from kuai_assets.ml.attention.inputs import context_features, load_photos, load_targets
    from kuai_assets.storage import WorkDir

    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a materialized workspace")
    parser.add_argument("--batch-size", type=int, default=training.AttentionParams().batch_size)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in all (default: every core)")
    parser.add_argument("--shards", type=int, default=training.AttentionParams().step_shards,
                        help="shards of a step, each on a thread of its own")
    parser.add_argument("--profile", action="store_true", help="also print torch's operator table")
    parser.add_argument("--scoring-batches", default="4096,1024,512",
                        help="comma list of batch sizes for the scoring (default 4096,1024,512)")
    args = parser.parse_args(argv)

    params = training.AttentionParams(batch_size=args.batch_size)
    work = WorkDir(args.work)
    torch.set_num_threads(args.threads)
    photos = load_photos(work, params.words_per_photo, params.word_buckets)
    features = context_features(work, list(params.context_groups))
    users = training.model_users(work)
    fit = load_targets(work, "validation", "fit", features)
    data = training.SetupData(photos, build_history(work, "validation", params.history_length), users, torch.device("cpu"))
    prepared = data.prepare(fit)
    shape = training._shape(params, photos, len(users), len(features))
    model = training._new_model(shape, photos, fit, params, torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate, fused=True)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batches = training.epoch_batches(fit.user_id, fit.time, (2 * args.steps + 25) * args.batch_size, args.batch_size,
                                     np.random.default_rng(1))

    def step(rows):
        batch = data.batch(prepared, rows)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch), torch.from_numpy(fit.click[rows]))
        loss.backward()
        optimizer.step()

    pool = ThreadPoolExecutor(args.shards)

    def sharded_step(rows):
        optimizer.zero_grad(set_to_none=True)
        generators = training.shard_generators(params, 1, 0, args.shards, torch.device("cpu"))
        training.step_gradient(model, data, prepared, fit, rows, generators, pool)
        optimizer.step()

    def per_step(fn, chosen, threads) -> float:
        torch.set_num_threads(threads)
        for rows in batches[:5]:
            fn(rows)
        started = time.perf_counter()
        for rows in chosen:
            fn(rows)
        return (time.perf_counter() - started) / len(chosen)

    model.train()
    timed = batches[5 : 5 + args.steps]
    one_thread = per_step(step, timed, 1)
    one_pass = per_step(step, timed, args.threads)
    sharded = per_step(sharded_step, batches[5 + args.steps : 5 + 2 * args.steps], 1)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    for rows in timed:
        data.batch(prepared, rows)
    building = (time.perf_counter() - started) / len(timed)
    print(f"{args.batch_size} targets per step, {len(fit):,} fit rows; {building * 1000:.1f} ms of a step builds the batch")
    print(f"one pass, torch on 1 thread: {one_thread * 1000:.1f} ms per step")
    print(f"one pass, torch on {args.threads} thread(s): {one_pass * 1000:.1f} ms per step")
    print(f"{args.shards} shards on threads of their own, torch on 1 thread "
          f"each: {sharded * 1000:.1f} ms per step ({one_thread / sharded:.2f}x the one pass on 1 thread, "
          f"{one_pass / sharded:.2f}x on {args.threads})")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for rows in batches[5 + 2 * args.steps : 15 + 2 * args.steps]:
                step(rows)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    scored = load_targets(work, "validation", "scored", features)
    scored_prepared = data.prepare(scored)
    model.eval()
    first = None

    def shared_operations(size: int) -> np.ndarray:
        """The batches one after the other, torch sharing each batch's operations among its threads."""
        out = np.empty(len(scored), dtype=np.float64)
        order = np.lexsort((scored.time, scored.user_id))
        with torch.no_grad():
            for begin in range(0, len(order), size):
                rows = order[begin : begin + size]
                out[rows] = torch.sigmoid(model(data.batch(scored_prepared, rows))).double().numpy()
        return out

    ways = [(f"batches on {w} thread(s), torch on 1 thread each",
             lambda size, w=w: training.predict(model, data, scored_prepared, scored, batch_size=size, workers=w))
            for w in sorted({1, args.threads})]
    ways.append((f"one batch at a time, torch on {args.threads} thread(s)", shared_operations))
    for name, way in ways:
        for size in [int(b) for b in args.scoring_batches.split(",")]:
            torch.set_num_threads(args.threads)
            way(size)  # warm-up
            started = time.perf_counter()
            prediction = way(size)
            seconds = time.perf_counter() - started
            first = prediction if first is None else first
            print(f"scoring {len(scored):,} rows in batches of {size}, {name}: {seconds:.2f} s "
                  f"({seconds / len(scored) * 1e6:.1f} us a row; largest difference from the first: "
                  f"{np.abs(prediction - first).max():.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
