"""The user's loop against a plain script, in one run: `python -m benchmarks.loop` (from the repo root).

On one dataset (default: generated once at the `default` size, 2,000 users, ~606k train and ~151k
test rows, ~125k photos, world click_blind_timeline, seed 13) it measures, one after the other:

(a) the platform: a fresh workspace (`kuai env --work W --data D`: a new work dir and
    DAGSTER_HOME), then the literal `source W/env.sh && dagster asset materialize --select
    '*submission'` in a shell;
(b) the published top-10 recipe as one plain Python script, written here (`plain_script`): read
    the interactions and the zips of vectors, KMeans with k=100 and k=500 on a sample of the
    vectors, out-of-fold user / cluster / user x cluster click rates, LightGBM with early stopping
    on a time-based validation split, score the test rows, write a submission;
(c) edit-to-AUC: after (a), in a copy of the repo (the repo itself is never modified), one line
    of a SQL feature file is changed, then `dagster asset materialize` of the edited group, the
    training matrix and `model` (the stale part up to the model) runs on (a)'s workspace: the
    seconds until the model's new MLflow run holds its validation AUC (logged before the refit;
    the workspace's SQLite store is read every 0.5 s), and until the materialization ends.
    With `--work W`, (c) and (d) alone run on an existing workspace, e.g. the demo-size one that
    `kuai run --size demo --work W` made;
(d) the same loop through the front door: in a copy of the repo, `kuai run --unsynced` on (a)'s
    workspace, first to bring it up to date with the unedited code, then, for each of
    FRONT_DOOR_EDITS (a context group of the attention network, whose edit keeps only the
    baseline; `user_behaviour`, the base of the ablation's "alone" variants, whose edit keeps the
    network too; and `text_stats`, neither, whose edit keeps those and half the ablation's
    variants), after the edit and
    after its revert: the run's wall time, when it printed the evaluation's AUCs, the models it
    kept, and the ablation's seconds with the number of its variants kept.

Each is a child process tree: wall time, the peak of the summed resident memory of the
process and all its descendants (psutil, sampled every 0.2 s), and the tree's CPU time (user and
system; for (a) against (b), also what (a)'s work would take on every core all the time). Each
submission is scored against the ground truth afterwards, outside the timings. Figures print at
the end and go to `<out>/loop_results.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kuai_assets import settings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

DEFAULT_DATA = dict(size="default", world="click_blind_timeline", seed=13)
SELECTION = "*submission"
EDITED_FILE = "dbt_like_sql/features/time_and_duration.sql"
EDIT = ("greatest(u.user_duration_mean, 1)", "greatest(u.user_duration_mean, 2)")
FRONT_DOOR_EDITS = (
    (EDITED_FILE, EDIT),
    ("dbt_like_sql/features/user_behaviour.sql",
     ("((o.clicks + 20 * p.click_rate) / (o.impressions + 20))", "((o.clicks + 30 * p.click_rate) / (o.impressions + 30))")),
    ("dbt_like_sql/features/text_stats.sql", ("avg((d.photos < 5)::integer)", "avg((d.photos < 10)::integer)")),
)


# -- measuring a process tree ---------------------------------------------------------------------


def run_tree(argv: list[str], env: dict[str, str], cwd: Path, log: Path, every: float = 0.2) -> dict:
    """Run `argv` to its end (output to `log`); its wall time, whole-tree peak resident memory and
    CPU time: user and system seconds of the process and of every descendant it waited for
    (getrusage's RUSAGE_CHILDREN, before and after; this process starts no other child meanwhile),
    and the share of the machine's CPU time its host took meanwhile (steal)."""
    import resource

    from benchmarks.scale import TreeMemory, machine_cpu_times, stolen_share

    before, machine_before = resource.getrusage(resource.RUSAGE_CHILDREN), machine_cpu_times()
    with open(log, "w") as out:
        started = time.time()
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        memory = TreeMemory(process.pid, every=every)
        code = process.wait()
        seconds = time.time() - started
        peak_mb = memory.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"seconds": round(seconds, 1), "peak_mb": round(peak_mb), "peak_gib": round(peak_mb / 1024, 2), "ok": code == 0,
            "cpu_seconds": round(user + system, 1), "cpu_user": round(user, 1), "cpu_system": round(system, 1),
            "cpu_stolen_share": stolen_share(machine_before, machine_cpu_times()), "log": str(log)}


def child_env(repo: Path) -> dict[str, str]:
    """The environment of a child: this one, with `repo` first on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUAI_", "DAGSTER_", "MLFLOW_TRACKING"))}
    env["PYTHONPATH"] = str(repo) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def score(data: Path, submission: Path) -> float | None:
    from kuai_assets.ml.evaluation import score_predictions

    truth = data / "ground_truth" / "test_ground_truth.txt"
    if not truth.is_file() or not submission.is_file():
        return None
    return round(score_predictions(truth, submission_file=submission).auc, 4)


# -- (a) the platform -------------------------------------------------------------------------------


def platform_run(repo: Path, data: Path, work: Path, log_dir: Path) -> dict:
    if work.exists():
        shutil.rmtree(work)
    env = child_env(repo)
    made = subprocess.run([sys.executable, "-m", "kuai_assets.cli", "env", "--work", str(work), "--data", str(data)],
                          env=env, cwd=repo, capture_output=True, text=True)
    if made.returncode:
        raise SystemExit(f"kuai env failed: {made.stderr}")
    command = f"source {work / settings.ENV_SCRIPT} && dagster asset materialize --select '{SELECTION}'"
    print(f"[loop] (a) {command}", flush=True)
    result = run_tree(["bash", "-c", command], env, repo, log_dir / "platform.log")
    result["command"] = command
    info = json.loads((work / "stores" / "model" / "run.json").read_text()) if result["ok"] else {}
    result["model_valid_auc"] = round(info["valid_auc"], 4) if info else None
    result["test_auc"] = score(data, work / "submission.txt")
    source = work / "submission_source.json"
    result["submitted"] = json.loads(source.read_text())["source"] if source.is_file() else None
    result["steps"] = step_times(work)
    return result


def step_times(work: Path) -> list[dict]:
    """Each step of the latest run in the workspace's Dagster instance: its wall time."""
    import dagster as dg

    home = work / "dagster_home"
    if not home.is_dir():
        return []
    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            return []
        stats = instance.get_run_step_stats(runs[0].run_id)
    return sorted(
        ({"step": s.step_key, "seconds": round((s.end_time or 0) - (s.start_time or 0), 1)} for s in stats),
        key=lambda s: -s["seconds"],
    )


# -- (b) the plain script -----------------------------------------------------------------------------


def plain_script(data: Path, out: Path, seed: int = 7, sample_share: float = 0.1, ks: tuple[int, int] = (100, 500)) -> dict:
    """The published top-10 recipe, as a person would write it in one script (pandas, sklearn,
    LightGBM): no Dagster, no MLflow, no caching. Returns its validation AUC and timings.

    KMeans fits on `sample_share` of the photos' raw vectors with at most 30 iterations (the
    platform's own sample share and cap, which it applies to 64 principal components instead).
    """
    import lightgbm as lgb
    import numpy as np
    import pandas as pd
    from sklearn.cluster import KMeans
    from sklearn.metrics import roc_auc_score

    seconds, started = {}, time.time()
    train = pd.read_csv(data / "train" / "train_interaction.txt", sep="\t", header=None,
                        names=["user_id", "photo_id", "click", "like", "follow", "time", "playing_time", "duration_time"])
    test = pd.read_csv(data / "test" / "test_interaction.txt", sep="\t", header=None,
                       names=["user_id", "photo_id", "time", "duration_time"])
    seconds["read_interactions"] = round(time.time() - started, 1)
    print(f"[script] read_interactions {seconds['read_interactions']} s", flush=True)

    started = time.time()
    ids, blocks = [], []
    for split in ("train", "test"):
        (zip_path,) = sorted((data / split).glob("*_visual_*.zip"))
        with np.load(zip_path) as vectors:
            names = vectors.files
            block = None
            for i, name in enumerate(names):
                vector = vectors[name].reshape(-1)
                if block is None:
                    block = np.empty((len(names), vector.shape[0]), dtype=np.float32)
                block[i] = vector
        ids.append(np.array([int(n.rsplit("/", 1)[-1]) for n in names], dtype=np.int64))
        blocks.append(block)
    photo_id, vectors = np.concatenate(ids), np.concatenate(blocks)
    del blocks
    seconds["read_vectors"] = round(time.time() - started, 1)
    print(f"[script] read_vectors {seconds['read_vectors']} s", flush=True)

    started = time.time()
    rng = np.random.default_rng(seed)
    fit_rows = vectors[rng.choice(len(vectors), size=int(sample_share * len(vectors)), replace=False)]
    clusters = pd.DataFrame({"photo_id": photo_id})
    for k in ks:
        kmeans = KMeans(n_clusters=k, n_init=1, max_iter=30, random_state=seed).fit(fit_rows)
        clusters[f"c{k}"] = np.concatenate([kmeans.predict(vectors[i : i + 20_000]) for i in range(0, len(vectors), 20_000)])
    del vectors, fit_rows
    seconds["kmeans"] = round(time.time() - started, 1)
    print(f"[script] kmeans {seconds['kmeans']} s", flush=True)

    started = time.time()
    train = train.merge(clusters, on="photo_id", how="left")
    test = test.merge(clusters, on="photo_id", how="left")
    train["fold"] = rng.integers(0, 5, len(train))
    keys = {"user": ["user_id"], **{f"cluster_{k}": [f"c{k}"] for k in ks},
            **{f"user_cluster_{k}": ["user_id", f"c{k}"] for k in ks}}
    for name, by in keys.items():
        total = train.groupby(by)["click"].agg(t_sum="sum", t_n="count").reset_index()
        part = train.groupby(by + ["fold"])["click"].agg(p_sum="sum", p_n="count").reset_index()
        rows = train[by + ["fold"]].merge(total, on=by, how="left").merge(part, on=by + ["fold"], how="left")
        n = rows["t_n"] - rows["p_n"]
        train[f"{name}_click_rate"] = ((rows["t_sum"] - rows["p_sum"]) / n.where(n > 0)).to_numpy()
        train[f"{name}_rows"] = n.to_numpy()
        seen = test[by].merge(total, on=by, how="left")
        test[f"{name}_click_rate"] = (seen["t_sum"] / seen["t_n"]).to_numpy()
        test[f"{name}_rows"] = seen["t_n"].fillna(0).to_numpy()
    for frame in (train, test):
        frame["hour"] = (frame["time"] // 3_600_000) % 24
    features = [c for c in train.columns if c.endswith(("_click_rate", "_rows"))] + ["hour", "duration_time"]
    seconds["features"] = round(time.time() - started, 1)
    print(f"[script] features {seconds['features']} s", flush=True)

    started = time.time()
    cut = train["time"].quantile(0.8)
    fit, valid = train[train["time"] < cut], train[train["time"] >= cut]
    params = {"objective": "binary", "metric": "auc", "learning_rate": 0.1, "num_leaves": 63, "min_data_in_leaf": 200,
              "feature_fraction": 0.7, "bagging_fraction": 0.5, "bagging_freq": 1, "verbosity": -1, "seed": seed}
    booster = lgb.train(params, lgb.Dataset(fit[features], fit["click"]), num_boost_round=1000,
                        valid_sets=[lgb.Dataset(valid[features], valid["click"])],
                        callbacks=[lgb.early_stopping(30, verbose=False)])
    valid_auc = roc_auc_score(valid["click"], booster.predict(valid[features], num_iteration=booster.best_iteration))
    seconds["lightgbm"] = round(time.time() - started, 1)
    print(f"[script] lightgbm {seconds['lightgbm']} s", flush=True)

    started = time.time()
    probability = booster.predict(test[features], num_iteration=booster.best_iteration)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for u, p, q in zip(test["user_id"].to_numpy(), test["photo_id"].to_numpy(), probability):
            f.write(f"{u}\t{p}\t{q:.6f}\n")
    seconds["score_and_write"] = round(time.time() - started, 1)
    print(f"[script] score_and_write {seconds['score_and_write']} s", flush=True)
    return {"valid_auc": round(float(valid_auc), 4), "best_iteration": booster.best_iteration, "seconds": seconds}


def script_run(repo: Path, data: Path, out: Path, log_dir: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    argv = [sys.executable, "-m", "benchmarks.loop", "--plain-script", "--data", str(data), "--out", str(out)]
    print("[loop] (b) the plain script: " + " ".join(argv[1:]), flush=True)
    result = run_tree(argv, child_env(repo), repo, log_dir / "script.log")
    marked = [line for line in Path(result["log"]).read_text().splitlines() if line.startswith("SCRIPT ")]
    reported = json.loads(marked[-1][len("SCRIPT "):]) if marked else {}
    result.update(valid_auc=reported.get("valid_auc"), best_iteration=reported.get("best_iteration"),
                  phases=reported.get("seconds"))  # "seconds" stays the wall time of the whole process
    result["test_auc"] = score(data, out / "submission.txt")
    return result


# -- (c) edit to AUC ----------------------------------------------------------------------------------


def repo_copy(repo: Path, to: Path) -> Path:
    """The repo's tracked and untracked-but-not-ignored files, copied to `to`."""
    if to.exists():
        shutil.rmtree(to)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = repo / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)
    return to


def stale_up_to_model(group: str) -> list[str]:
    """The assets downstream of `group` and upstream of `model` (both included)."""
    import dagster as dg

    from kuai_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    down = dg.AssetSelection.assets(group).downstream().resolve(graph)
    up = dg.AssetSelection.assets("model").upstream().resolve(graph)
    return sorted(key.to_user_string() for key in down & up)


class AucWatch:
    """Polls the workspace's MLflow store (SQLite, read only) for a `model` run started after now
    that holds a valid_auc: `stop()` returns the seconds until one did (None if none did)."""

    QUERY = """select 1 from runs r
        join tags t on t.run_uuid = r.run_uuid and t.key = 'dagster_asset' and t.value = 'model'
        join latest_metrics m on m.run_uuid = r.run_uuid and m.key = 'valid_auc'
        where r.start_time >= ? limit 1"""

    def __init__(self, store: Path, every: float = 0.5):
        import threading

        self.store, self.every, self.started, self.seconds = store, every, time.time(), None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import sqlite3

        since = int(self.started * 1000)
        while not self._done.is_set() and self.seconds is None:
            try:
                con = sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=1)
                try:
                    if con.execute(self.QUERY, [since]).fetchone():
                        self.seconds = round(time.time() - self.started, 1)
                finally:
                    con.close()
            except sqlite3.Error:
                pass  # busy or being written: the next poll
            self._done.wait(self.every)

    def stop(self) -> float | None:
        self._done.set()
        self._thread.join()
        return self.seconds


def edit_in_copy(sql: Path, old: str, new: str) -> str:
    """Replace `old` by `new` once in `sql` (a file of a repo copy, never the repo); its text before."""
    text = sql.read_text()
    if old not in text:
        raise SystemExit(f"{sql.name} no longer contains {old!r}: update the edits in benchmarks/loop.py")
    sql.write_text(text.replace(old, new, 1))
    return text


def edit_to_auc(repo: Path, data: Path, work: Path, scratch: Path, log_dir: Path) -> dict:
    copy = repo_copy(repo, scratch / "repo_copy")
    before = json.loads((work / "stores" / "model" / "run.json").read_text())
    selection = ",".join(stale_up_to_model(Path(EDITED_FILE).stem))
    edit_in_copy(copy / EDITED_FILE, *EDIT)
    command = f"source {work / settings.ENV_SCRIPT} && dagster asset materialize --select '{selection}'"
    print(f"[loop] (c) edited {EDITED_FILE} ({EDIT[0]} -> {EDIT[1]}) in a copy; {command}", flush=True)
    watch = AucWatch(work / "mlflow" / "mlflow.db")
    result = run_tree(["bash", "-c", command], child_env(copy), copy, log_dir / "edit.log")
    result["seconds_to_valid_auc_in_mlflow"] = watch.stop()
    after = json.loads((work / "stores" / "model" / "run.json").read_text())
    result.update(command=command, selection=selection, edited=EDITED_FILE, edit=" -> ".join(EDIT))
    result["new_mlflow_run"] = after["mlflow_run_id"] != before["mlflow_run_id"]
    if result["new_mlflow_run"]:
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{work}/mlflow/mlflow.db")
        run = client.get_run(after["mlflow_run_id"])
        result["valid_auc"] = round(run.data.metrics["valid_auc"], 4)
        result["valid_auc_before"] = round(before["valid_auc"], 4)
    shutil.rmtree(copy)
    return result


def kuai_run_unsynced(copy: Path, work: Path, log: Path, label: str) -> dict:
    """`kuai run --unsynced --work W` with the copy's code: wall time, peak, and how many seconds
    into the run it printed the evaluation's AUCs (`[kuai] evaluated N s into the run`), if it did."""
    import re

    print(f"[loop] (d) {label}: kuai run --unsynced", flush=True)
    result = run_tree([sys.executable, "-m", "kuai_assets.cli", "run", "--unsynced", "--work", str(work)],
                      child_env(copy), copy, log)
    text = log.read_text()
    evaluated = re.search(r"^\[kuai\] evaluated (\d+) s into the run", text, re.MULTILINE)
    planned = re.search(r"^\[kuai\] (\d+) of \d+ assets to materialize", text, re.MULTILINE)
    kept = re.findall(r" - (\w+): kept, nothing it learns from changed", text)
    variants_kept = re.search(r"ablation: kept (\d+) of (\d+) variants", text)
    ablation = next((s["seconds"] for s in step_times(work) if s["step"] == "feature_group_ablation"), None)
    return {"label": label, "seconds": result["seconds"], "peak_gib": result["peak_gib"], "ok": result["ok"],
            "assets": int(planned.group(1)) if planned else 0,
            "evaluated_after": int(evaluated.group(1)) if evaluated else None, "kept": kept,
            "ablation_seconds": ablation, "variants_kept": int(variants_kept.group(1)) if variants_kept else 0}


def front_door(repo: Path, work: Path, scratch: Path, log_dir: Path) -> list[dict]:
    copy = repo_copy(repo, scratch / "repo_copy")
    runs = [kuai_run_unsynced(copy, work, log_dir / "front_door_sync.log", "up to date with the unedited code")]
    for name, (old, new) in FRONT_DOOR_EDITS:
        stem = Path(name).stem
        text = edit_in_copy(copy / name, old, new)
        runs.append(kuai_run_unsynced(copy, work, log_dir / f"front_door_{stem}.log", f"after an edit of {stem}"))
        (copy / name).write_text(text)
        runs.append(kuai_run_unsynced(copy, work, log_dir / f"front_door_{stem}_revert.log", "after its revert"))
    shutil.rmtree(copy)
    return runs


# -- the benchmark ------------------------------------------------------------------------------------


def ensure_data(data: Path) -> Path:
    if data.exists():
        return data
    data.parent.mkdir(parents=True, exist_ok=True)
    print(f"[loop] generating {DEFAULT_DATA} into {data}", flush=True)
    subprocess.run([sys.executable, "-m", "kuai_assets.synth", "--size", DEFAULT_DATA["size"], "--world",
                    DEFAULT_DATA["world"], "--seed", str(DEFAULT_DATA["seed"]), "--out", str(data)], check=True)
    return data


def workspace_data(work: Path) -> Path:
    """The data dir a workspace records (KUAI_DATA_DIR in its .env)."""
    recorded = settings.read_workspace_file(work).get("KUAI_DATA_DIR")
    if not recorded:
        raise SystemExit(f"{work}: its .env records no KUAI_DATA_DIR")
    return Path(recorded)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default <repo>/.kuai/bench/loop)")
    parser.add_argument("--data", type=Path, default=None, help="dataset (default <out>/data, generated once)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: platform, script, edit, frontdoor")
    parser.add_argument("--work", type=Path, default=None,
                        help="measure only (c) and (d), less --skip, on this existing workspace (one `kuai run --work W` "
                             "made, e.g. at --size demo); its data dir is the one W/.env records. Default: (a)'s fresh "
                             "<out>/work")
    parser.add_argument("--plain-script", action="store_true", help=argparse.SUPPRESS)  # (b)'s child
    args = parser.parse_args(argv)
    if args.plain_script:
        result = plain_script(args.data, args.out / "submission.txt")
        print("SCRIPT " + json.dumps(result), flush=True)
        return 0

    repo = settings.REPO_ROOT
    out = (args.out or settings.default_work_dir() / "bench" / "loop").absolute()
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    if args.work is not None:  # (c) alone, on a workspace made elsewhere
        work = args.work.absolute()
        if not (work / "stores" / "model" / "run.json").is_file():
            raise SystemExit(f"{work}: no materialized model in this workspace (run `kuai run --work {work}` first)")
        data, skip = workspace_data(work), skip | {"platform", "script"}
    else:
        data, work = ensure_data((args.data or out / "data").absolute()), out / "work"
    import psutil

    results: dict = {"data": str(data), "machine": {"cpus": os.cpu_count(),
                                                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)},
                     "load_average_before": os.getloadavg()}
    if "platform" not in skip:
        results["platform"] = platform_run(repo, data, work, out)
        print(f"[loop] (a) platform: {json.dumps({k: v for k, v in results['platform'].items() if k != 'steps'})}",
              flush=True)
    if "script" not in skip:
        results["script"] = script_run(repo, data, out / "script", out)
        print(f"[loop] (b) script: {json.dumps(results['script'])}", flush=True)
    if "edit" not in skip and (work / "stores" / "model" / "run.json").is_file():
        results["edit_to_auc"] = edit_to_auc(repo, data, work, out, out)
        print(f"[loop] (c) edit to AUC: {json.dumps(results['edit_to_auc'])}", flush=True)
    if "frontdoor" not in skip and (work / "stores" / "model" / "run.json").is_file():
        results["front_door"] = front_door(repo, work, out, out)
    results["load_average_after"] = os.getloadavg()
    (out / "loop_results.json").write_text(json.dumps(results, indent=2))

    platform, script = results.get("platform"), results.get("script")
    print("\n| | wall | whole-tree peak | validation AUC | test AUC |\n|---|---|---|---|---|")
    if platform:
        print(f"| `dagster asset materialize --select '{SELECTION}'` | {platform['seconds']:.0f} s | "
              f"{platform['peak_gib']:.2f} GiB | {platform['model_valid_auc']} (model) | {platform['test_auc']} "
              f"({platform['submitted']}) |")
    if script:
        print(f"| the published recipe as one script | {script['seconds']:.0f} s | {script['peak_gib']:.2f} GiB | "
              f"{script.get('valid_auc')} (its own split) | {script['test_auc']} |")
    if platform and script:
        print(f"\nspeed: the platform runs {script['seconds'] / platform['seconds']:.2f}x as fast as the script; "
              f"peak memory {platform['peak_mb'] / script['peak_mb']:.2f}x the script's")
        cores = os.cpu_count() or 1
        floor = platform["cpu_seconds"] / cores
        print(f"work: the platform used {platform['cpu_seconds']:.0f} CPU-seconds ({platform['cpu_user']:.0f} user, "
              f"{platform['cpu_system']:.0f} system; {platform['cpu_seconds'] / platform['seconds']:.2f} of {cores} cores), "
              f"the script {script['cpu_seconds']:.0f} ({script['cpu_user']:.0f}, {script['cpu_system']:.0f}; "
              f"{script['cpu_seconds'] / script['seconds']:.2f}): {platform['cpu_seconds'] / script['cpu_seconds']:.1f}x "
              f"the script's work. Doing that work on all {cores} cores all the time would take {floor:.0f} s, "
              f"{script['seconds'] / floor:.2f}x the script's speed")
    if "edit_to_auc" in results:
        e = results["edit_to_auc"]
        share = f" ({e['seconds'] / platform['seconds']:.0%} of the full run)" if platform else ""
        to_auc = e.get("seconds_to_valid_auc_in_mlflow")
        print(f"edit to the validation AUC in MLflow: {to_auc} s; the materialization ends after {e['seconds']:.0f} s"
              f"{share}, peak {e['peak_gib']:.2f} GiB; validation AUC {e.get('valid_auc_before')} -> {e.get('valid_auc')} "
              f"(new MLflow run: {e['new_mlflow_run']})")
    if results.get("front_door"):
        print("\n| `kuai run --unsynced` | assets | wall | the evaluation's AUCs printed after | kept | the ablation "
              "(variants kept) |\n|---|---|---|---|---|---|")
        for run in results["front_door"]:
            after = f"{run['evaluated_after']} s" if run["evaluated_after"] is not None else "(at the end)"
            ablation = f"{run['ablation_seconds']:.0f} s ({run['variants_kept']})" if run.get("ablation_seconds") else "-"
            print(f"| {run['label']} | {run['assets']} | {run['seconds']:.0f} s | {after} | {', '.join(run['kept']) or '-'} "
                  f"| {ablation} |")
    if platform and platform["steps"]:
        print("slowest steps of (a): " + ", ".join(f"{s['step']} {s['seconds']:.0f} s" for s in platform["steps"][:8]))
    return 0 if all(r.get("ok", True) for r in (platform or {}, script or {}, *results.get("front_door", []))) else 1


if __name__ == "__main__":
    sys.exit(main())
