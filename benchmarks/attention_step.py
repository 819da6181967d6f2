"""The attention network's training step, timed alone: `python -m benchmarks.attention_step --work W`.

On a workspace whose graph is materialized up to the attention model's inputs (e.g. the one
`python -m benchmarks.loop` leaves in <out>/work, or any `kuai run --work W`), it builds the
validation setup's histories and fit targets as `attention_model` does, then times `--steps`
gradient steps of `--batch-size` targets (after 5 warm-up steps) with torch on `--threads`
threads, and prints the milliseconds per step, the share of it spent building the batch, and the
operators that took the most time (torch's profiler, 10 more steps). Compare two commits by
running it on each in one session: the machines here are shared, so read ratios.
"""

from __future__ import annotations

import argparse
import time
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
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the validation epochs train on one)")
    parser.add_argument("--profile", action="store_true", help="also print torch's operator table")
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
    batches = training.epoch_batches(fit.user_id, fit.time, (args.steps + 15) * args.batch_size, args.batch_size,
                                     np.random.default_rng(1))

    def step(rows):
        batch = data.batch(prepared, rows)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch), torch.from_numpy(fit.click[rows]))
        loss.backward()
        optimizer.step()

    model.train()
    for rows in batches[:5]:
        step(rows)
    timed = batches[5 : 5 + args.steps]
    started = time.perf_counter()
    for rows in timed:
        step(rows)
    per_step = (time.perf_counter() - started) / len(timed)
    started = time.perf_counter()
    for rows in timed:
        data.batch(prepared, rows)
    building = (time.perf_counter() - started) / len(timed)
    print(f"{args.batch_size} targets per step, torch on {args.threads} thread(s): {per_step * 1000:.1f} ms per step "
          f"({building * 1000:.1f} ms of it building the batch), {len(fit):,} fit rows")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for rows in batches[5 + args.steps : 15 + args.steps]:
                step(rows)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
