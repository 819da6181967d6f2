"""`kuai`: the platform's front door.

    kuai run          generate the demo data if absent, materialize every asset, print the AUCs
    kuai ui           the Dagster UI (dagster dev) on 127.0.0.1:3000
    kuai mlflow-ui    the MLflow UI on 127.0.0.1:5000
    kuai generate     write a synthetic dataset in the released layout
    kuai env          print the environment the dagster CLI needs (also written to .kuai/env.sh)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from kuai_assets import settings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

DAGSTER_YAML = """# written by `kuai`: a local instance, no telemetry (this platform never calls home)
telemetry:
  enabled: false
"""


def dagster_home(work: Path) -> Path:
    return work / "dagster_home"


def initialize_dagster_home(home: Path) -> Path:
    """Write `dagster.yaml` (if absent) and create the instance's shared databases, once.

    Dagster creates its SQLite databases (runs, event-log index, schedules) on first use. Two
    runs that both find them missing both stamp the schema version, and from then on every run
    fails with "alembic_version has more than one head". Creating them here, under a lock, before
    any run can start (every `kuai` command does) means concurrent runs only ever open them.
    """
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".initialize.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / "dagster.yaml").exists():
            (home / "dagster.yaml").write_text(DAGSTER_YAML)
        if not (home / "history" / "runs.db").exists() or not (home / "schedules" / "schedules.db").exists():
            import dagster as dg

            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.get_runs(limit=1)
    return home


# the dagster CLI reads its code location from these (click's DAGSTER_CLI_<COMMAND>_<OPTION>), so
# the literal `dagster asset materialize --select model` works from any folder
DAGSTER_CLI_MODULE = {
    f"DAGSTER_CLI_{command}_MODULE_NAME": "kuai_assets.definitions"
    for command in ("ASSET_MATERIALIZE", "ASSET_LIST", "JOB_EXECUTE", "JOB_LIST", "DEFINITIONS_VALIDATE")
}


def prepare_environment(work: Path) -> dict[str, str]:
    """Create the Dagster home, and write the environment the `dagster` CLI needs.

    `.kuai/env.sh` (source it: it also activates the venv) and `.env` in the repo root (which the
    dagster CLI itself reads) both set DAGSTER_HOME, so CLI runs and `kuai run` share one instance
    and all show in the UI.
    """
    home = initialize_dagster_home(dagster_home(work))
    env = {"DAGSTER_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true", **DAGSTER_CLI_MODULE}
    lines = [f"export {k}={v}" for k, v in env.items()]
    venv = Path(sys.prefix)
    if (venv / "bin" / "activate").is_file():
        lines.insert(0, f"source {venv / 'bin' / 'activate'}")
    (work / "env.sh").write_text("# written by `kuai`: source it to use the dagster CLI on this work dir\n" + "\n".join(lines) + "\n")
    if (settings.REPO_ROOT / "pyproject.toml").is_file():
        (settings.REPO_ROOT / ".env").write_text(
            "# written by `kuai`; read by the dagster CLI from this folder\n"
            + "\n".join(f"{k}={v}" for k, v in env.items() if not k.startswith("DAGSTER_CLI_"))
            + "\n"
        )
    os.environ.update(env)
    return env


def cmd_run(args: argparse.Namespace) -> int:
    work = settings.default_work_dir()
    prepare_environment(work)
    data_dir = settings.default_data_dir()
    if not data_dir.exists() and data_dir == settings.synthetic_data_dir(work):
        from kuai_assets.synth import generate, get_size

        print(f"[kuai] generating the synthetic '{settings.synthetic_size()}' dataset at {data_dir} ...", flush=True)
        started = time.time()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        summary = generate(data_dir, get_size(settings.synthetic_size()))
        print(f"[kuai] generated in {time.time() - started:.0f}s (oracle AUC {summary['oracle_auc']:.4f})", flush=True)

    import dagster as dg

    from kuai_assets.definitions import everything_job

    print(f"[kuai] data: {data_dir}\n[kuai] work dir: {work}\n[kuai] materializing every asset ...", flush=True)
    started = time.time()
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(
            dg.reconstructable(everything_job),
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": args.log_level}}}},
        )
        elapsed = time.time() - started
        if not result.success:
            print(f"[kuai] the run failed after {elapsed:.0f}s (run id {result.run_id}); see the error above "
                  "or open `kuai ui` to inspect it.", file=sys.stderr)
            return 1
        print_summary(instance, work, elapsed, result.run_id)
    return 0


def latest_metadata(instance, asset: str) -> dict:
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def print_summary(instance, work: Path, elapsed: float, run_id: str) -> None:
    model = latest_metadata(instance, "model")
    evaluation = latest_metadata(instance, "evaluation")
    lines = [
        "",
        f"[kuai] done in {elapsed / 60:.1f} min (Dagster run {run_id})",
        f"  validation AUC (cold-start photos, last hours of train): {model.get('valid_auc', float('nan')):.4f}",
    ]
    if "test_auc" in evaluation:
        lines += [
            f"  evaluation AUC (submission vs ground truth):            {evaluation['test_auc']:.4f}",
            f"  oracle AUC (true click probabilities):                  {evaluation['oracle_auc']:.4f}",
            f"  oracle-gap closure (AUC-0.5)/(oracle-0.5):              {evaluation['oracle_gap_closure']:.3f}",
            f"  baseline (published top-10 recipe) test AUC:            {evaluation['baseline_test_auc']:.4f}",
        ]
    else:
        lines.append("  no ground truth for this dataset: submit the file to score it")
    lines += [
        f"  submission: {work / 'submission.txt'}",
        f"  MLflow run: {model.get('mlflow_run_id', '?')}",
        f"  dagster CLI: source {work / 'env.sh'} && dagster asset materialize --select model",
        "Where to look:",
        "  .venv/bin/kuai ui          # Dagster UI at http://127.0.0.1:3000 (lineage, metadata, re-runs)",
        "  .venv/bin/kuai mlflow-ui   # MLflow UI at http://127.0.0.1:5000 (compare runs)",
    ]
    print("\n".join(lines), flush=True)


def cmd_ui(args: argparse.Namespace) -> int:
    work = settings.default_work_dir()
    prepare_environment(work)
    os.chdir(settings.REPO_ROOT if (settings.REPO_ROOT / "workspace.yaml").is_file() else Path.cwd())
    return _exec(ui_argv(args))


def ui_argv(args: argparse.Namespace) -> list[str]:
    """`dagster dev` on args.host (127.0.0.1 unless --host says otherwise)."""
    return ["dagster", "dev", "-h", args.host, "-p", str(args.port), "-m", "kuai_assets.definitions"]


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    from kuai_assets.ml.tracking import default_tracking_uri

    work = settings.default_work_dir()
    prepare_environment(work)
    uri = default_tracking_uri(work)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return _exec(mlflow_ui_argv(args, uri))


def mlflow_ui_argv(args: argparse.Namespace, uri: str) -> list[str]:
    """`mlflow ui` over the tracking store `uri`, on args.host (127.0.0.1 unless --host says otherwise)."""
    return ["mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]


def _exec(argv: list[str]) -> int:
    bin_dir = Path(sys.executable).parent
    executable = bin_dir / argv[0]
    argv[0] = str(executable) if executable.exists() else argv[0]
    print("[kuai] " + " ".join(argv), flush=True)
    os.execvp(argv[0], argv)
    return 0  # not reached


def cmd_generate(args: argparse.Namespace) -> int:
    from kuai_assets.synth.__main__ import main as synth_main

    argv = ["--size", args.size, "--seed", str(args.seed), "--out", str(args.out)]
    return synth_main(argv + args.rest)


def cmd_env(args: argparse.Namespace) -> int:
    work = settings.default_work_dir()
    prepare_environment(work)
    print((work / "env.sh").read_text(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kuai", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize every asset on the configured dataset and print the AUCs")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=cmd_run)
    for name, port, func in (("ui", 3000, cmd_ui), ("mlflow-ui", 5000, cmd_mlflow_ui)):
        p = sub.add_parser(name, help=f"serve the {'Dagster' if name == 'ui' else 'MLflow'} UI on 127.0.0.1:{port}")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=port)
        p.set_defaults(func=func)
    gen = sub.add_parser("generate", help="write a synthetic dataset (same as python -m kuai_assets.synth)")
    gen.add_argument("--size", default="demo")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("rest", nargs=argparse.REMAINDER)
    gen.set_defaults(func=cmd_generate)
    env = sub.add_parser("env", help="print (and write to .env) what the dagster CLI needs")
    env.set_defaults(func=cmd_env)
    return parser


if __name__ == "__main__":
    sys.exit(main())
