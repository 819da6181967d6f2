"""How close the platform comes to the oracle in each generative world of the synthetic generator.

    python benchmarks/quality.py --size demo [--worlds a,b] [--out DIR] [--seed 7] [--without feature_group_ablation]
        [--drop-group NAME] [--attention-config JSON]
    python benchmarks/quality.py --data DIR[,DIR...] [--out DIR] [...]

With --data, the datasets are given instead of generated: folders in the released layout with a
ground truth beside them (`ground_truth/test_ground_truth.txt`: user_id, photo_id, click, p_click,
tab-separated; e.g. written by `benchmarks/independent_world.py` or another generator). Each is
named by its folder; its oracle AUC is p_click's AUC on those clicks.

For each world: generate the dataset under OUT/data/<size>-<world>-seed<seed> (reused when it is
already there and its summary names the same size, world and seed), then materialize the whole
Dagster graph of `kuai_assets.definitions.defs` in a child process with `dagster.materialize`, the
resources pointing at that dataset and at a fresh work dir OUT/work/<size>-<world>-seed<seed>.
Each world runs in its own process, so one world failing or running out of memory leaves the others.

Printed per world: the oracle AUC (true click probabilities) on the test rows, and on the
validation's scored rows where the dataset gives every train row's probability
(`ground_truth/train_p_click.txt`, as the generators in `benchmarks/` write it: "oracle valid"), and
for each model asset present in the graph (`model`, the GBDT; `attention_model`; `blend`; and
`baseline_model` for reference) its validation AUC (materialization metadata `valid_auc`), its test
AUC (the `evaluation` asset's figure of that model, else its stored test predictions scored against
the ground truth), the closure of the oracle gap (AUC - 0.5) / (oracle - 0.5) and validation - test;
whether the attention network was refitted and the blend's GBDT weight; the wall time of generation
and of the graph. Figures go to OUT/quality-<size>.json as well (with the model's gain by feature
group and the feature_group_ablation table), and a Markdown table ends the output. Figures of worlds
measured earlier into the same OUT are kept and reprinted. With --drop-group NAME, `model` is then
refitted without that feature group in the same work dir (blend, submission and evaluation follow;
every table and the attention model are reused, the network refitted in the first pass whatever the
blend chose): a second row per world, "<world> without NAME", shows what the group adds on
validation and test in one run. --attention-config '{"batch_size": 2048}' sets attention_model's
config (in both passes) for comparing its settings across worlds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

MODEL_ASSETS = ["model", "attention_model", "blend", "baseline_model"]
EXTRA_COLUMNS = {"attention_model": ["attention_model refitted"], "blend": ["blend GBDT weight"]}
MARK = "QUALITY_RESULT "


def dataset(out: Path, size: str, world: str, seed: int, vector_dim: int | None) -> tuple[Path, dict, float]:
    """The world's dataset (generated unless a matching one is there), its summary, generation seconds."""
    from kuai_assets.synth import generate, get_size, get_world

    name = f"{size}-{world}-seed{seed}" + (f"-d{vector_dim}" if vector_dim else "")
    root = out / "data" / name
    summary_file = root / "ground_truth" / "summary.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        if (summary.get("size"), summary.get("world", "demo"), summary.get("seed")) != (size, world, seed):
            raise SystemExit(f"{root} holds size/world/seed {summary.get('size')}/{summary.get('world')}/"
                             f"{summary.get('seed')}, not {size}/{world}/{seed}; remove it or choose another --out")
        switches = get_world(world).switches()
        if summary.get("world_switches", {}) != json.loads(json.dumps(switches)):
            raise SystemExit(f"{root} was generated with the switches {summary.get('world_switches')}, but world "
                             f"{world!r} now has {switches}; remove it to regenerate")
        return root, summary, 0.0
    spec = get_size(size)
    if vector_dim:
        spec = spec.with_vector_dim(vector_dim)
    root.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    summary = generate(root, spec, seed=seed, world=world)
    return root, summary, time.time() - started


def given_dataset(root: Path) -> tuple[Path, dict, float]:
    """A dataset not written by this run (--data): its oracle AUC from its ground truth file
    (ValueError naming the folder when it has none)."""
    import duckdb

    from kuai_assets.formats.released import read_ground_truth
    from kuai_assets.ml.metrics import roc_auc

    truth = root / "ground_truth" / "test_ground_truth.txt"
    if not truth.is_file():
        raise ValueError(f"{root} has no ground_truth/test_ground_truth.txt (user_id, photo_id, click, p_click): "
                         "the closure needs the true click probabilities")
    con = duckdb.connect()
    try:
        read_ground_truth(con, truth)
        rows = con.execute("select click, p_click from ground_truth").fetchnumpy()
    finally:
        con.close()
    return root, {"oracle_auc": roc_auc(rows["click"], rows["p_click"])}, 0.0


def validation_oracle_auc(data: Path, work: Path) -> float | None:
    """The true click probability's AUC on the validation's scored rows, when the dataset gives every
    train row's probability (`ground_truth/train_p_click.txt`: user_id, photo_id, time, p_click, one
    line per train row in the train file's order, as the generators in `benchmarks/` write it); None
    without that file or without the work dir's model_rows. Beside the test's oracle it tells how
    much of validation - test is the rows' own difference rather than the model's misreading."""
    import duckdb
    import pandas as pd

    from kuai_assets.ml.metrics import roc_auc
    from kuai_assets.storage import sql_string

    truth_file = data / "ground_truth" / "train_p_click.txt"
    tables = work / "tables"
    if not truth_file.is_file() or not (tables / "model_rows.parquet").is_file():
        return None
    truth = pd.read_csv(truth_file, sep="\t", header=None, names=["user_id", "photo_id", "time", "p_click"])
    con = duckdb.connect()
    try:
        train = con.execute(
            f"select r.row_id, r.user_id, r.photo_id, r.time, r.click, "
            f"(m.row_id is not null) as scored "
            f"from read_parquet({sql_string(tables / 'raw_interactions.parquet')}) r "
            f"left join (select row_id from read_parquet({sql_string(tables / 'model_rows.parquet')}) "
            f"where setup = 'validation' and role = 'scored') m using (row_id) "
            f"where r.split = 'train' order by r.row_id"
        ).fetchnumpy()
    finally:
        con.close()
    same = len(truth) == len(train["row_id"]) and all(
        (truth[c].to_numpy() == train[c]).all() for c in ("user_id", "photo_id", "time"))
    if not same:
        raise ValueError(f"{truth_file}: its lines are not the train rows in the train file's order")
    scored = train["scored"].astype(bool)
    return roc_auc(train["click"][scored], truth["p_click"].to_numpy()[scored])


def run_world(data: Path, work: Path, without: list[str], drop_group: str | None = None,
              attention_config: dict | None = None) -> dict:
    """Materialize the graph on one dataset (in this process); the figures of every model asset.

    With `drop_group`, `model` is then refitted without that feature group in the same work dir,
    and blend, submission and evaluation follow (the attention model and every table are reused):
    the figures of that second pass are under "without_group"."""
    import dagster as dg

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kuai_assets.defs.resources import TrackingResource, WorkspaceResource
    from kuai_assets.definitions import defs
    from kuai_assets.defs.model import default_feature_groups

    work.mkdir(parents=True, exist_ok=True)
    home = work / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # the definitions' own resources (e.g. the engine), with the workspace and tracking of this world
    resources = {
        **dict(getattr(defs, "resources", None) or {}),
        "workspace": WorkspaceResource(data_dir=str(data), work_dir=str(work)),
        "tracking": TrackingResource(
            tracking_uri=f"sqlite:///{work}/mlflow/mlflow.db", artifact_root=str(work / "mlflow" / "artifacts")
        ),
    }
    keys = {key.to_user_string() for a in defs.assets for key in getattr(a, "keys", [])}
    unknown = sorted(set(without) - keys)
    if unknown:
        raise SystemExit(f"--without: no asset named {', '.join(unknown)} in the graph")
    groups = default_feature_groups()
    if drop_group is not None and drop_group not in groups:
        raise SystemExit(f"--drop-group: {drop_group!r} is not a feature group the model uses by default: {groups}")
    selection = dg.AssetSelection.all()
    if without:
        selection = selection - dg.AssetSelection.assets(*without)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # for the second pass the network must be refitted whatever the first blend chose: the GBDT
        # without the group may blend with it where the full GBDT did not (the blend refuses a network
        # that was not refitted); validation AUCs and the blend's choice do not depend on the refit
        attention = {**(attention_config or {}), **({"refit": "always"} if drop_group else {})}
        first_config = {"ops": {"attention_model": {"config": attention}}} if attention else None
        figures = _materialize(dg, defs, instance, resources, selection, data, work, keys, run_config=first_config)
        if drop_group is not None and figures["success"]:
            refit = [k for k in ("model", "blend", "submission", "evaluation") if k in keys and k not in without]
            figures["without_group"] = _materialize(
                dg, defs, instance, resources, dg.AssetSelection.assets(*refit), data, work, keys,
                run_config={"ops": {"model": {"config": {"feature_groups": [g for g in groups if g != drop_group]}}}},
            )
            figures["without_group"]["group"] = drop_group
    return figures


def model_figures(metadata: dict[str, dict], keys: set, truth: Path, work: Path) -> dict[str, dict]:
    """Per model asset of the graph: whether it materialized, its validation and test AUC (the test
    AUC from `evaluation`'s per-model figures, else scored from the store's test predictions), and
    for the attention model whether it was refitted, for the blend its GBDT weight."""
    from kuai_assets.ml.evaluation import score_predictions
    from kuai_assets.storage import WorkDir

    evaluation = metadata.get("evaluation", {})
    per_model = {"model": "model_test_auc", "baseline_model": "baseline_test_auc"}
    models = {}
    for name in MODEL_ASSETS:
        if name not in keys:
            continue
        info: dict = {"in_graph": True, "materialized": name in metadata}
        if name in metadata:
            info["valid_auc"] = metadata[name].get("valid_auc")
            # never evaluation's `test_auc`: that is the submission's (the blend's by default)
            test_auc = evaluation.get(per_model.get(name, f"{name}_test_auc"))
            if test_auc is None:
                predictions = WorkDir(work).store_path(name) / "test_predictions.parquet"
                if predictions.exists():
                    test_auc = score_predictions(truth, predictions=predictions).auc
            info["test_auc"] = test_auc
            if name == "attention_model":
                info["refitted"] = metadata[name].get("refitted", True)
            if name == "blend":
                info["gbdt_weight"] = metadata[name].get("gbdt_weight")
        models[name] = info
    return models


def _materialize(dg, defs, instance, resources, selection, data: Path, work: Path, keys: set, run_config=None) -> dict:
    started = time.time()
    step_seconds: dict[str, float] = {}
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        instance=instance,
        resources=resources,
        selection=selection,
        run_config=run_config,
        raise_on_error=False,
    )
    for event in result.all_events:
        if event.is_step_success and event.step_key:
            step_seconds[event.step_key] = round(event.event_specific_data.duration_ms / 1000, 1)
    graph_seconds = time.time() - started
    metadata: dict[str, dict] = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        metadata[mat.asset_key.to_user_string()] = {k: v.value for k, v in mat.metadata.items()}
    failed = [e.step_key for e in result.all_events if e.is_step_failure]
    evaluation = metadata.get("evaluation", {})
    models = model_figures(metadata, keys, data / "ground_truth" / "test_ground_truth.txt", work)
    ablation = metadata.get("feature_group_ablation", {}).get("variants")
    importance = metadata.get("model", {}).get("importance_by_group")
    return {
        "success": result.success,
        "failed_steps": failed,
        "graph_seconds": round(graph_seconds, 1),
        "step_seconds": step_seconds,
        "models": models,
        "evaluation_oracle_auc": evaluation.get("oracle_auc"),
        "model_importance_by_group": importance,
        "ablation": ablation,
    }


def child_main(args: argparse.Namespace) -> int:
    figures = run_world(Path(args.child_data), Path(args.child_work), split(args.without), args.drop_group,
                        json.loads(args.attention_config) if args.attention_config else None)
    print(MARK + json.dumps(figures), flush=True)
    return 0


def split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def closure(auc: float | None, oracle: float) -> float | None:
    return None if auc is None else (auc - 0.5) / (oracle - 0.5)


def fmt(value, digits=4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table_rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    present = [m for m in MODEL_ASSETS if any(m in r.get("models", {}) for r in results)]
    header = ["world", "oracle AUC", "oracle valid"]
    for m in present:
        header += [f"{m} valid", f"{m} test", f"{m} closure", f"{m} valid-test"] + EXTRA_COLUMNS.get(m, [])
    header += ["generate s", "graph s", "status"]
    rows = []
    passes = []
    for r in results:
        passes.append(r)
        if r.get("without_group"):
            second = dict(r, **r["without_group"])
            second["world"] = f"{r['world']} without {r['without_group']['group']}"
            second["generate_seconds"] = 0.0
            passes.append(second)
    for r in passes:
        oracle = r["oracle_auc"]
        row = [r["world"], fmt(oracle), fmt(r.get("validation_oracle_auc"))]
        for m in present:
            info = r.get("models", {}).get(m)
            extra = len(EXTRA_COLUMNS.get(m, []))
            if not info or not info.get("materialized"):
                row += (["-"] if info else ["n/a"]) * (4 + extra)
                continue
            valid, test = info.get("valid_auc"), info.get("test_auc")
            row += [fmt(valid), fmt(test), fmt(closure(test, oracle), 3),
                    fmt(None if valid is None or test is None else valid - test, 4)]
            if m == "attention_model":
                row.append("yes" if info.get("refitted", True) else "no")
            elif m == "blend":
                row.append(fmt(info.get("gbdt_weight"), 2))
        row += [f"{r['generate_seconds']:.0f}", f"{r.get('graph_seconds', 0):.0f}",
                "ok" if r.get("success") else f"FAILED {','.join(r.get('failed_steps', [])) or r.get('error', '')}"]
        rows.append(row)
    return header, rows


def print_table(results: list[dict]) -> None:
    header, rows = table_rows(results)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def markdown(results: list[dict]) -> str:
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="demo")
    parser.add_argument("--worlds", default=None, help="comma-separated world names (default: every world)")
    parser.add_argument("--out", type=Path, default=Path(".kuai/quality"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--vector-dim", type=int, default=None, help="visual vector length (default 2048)")
    parser.add_argument("--without", default=None, help="comma-separated leaf assets to skip, e.g. feature_group_ablation")
    parser.add_argument(
        "--drop-group", default=None,
        help="also refit model (then blend, submission, evaluation) without this feature group, in the same "
        "work dir after the whole graph: one more row per world, what the group adds (test AUC included)",
    )
    parser.add_argument("--attention-config", default=None,
                        help='JSON config of attention_model for every world, e.g. \'{"batch_size": 2048}\'')
    parser.add_argument("--data", default=None,
                        help="comma-separated dataset folders to measure instead of generating worlds (each with "
                        "ground_truth/test_ground_truth.txt)")
    parser.add_argument("--child-data", help=argparse.SUPPRESS)
    parser.add_argument("--child-work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_data:
        return child_main(args)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kuai_assets.synth import WORLDS, get_size, get_world

    get_size(args.size)
    if args.attention_config:
        try:
            given = json.loads(args.attention_config)
        except json.JSONDecodeError as exc:
            parser.error(f"--attention-config is not JSON: {exc}")
        if not isinstance(given, dict):
            parser.error("--attention-config must be a JSON object, e.g. '{\"batch_size\": 2048}'")
    if args.drop_group:
        from kuai_assets.defs.model import default_feature_groups

        if args.drop_group not in default_feature_groups():
            parser.error(f"--drop-group: {args.drop_group!r} is not one of the model's feature groups: "
                         f"{', '.join(default_feature_groups())}")
    given_data = {Path(d).resolve().name: Path(d).resolve() for d in split(args.data)}
    if given_data and args.worlds:
        parser.error("--data and --worlds exclude each other: the datasets are given, or the worlds generated")
    given = {}  # each given dataset's (root, summary, seconds), read before any work
    for name, root in given_data.items():
        try:
            given[name] = given_dataset(root)
        except ValueError as exc:
            parser.error(f"--data: {exc}")
    worlds = list(given_data) or split(args.worlds) or list(WORLDS)
    for name in worlds:
        if name not in given_data:
            get_world(name)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    size = "data" if given_data else args.size
    results_file = out / f"quality-{size}.json"
    # figures of worlds measured by an earlier run into the same folder are kept (and reprinted)
    earlier = json.loads(results_file.read_text()) if results_file.exists() else []
    kept = [r for r in earlier if r["world"] not in worlds and r.get("seed") == args.seed]
    results = []
    for world in worlds:
        print(f"[quality] {world}: dataset ...", flush=True)
        if world in given_data:
            data, summary, generate_seconds = given[world]
        else:
            data, summary, generate_seconds = dataset(out, args.size, world, args.seed, args.vector_dim)
        name = data.name
        work = out / "work" / name
        if work.exists():
            import shutil

            shutil.rmtree(work)
        print(f"[quality] {world}: data {data} ({generate_seconds:.0f}s), oracle AUC {summary['oracle_auc']:.4f}; "
              f"materializing the graph into {work} ...", flush=True)
        started = time.time()
        command = [sys.executable, str(Path(__file__).resolve()), "--child-data", str(data), "--child-work", str(work)]
        if args.without:
            command += ["--without", args.without]
        if args.drop_group:
            command += ["--drop-group", args.drop_group]
        if args.attention_config:
            command += ["--attention-config", args.attention_config]
        log_file = out / f"{name}.log"
        with open(log_file, "w") as log:
            child = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True)
        record = {"world": world, "size": size, "seed": args.seed, "oracle_auc": summary["oracle_auc"],
                  "generate_seconds": round(generate_seconds, 1), "wall_seconds": round(time.time() - started, 1),
                  "log": str(log_file), "attention_config": json.loads(args.attention_config or "{}")}
        marked = [line for line in child.stdout.splitlines() if line.startswith(MARK)]
        if child.returncode == 0 and marked:
            record.update(json.loads(marked[-1][len(MARK):]))
        else:
            record.update(success=False, error=f"child exited {child.returncode}; see {log_file}")
        record["validation_oracle_auc"] = validation_oracle_auc(data, work) if record.get("success") else None
        results.append(record)
        print(f"[quality] {world}: {'ok' if record.get('success') else 'FAILED'} in {record['wall_seconds']:.0f}s wall",
              flush=True)
        print_table(kept + results)
        results_file.write_text(json.dumps(kept + results, indent=2))
    order = list(WORLDS)
    results = sorted(kept + results, key=lambda r: order.index(r["world"]) if r["world"] in order else len(order))
    print()
    print_table(results)
    print(f"\n(figures in {results_file})\n")
    print(markdown(results))
    return 0 if all(r.get("success") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
