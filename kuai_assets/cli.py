"""`kuai`: the platform's front door.

    kuai run          check the dataset and the MLflow store, materialize every asset, print the AUCs
                      (--unsynced: only what is out of date, kuai_assets/unsynced.py; a model whose
                      inputs did not change keeps its result, kuai_assets/defs/reuse.py)
    kuai ui           the Dagster UI (webserver and daemon) on 127.0.0.1:3000
    kuai mlflow-ui    the MLflow UI on 127.0.0.1:5000
    kuai generate     write a synthetic dataset in the released layout
    kuai env          print the workspace's settings (the <work>/env.sh every command writes)

Every command works on one workspace (a work dir and the settings recorded in it) and records
its settings in <work>/env.sh and <work>/.env, so that in a fresh shell
`source <work>/env.sh && dagster asset materialize --select model` reads and writes the same
data, tables, Dagster instance and MLflow store. A mistake (an unknown size, a folder that is
not a dataset, an output folder that exists) is one line on stderr and exit code 2.

Try it in three minutes on the tiny synthetic dataset:

    kuai run --size tiny --work /tmp/kuai-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from kuai_assets import settings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

DAGSTER_YAML = """# written by `kuai`: a local instance, no telemetry (this platform never calls home)
telemetry:
  enabled: false
# INFO, not DEBUG, for the step processes' own console lines ("Executing step ... in subprocess");
# every Dagster event is still recorded whatever this level
python_logs:
  python_log_level: INFO
"""
WRITTEN_BY_KUAI = "# written by `kuai`"


class UsageError(Exception):
    """A user's mistake: printed as one line on stderr, exit code 2."""


def dagster_home(work: Path) -> Path:
    return work / "dagster_home"


def initialize_dagster_home(home: Path) -> Path:
    """Write `dagster.yaml` (if absent, or if `kuai` wrote an older one) and create the instance's
    shared databases, once.

    Dagster creates its SQLite databases (runs, event-log index, schedules) on first use. Two
    runs that both find them missing both stamp the schema version, and from then on every run
    fails with "alembic_version has more than one head". Creating them here, under a lock, before
    any run can start (every `kuai` command does) means concurrent runs only ever open them.
    """
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".initialize.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        config = home / "dagster.yaml"
        if not config.exists() or (config.read_text().startswith(WRITTEN_BY_KUAI) and config.read_text() != DAGSTER_YAML):
            config.write_text(DAGSTER_YAML)
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


def prepare_environment(workspace: settings.Workspace) -> dict[str, str]:
    """Create the workspace's Dagster home, record its settings in <work>/env.sh and <work>/.env,
    and set them in this process's environment (for the steps it starts).

    env.sh also activates this venv; both set DAGSTER_HOME and the code location of the dagster
    CLI, so `kuai run`, the UI and CLI runs share one instance and one workspace. A setting that
    differs from the one recorded before (a variable set for this command only, `--data`) stays
    for every later command in the workspace, so a line on stderr names each such change.
    """
    initialize_dagster_home(workspace.dagster_home)
    env = {**workspace.recorded(), "MLFLOW_DISABLE_TELEMETRY": "true", **DAGSTER_CLI_MODULE}
    before = settings.read_workspace_file(workspace.work_dir)
    changed = [f"{key}={value} (was {before[key] if key in before else 'not set'})"
               for key, value in env.items() if before and before.get(key) != value]
    if changed:
        print(f"[kuai] recorded in {workspace.work_dir / settings.WORKSPACE_FILE}, for every later command in this "
              f"workspace: {'; '.join(changed)}", file=sys.stderr, flush=True)
    venv = Path(sys.prefix)
    preamble = [f"source {venv / 'bin' / 'activate'}"] if (venv / "bin" / "activate").is_file() else []
    settings.write_workspace_files(workspace.work_dir, env, preamble)
    _remove_repo_dotenv()
    for key, value in env.items():
        if settings.is_live(key):  # the steps and the UI read it from the .env, as it is when they run
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return env


def _remove_repo_dotenv() -> None:
    """Older versions wrote a `.env` in the repo root pointing at one workspace; the dagster CLI
    started there would have let it override a sourced env.sh. Remove it if `kuai` wrote it."""
    path = settings.REPO_ROOT / ".env"
    try:
        if path.is_file() and path.read_text().startswith(WRITTEN_BY_KUAI) and "DAGSTER_HOME=" in path.read_text():
            path.unlink()
    except OSError:
        pass


def workspace_from(args: argparse.Namespace) -> settings.Workspace:
    """The workspace the command's options (--work, --data, --size) and the environment describe;
    a size that does not exist is refused."""
    from kuai_assets.synth.sizes import SIZES

    workspace = settings.resolve_workspace(
        getattr(args, "work", None), getattr(args, "data", None), getattr(args, "size", None)
    )
    if workspace.size not in SIZES:
        source = "--size" if getattr(args, "size", None) else "KUAI_SYNTH_SIZE"
        raise UsageError(f"unknown size {workspace.size!r} ({source}): choose one of {', '.join(SIZES)}")
    return workspace


# -- checks before work ----------------------------------------------------------------------------


def refuse_a_missing_dataset(workspace: settings.Workspace) -> None:
    """Before anything is written: a dataset folder that does not exist (and is not the
    workspace's synthetic default, generated on first use) is a UsageError."""
    from kuai_assets.formats import layout

    if not workspace.data_dir.exists() and not workspace.generates_its_data:
        raise UsageError(layout.layout_problem(workspace.data_dir))


def check_dataset(workspace: settings.Workspace, say=print) -> None:
    """The dataset is in the released layout; the workspace's own synthetic default is generated
    first if absent (and says so). Anything else missing is a UsageError."""
    from kuai_assets.formats import layout

    root = workspace.data_dir
    if workspace.generates_its_data:
        from kuai_assets.synth import generate_if_absent

        generate_if_absent(root, workspace.size, lambda line: say(f"[kuai] {line}"))
    say(f"[kuai] checking the dataset's layout at {root} (train/ and test/: interactions, faces, cover text, vectors)")
    problem = layout.layout_problem(root)
    if problem:
        raise UsageError(problem)


def check_tracking(workspace: settings.Workspace, say=print) -> None:
    """The MLflow store can be reached and written, within kuai_assets.ml.tracking.PROBE_SECONDS."""
    from kuai_assets.ml.tracking import PROBE_SECONDS, TrackingError, probe_store

    say(f"[kuai] checking the MLflow store at {workspace.tracking_uri} (at most {PROBE_SECONDS:g} s)")
    try:
        probe_store(workspace.tracking_uri)
    except TrackingError as exc:
        raise UsageError(str(exc)) from None


# What a whole run writes into the work dir, from the dataset's released files (BENCHMARKS.md,
# "Disk"): the vector store keeps every vector at 16 bits, half the zips' bytes; the tables grow
# with the interactions, about 21-24 bytes for each byte of the text files at the tiny, default and demo
# sizes; half as much again for what lives beside them while a step runs (a table's new version
# beside the old, the training matrix's pieces, DuckDB's spill).
STORE_BYTES_PER_VECTOR_BYTE = 0.5
TABLE_BYTES_PER_TEXT_BYTE = 22
TRANSIENT_SHARE = 0.5


def tree_bytes(root: Path) -> int:
    """Bytes of the files under `root` (a file's own size; symbolic links not followed; 0 when absent)."""
    if root.is_file():
        return root.stat().st_size
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def run_writes(data_dir: Path) -> tuple[int, int, int]:
    """(bytes a whole run may write into a fresh work dir, the dataset's vector bytes, its text
    bytes), from the files of the released layout each split has: its visual vectors (a zip or
    the unzipped folder) and its interaction, face and cover-text files."""
    from kuai_assets.formats import layout

    vectors = text = 0
    for split in layout.SPLITS:
        for path in (layout.interaction_file(data_dir, split), layout.face_file(data_dir, split), layout.text_file(data_dir, split)):
            text += tree_bytes(path)
        try:
            vectors += tree_bytes(layout.find_visual_source(data_dir, split).path)
        except FileNotFoundError:
            pass  # the layout check names it
    outputs = STORE_BYTES_PER_VECTOR_BYTE * vectors + TABLE_BYTES_PER_TEXT_BYTE * text
    return int((1 + TRANSIENT_SHARE) * outputs), vectors, text


def check_free_space(workspace: settings.Workspace, say=print) -> bool:
    """Say how much the disk of the work dir has free against what a whole run may write there
    (`run_writes`, less the outputs the workspace already holds, which the run replaces); a warning
    when it may not fit. A disk that fills anyway fails the step that found it with one line, and
    nothing already materialized is lost (clear_failures)."""
    from kuai_assets.storage import free_bytes, size_text

    work = workspace.work_dir
    writes, vectors, text = run_writes(workspace.data_dir)
    held = tree_bytes(work / "tables") + tree_bytes(work / "stores")
    needed = max(0, writes - held)
    free = free_bytes(work)
    say(
        f"[kuai] checking free space at {work}: {size_text(free)} free; a whole run may write up to {size_text(needed)} "
        f"(for the dataset's {size_text(vectors)} of vectors and {size_text(text)} of text files, less the "
        f"{size_text(held)} of outputs it replaces)"
    )
    if free >= needed:
        return True
    say(
        f"[kuai] warning: the run may fill the disk of {work} before it ends: free space there, or choose "
        "--work on a larger disk (a step that finds the disk full fails, and what was materialized before stays)"
    )
    return False


# -- kuai run --------------------------------------------------------------------------------------


def run_job():
    """The `everything` job (importable by name: the steps reconstruct it)."""
    from kuai_assets.definitions import everything_job

    return everything_job()


INTERRUPTED = "interrupted (Ctrl-C, or a signal to the run's process)"


def failure_causes(instance, run_id: str) -> list[str]:
    """One line per failed step of the run, `<step>: <what went wrong>`, read from its events (a
    step failure's description or innermost error; a resource that refused to start)."""
    import dagster as dg

    kinds = {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RESOURCE_INIT_FAILURE, dg.DagsterEventType.RUN_FAILURE}
    causes: dict[str, str] = {}
    run_failure = None
    for record in instance.get_records_for_run(run_id, of_type=kinds).records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            run_failure = event.message
            continue
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            if _innermost_class(data.error) == "DagsterExecutionInterruptedError":
                text = INTERRUPTED
            else:
                text = (data.user_failure_data.description if data.user_failure_data else None) or _innermost(data.error)
        else:
            text = _innermost(event.engine_event_data.error)
        key = event.step_key or "run"
        if key not in causes or causes[key] == "(no message)":  # a resource's refusal comes first: the cause
            causes[key] = _one_line(text)
    if not causes and run_failure:
        causes["run"] = _one_line(run_failure)
    # a description that already names its asset ("raw_interactions: <file>, line 3: ...") stands alone
    return [text if text.startswith(f"{step}: ") else f"{step}: {text}" for step, text in causes.items()]


def _innermost(error) -> str:
    """The message of the innermost cause of a serializable error (what the user's code raised)."""
    import re

    message = ""
    while error is not None:
        if error.message:  # "module.Class: text": the text
            message = re.sub(rf"^[\w.]*\b{re.escape(error.cls_name or '')}: ", "", error.message.strip())
        error = error.cause
    return message.split("\n\nStack Trace:")[0]


def _innermost_class(error) -> str:
    """The class name of the innermost cause of a serializable error."""
    name = ""
    while error is not None:
        name, error = error.cls_name or name, error.cause
    return name


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else " ".join(lines[:3])[:500] if lines else "(no message)"


def parse_run_config(text: str | None) -> dict:
    """`--config-json`'s text as a run config (a JSON object; {} when not given). Its fit to the
    job's config schema is checked by `check_run_config`, once the job can be built."""
    if text is None:
        return {}
    import json

    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"run: --config-json is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise UsageError(f"run: --config-json must be a JSON object (a run config), got {type(config).__name__}")
    return config


def check_run_config(job, run_config: dict) -> None:
    """Refuse a run config the job's schema does not accept (an unknown op or field, a wrong type)."""
    import dagster as dg

    try:
        dg.validate_run_config(job, run_config)
    except dg.DagsterInvalidConfigError as exc:
        # without Dagster's dump of the whole schema ("... at the root. Expected: ...")
        problems = "; ".join(error.message.split(" Expected: ")[0].strip().rstrip(".") for error in exc.errors) or str(exc)
        raise UsageError(f"run: --config-json does not fit the job's config: {problems}") from None


def cmd_run(args: argparse.Namespace) -> int:
    run_config = parse_run_config(args.config_json)
    workspace = workspace_from(args)
    refuse_a_missing_dataset(workspace)
    prepare_environment(workspace)
    given = bool(run_config)
    loggers = run_config.get("loggers") or {}
    if isinstance(loggers, dict):  # else the check below names it
        run_config = {**run_config, "loggers": {**loggers, "console": {"config": {"log_level": args.log_level}}}}
    if given:  # checked against the job before any work (building the job imports every step's code)
        check_run_config(run_job(), run_config)
    print(f"[kuai] workspace: {workspace.work_dir} (settings in {workspace.work_dir / settings.ENV_SCRIPT})", flush=True)
    check_tracking(workspace, lambda line: print(line, flush=True))
    check_dataset(workspace, lambda line: print(line, flush=True))
    check_free_space(workspace, lambda line: print(line, flush=True))

    import dagster as dg

    print(f"[kuai] data: {workspace.data_dir}", flush=True)
    from kuai_assets import runs_in_progress

    started = time.time()
    with dg.DagsterInstance.get() as instance:
        runs_in_progress.end_abandoned(instance, lambda line: print(line, flush=True))
        refusal = runs_in_progress.refusal(instance)
        if refusal:
            raise UsageError(refusal)
        selection = unsynced_selection(instance, workspace, run_config) if args.unsynced else None
        if selection == []:
            print_summary(instance, workspace, time.time() - started, None)
            return 0
        print(f"[kuai] materializing {'every asset' if selection is None else f'{len(selection)} assets'} ...", flush=True)
        from kuai_assets.defs.reuse import REUSE_TAG, UNCHANGED

        # models keep their results where nothing they learn from changed (kuai_assets/defs/reuse.py)
        tags = {**runs_in_progress.own_tags(), REUSE_TAG: UNCHANGED}
        watch = EvaluationWatch(instance.get_ref(), tags[runs_in_progress.PROCESS_TAG], started,
                                lambda line: print(line, flush=True))
        watch.start()
        try:
            result = dg.execute_job(dg.reconstructable(run_job), instance=instance, run_config=run_config,
                                    asset_selection=selection, tags=tags)
        finally:
            watch.stop()
        elapsed = time.time() - started
        if not result.success:
            causes = failure_causes(instance, result.run_id) or ["(no step failed; see `kuai ui`)"]
            left = stopped_after_evaluation(instance, result.run_id, causes)
            if left:
                print_summary(instance, workspace, elapsed, result.run_id,
                              header=f"[kuai] stopped (Ctrl-C) after {elapsed / 60:.1f} min, its evaluation done "
                                     f"(Dagster run {result.run_id}); not finished: {', '.join(left)}")
                print("[kuai] `kuai run --unsynced` runs what was left", file=sys.stderr, flush=True)
                return 130
            print(
                f"[kuai] the run failed after {elapsed:.0f}s (Dagster run {result.run_id}):\n"
                + "\n".join(f"  {cause}" for cause in causes)
                + "\n[kuai] once that is dealt with, `kuai run --unsynced` goes on from here: only what did not "
                "finish, and what follows it",
                file=sys.stderr,
                flush=True,
            )
            return 1
        print_summary(instance, workspace, elapsed, result.run_id)
    return 0


def unsynced_selection(instance, workspace: settings.Workspace, run_config: dict) -> list:
    """`kuai run --unsynced`: the assets that are out of date (kuai_assets.unsynced), printed with
    their reasons; the steps given settings in the run config count as out of date, so that the
    settings take effect."""
    from kuai_assets import unsynced
    from kuai_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    given = run_config.get("ops") or {}
    forced = {key: "settings given (--config-json)" for key in unsynced.assets_of_steps(graph, given)}
    reasons = unsynced.out_of_date(instance, graph, workspace.data_dir, forced)
    print("\n".join(f"[kuai] {line}" for line in unsynced.describe(reasons, len(unsynced.materializable(graph)))),
          flush=True)
    return list(reasons)


def change_since_previous_evaluation(instance, run_id: str) -> str | None:
    """'  since the previous evaluation (<when>): validation AUC +0.0004, evaluation AUC -0.0002'
    when run `run_id` made a new `evaluation` and an earlier one holds the same figures (the
    submitted model's validation AUC, and its test AUC where the dataset has ground truth)."""
    import datetime

    import dagster as dg

    records = instance.fetch_materializations(dg.AssetKey("evaluation"), limit=2).records
    if len(records) < 2 or records[0].event_log_entry.run_id != run_id:
        return None
    now, before = (metadata_values(r.asset_materialization) for r in records)
    parts = [f"{label} {now[key] - before[key]:+.4f}" for key, label in (("valid_auc", "validation AUC"),
             ("test_auc", "evaluation AUC")) if isinstance(now.get(key), float) and isinstance(before.get(key), float)]
    if not parts:
        return None
    if now.get("submitted") != before.get("submitted"):
        parts.append(f"submitted {now.get('submitted')} (was {before.get('submitted')})")
    when = datetime.datetime.fromtimestamp(records[1].event_log_entry.timestamp).strftime("%Y-%m-%d %H:%M:%S")
    return f"  since the previous evaluation ({when}): {', '.join(parts)}"


class EvaluationWatch(threading.Thread):
    """The evaluation's figures as soon as `kuai run`'s run records them, when steps still follow.

    In a run that makes the submission and its evaluation, the feature-group ablation (an analysis,
    and after a SQL edit the longest step) runs last; the AUCs a person editing a feature waits for
    are known before it starts. Every `interval` seconds this thread looks in the instance (its own
    connection, `instance_ref`) for an `evaluation` materialization made after `started` by the run
    tagged `process` (runs_in_progress.own_tags). The first it finds, if steps of that run have not
    finished, is said in a few lines (`say`): the figures, the steps still running, the change
    since the previous evaluation and, when the run retrained the model, what its promotion check
    decided (`registry_line`). Once only; the summary at the end stays as it was. `stop` ends
    the watch (the run is over).
    """

    def __init__(self, instance_ref, process: str, started: float, say, interval: float = 1.0):
        super().__init__(name="kuai-evaluation-watch", daemon=True)
        self.instance_ref, self.process, self.started, self.say, self.interval = instance_ref, process, started, say, interval
        self.done = threading.Event()

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)

    def run(self) -> None:
        import dagster as dg
        from sqlalchemy.exc import OperationalError

        with dg.DagsterInstance.from_ref(self.instance_ref) as instance:
            while not self.done.wait(self.interval):
                try:
                    lines = self.lines(instance)
                except OperationalError:  # SQLite busy with the run's own writes: look again next time
                    continue
                if lines is None:
                    continue
                if lines and not self.done.is_set():
                    self.say("\n".join(lines))
                return

    def lines(self, instance) -> list[str] | None:
        """None: no evaluation of this run yet; [] when one is recorded and nothing follows it; else
        the lines to say."""
        import dagster as dg

        from kuai_assets.runs_in_progress import PROCESS_TAG, steps_not_finished

        event = instance.get_latest_materialization_event(dg.AssetKey("evaluation"))
        if event is None or event.timestamp < self.started:
            return None
        run = instance.get_run_by_id(event.run_id)
        if run is None or run.tags.get(PROCESS_TAG) != self.process:
            return None
        still = steps_not_finished(instance, run, besides="evaluation")
        if not still:
            return []
        figures = metadata_values(event.asset_materialization)
        parts = []
        if isinstance(figures.get("valid_auc"), float):
            parts.append(f"validation AUC {figures['valid_auc']:.4f} ({figures.get('submitted', 'model')})")
        parts.append(f"evaluation AUC {figures['test_auc']:.4f}" if isinstance(figures.get("test_auc"), float)
                     else "no ground truth")
        lines = [f"[kuai] evaluated {event.timestamp - self.started:.0f} s into the run, which goes on "
                 f"({', '.join(still)}; the summary follows at its end, or at Ctrl-C):", f"  {', '.join(parts)}"]
        change = change_since_previous_evaluation(instance, run.run_id)
        registry = registry_line(instance, run.run_id)
        return lines + [line for line in (change, registry) if line]


def latest_metadata(instance, asset: str) -> dict:
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return {}
    return metadata_values(event.asset_materialization)


def metadata_values(materialization) -> dict:
    """A materialization's metadata as plain values (name -> value)."""
    return {k: v.value for k, v in materialization.metadata.items()}


def is_test_auc_pending(instance) -> bool:
    """Whether `model` has been materialized since `evaluation` last ran (or evaluation never ran):
    the model's test AUC is then not known yet."""
    import dagster as dg

    model = instance.get_latest_materialization_event(dg.AssetKey("model"))
    evaluation = instance.get_latest_materialization_event(dg.AssetKey("evaluation"))
    return evaluation is None or (model is not None and model.timestamp > evaluation.timestamp)


def refitted(work: Path, store: str) -> bool:
    """Whether the store's model was refitted on every train row (its run.json says so; True if silent)."""
    try:
        from kuai_assets.storage import WorkDir

        return bool(json.loads((WorkDir(work).store_path(store) / "run.json").read_text()).get("refitted", True))
    except (OSError, ValueError):
        return True


def kept_in_run(instance, run_id: str) -> list[str]:
    """What run `run_id` kept rather than trained (kuai_assets/defs/reuse.py): the models, and
    "N of M ablation variants" when its ablation kept some."""
    import dagster as dg

    kept = []
    for name in ("model", "baseline_model", "attention_model"):
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        if event is not None and event.run_id == run_id and "kept" in event.asset_materialization.metadata:
            kept.append(name)
    event = instance.get_latest_materialization_event(dg.AssetKey("feature_group_ablation"))
    if event is not None and event.run_id == run_id:
        metadata = event.asset_materialization.metadata
        n_kept, keys = metadata.get("variants_kept"), metadata.get("variant_keys")
        if n_kept is not None and n_kept.value and keys is not None and isinstance(keys.value, dict):
            kept.append(f"{n_kept.value} of {len(keys.value)} ablation variants")
    return kept


PROMOTION_CHECK = "model_promoted_if_better"  # model's blocking check: @champion moves only to a better model


def registry_line(instance, run_id: str) -> str | None:
    """The summary's line of what `model`'s promotion check decided in run `run_id` (e.g.
    "  registry: kuai_click_model v3 (valid_auc 0.74351) does not beat champion v2 (0.74360):
    @champion stays"), or None when its latest execution is not that run's, or did not pass."""
    import dagster as dg
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status

    key = dg.AssetCheckKey(dg.AssetKey("model"), PROMOTION_CHECK)
    summary = instance.event_log_storage.get_asset_check_summary_records([key]).get(key)
    record = summary.last_check_execution_record if summary else None
    if record is None or record.run_id != run_id or record.status != Status.SUCCEEDED or record.evaluation is None:
        return None
    return f"  registry: {record.evaluation.description}" if record.evaluation.description else None


def mlflow_link(metadata: dict, ui_url: str) -> str:
    """A model materialization's MLflow run link, on the MLflow UI the workspace records now."""
    from kuai_assets.ml.tracking import run_link

    link = metadata.get("mlflow_run")
    return run_link(link, ui_url) if isinstance(link, str) else str(metadata.get("mlflow_run_id", "?"))


def stopped_after_evaluation(instance, run_id: str, causes: list[str]) -> list[str]:
    """The steps of the failed run `run_id` that did not succeed, when it was interrupted (every
    cause an interruption) after its `evaluation` was recorded: a person who saw the AUCs stopped
    the rest (the ablation). Else [] (a failure like any other)."""
    import dagster as dg

    from kuai_assets.runs_in_progress import steps_not_succeeded

    if not causes or not all(cause.endswith(f": {INTERRUPTED}") for cause in causes):
        return []
    event = instance.get_latest_materialization_event(dg.AssetKey("evaluation"))
    run = instance.get_run_by_id(run_id)
    if event is None or event.run_id != run_id or run is None:
        return []
    return steps_not_succeeded(instance, run)


def print_summary(instance, workspace: settings.Workspace, elapsed: float, run_id: str | None,
                  header: str | None = None) -> None:
    """What `kuai run` prints at the end: the AUCs of the latest materializations and where to look
    next. `run_id` None: nothing ran (`--unsynced` found everything up to date). `header`: the first
    line, in place of "done in ..."."""
    work = workspace.work_dir
    model = latest_metadata(instance, "model")
    pending = is_test_auc_pending(instance)
    evaluation = {} if pending else latest_metadata(instance, "evaluation")
    # the validation AUC of what was submitted (without ground truth `evaluation` does not say: the
    # submission does); of the new model when it was retrained since
    if pending:
        submitted = "model"
    else:
        submitted = evaluation.get("submitted") or latest_metadata(instance, "submission").get("source", "model")
    submitted_valid_auc = evaluation.get("valid_auc", latest_metadata(instance, submitted).get("valid_auc", float("nan")))
    figures = [("validation AUC (cold-start photos, last hours of train)", f"{submitted_valid_auc:.4f} ({submitted})")]
    if "test_auc" in evaluation:
        for store, label in (("model", "GBDT"), ("attention_model", "attention network"), ("blend", "blend")):
            if store == "attention_model" and not refitted(work, store):
                label += " (not refitted)"
            if f"{store}_test_auc" in evaluation:
                figures.append((f"test AUC, {label}", f"{evaluation[f'{store}_test_auc']:.4f}"))
        figures += [
            ("evaluation AUC (submission vs ground truth)", f"{evaluation['test_auc']:.4f}"),
            ("oracle AUC (true click probabilities)", f"{evaluation['oracle_auc']:.4f}"),
            ("oracle-gap closure (AUC-0.5)/(oracle-0.5)", f"{evaluation['oracle_gap_closure']:.3f}"),
            ("baseline (published top-10 recipe) test AUC", f"{evaluation['baseline_test_auc']:.4f}"),
        ]
    width = max(len(label) for label, _ in figures) + 1  # the figures in one column
    header = header or (f"[kuai] done in {elapsed / 60:.1f} min (Dagster run {run_id})" if run_id
                        else "[kuai] the latest results:")
    lines = ["", header]
    lines += [f"  {label + ':':<{width}} {value}" for label, value in figures]
    if not evaluation:
        lines.append("  test AUC: pending (the model was trained after the last `evaluation`; "
                     "dagster asset materialize --select evaluation)")
    elif "test_auc" not in evaluation:
        lines.append("  no ground truth for this dataset: submit the file to score it")
    change = change_since_previous_evaluation(instance, run_id) if run_id else None
    if change:
        lines.append(change)
    registry = registry_line(instance, run_id) if run_id else None
    if registry:
        lines.append(registry)
    kept = kept_in_run(instance, run_id) if run_id else []
    if kept:
        lines.append(f"  kept, nothing they learn from changed (their MLflow runs stand): {', '.join(kept)}")
    lines += [
        f"  submission: {work / 'submission.txt'}",
        f"  MLflow run: {mlflow_link(model, workspace.mlflow_ui_url)}",
        "In a fresh shell, the same workspace:",
        f"  source {work / settings.ENV_SCRIPT}",
    ]
    commands = [("dagster asset materialize --select model", "retrain"),
                ("kuai run --unsynced", "again, only what is out of date"),
                ("kuai ui", "Dagster UI at http://127.0.0.1:3000"),
                ("kuai mlflow-ui", f"MLflow UI at {workspace.mlflow_ui_url}")]
    lines += [f"  {command:<{len(commands[0][0])}}   # {comment}" for command, comment in commands]
    print("\n".join(lines), flush=True)


# -- the UIs ---------------------------------------------------------------------------------------


def cmd_ui(args: argparse.Namespace) -> int:
    workspace = workspace_from(args)
    refuse_a_missing_dataset(workspace)
    prepare_environment(workspace)
    end_abandoned_runs()
    os.chdir(workspace.work_dir)
    return _exec(ui_argv(args))


def end_abandoned_runs() -> None:
    """Mark failed the runs of the workspace's instance whose `kuai run` was killed
    (kuai_assets.runs_in_progress): the UI would show them in progress for ever."""
    import dagster as dg

    from kuai_assets import runs_in_progress

    with dg.DagsterInstance.get() as instance:
        runs_in_progress.end_abandoned(instance, lambda line: print(line, flush=True))


def ui_argv(args: argparse.Namespace) -> list[str]:
    """The Dagster UI with its daemon (runs launched from the UI and schedules need it), on
    args.host (127.0.0.1 unless --host says otherwise).

    `dg dev` (the dagster-dg-cli package) is what Dagster 1.13 recommends in place of the
    superseded `dagster dev`; given the code location (-m) it serves it directly, no dg project
    needed. Where `dg` is not installed, `dagster dev` serves the same UI and daemon."""
    tool = ["dg", "dev"] if _executable("dg") else ["dagster", "dev"]
    return [*tool, "-m", "kuai_assets.definitions", "-h", args.host, "-p", str(args.port)]


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    workspace = settings.resolve_workspace(getattr(args, "work", None), mlflow_ui=url)
    prepare_environment(workspace)  # records the UI's address: the Dagster links follow it
    uri = workspace.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    # the platform uses no MLflow server jobs: no job-runner processes beside the UI
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return _exec(mlflow_ui_argv(args, uri))


def mlflow_ui_argv(args: argparse.Namespace, uri: str) -> list[str]:
    """`mlflow ui` over the tracking store `uri`, on args.host (127.0.0.1 unless --host says otherwise)."""
    return ["mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port), "--workers", "1"]


def _executable(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    import shutil

    return shutil.which(name)


def _exec(argv: list[str]) -> int:
    argv[0] = _executable(argv[0]) or argv[0]
    print("[kuai] " + " ".join(argv), flush=True)
    os.execvp(argv[0], argv)
    return 0  # not reached


# -- the rest --------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from kuai_assets.synth.__main__ import write_dataset
    from kuai_assets.synth.sizes import SIZES

    if args.size not in SIZES:
        raise UsageError(f"unknown size {args.size!r} (--size): choose one of {', '.join(SIZES)}")
    if args.out.exists():
        raise UsageError(f"{args.out} already exists: `kuai generate` writes a new folder (remove it or choose another --out)")
    return write_dataset(args)


def cmd_env(args: argparse.Namespace) -> int:
    workspace = workspace_from(args)
    prepare_environment(workspace)
    print((workspace.work_dir / settings.ENV_SCRIPT).read_text(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        print(f"kuai: {exc}", file=sys.stderr, flush=True)
        return 2


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake as one line (`kuai: ...`) and exit code 2, not the usage block."""

    def error(self, message: str):
        command = self.prog.removeprefix("kuai").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see `{self.prog} --help`)")


def _workspace_options(parser: argparse.ArgumentParser, data: bool = True) -> None:
    parser.add_argument("--work", type=Path, help="the workspace (work dir); KUAI_WORK_DIR; default .kuai/ in the repo")
    if data:
        parser.add_argument("--data", type=Path, help="the dataset in the released layout; KUAI_DATA_DIR")
        from kuai_assets.synth.sizes import SIZES

        parser.add_argument(
            "--size", help=f"size of the synthetic default dataset, <work>/data/<size>: {', '.join(SIZES)}; KUAI_SYNTH_SIZE"
        )


def build_parser() -> argparse.ArgumentParser:
    from kuai_assets.synth import __main__ as synth_cli

    common = {"formatter_class": argparse.RawDescriptionHelpFormatter, "epilog": settings.environment_help()}
    parser = _Parser(prog="kuai", description=__doc__, **common)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="check the dataset and the MLflow store, materialize every asset, print the AUCs",
        description="Check the dataset's layout and the MLflow store, then materialize every asset (with "
        "--unsynced: only what is out of date) and print the AUCs. A model whose inputs did not change keeps "
        "its result (run tag kuai/reuse: unchanged). Options are recorded in the workspace "
        "(<work>/env.sh, <work>/.env) for the next command. Three-minute trial: kuai run --size tiny --work /tmp/kuai-tiny",
        **common,
    )
    _workspace_options(run)
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                     help="the run log's level on the console (default INFO)")
    run.add_argument(
        "--unsynced", action="store_true",
        help="materialize only what is out of date: assets never materialized, whose code (a SQL file, a group's "
        "module) changed (what the UI marks unsynced), whose dataset files changed, whose blocking check did not "
        "pass last time, or whose upstream was materialized since (a retrain from the dagster CLI), and everything "
        "downstream of them; steps given --config-json settings run too",
    )
    run.add_argument(
        "--config-json",
        metavar="JSON",
        help="run config for the steps, as `dagster asset materialize --config-json` takes it, e.g. "
        '\'{"ops": {"model": {"config": {"max_rounds": 300}}}}\'; checked against the job before any work',
    )
    run.set_defaults(func=cmd_run)
    ui = sub.add_parser("ui", help="serve the Dagster UI (and its daemon) on 127.0.0.1:3000", **common)
    _workspace_options(ui)
    ui.add_argument("--host", default="127.0.0.1", help="the address to serve on (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=3000, help="the port (default 3000)")
    ui.set_defaults(func=cmd_ui)
    mlflow_ui = sub.add_parser(
        "mlflow-ui",
        help=f"serve the MLflow UI on 127.0.0.1:{settings.DEFAULT_MLFLOW_UI_PORT} (recorded as KUAI_MLFLOW_UI_URL)",
        **common,
    )
    _workspace_options(mlflow_ui, data=False)
    mlflow_ui.add_argument("--host", default="127.0.0.1", help="the address to serve on (default 127.0.0.1: this machine only)")
    mlflow_ui.add_argument("--port", type=int, default=settings.DEFAULT_MLFLOW_UI_PORT,
                           help=f"the port (default {settings.DEFAULT_MLFLOW_UI_PORT}); recorded in the workspace's .env "
                           "as KUAI_MLFLOW_UI_URL, so the Dagster links point here")
    mlflow_ui.set_defaults(func=cmd_mlflow_ui)
    gen = sub.add_parser(
        "generate", help="write a synthetic dataset (same as python -m kuai_assets.synth)",
        description=synth_cli.DESCRIPTION, epilog=synth_cli.worlds_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    synth_cli.add_arguments(gen, size_choices=False)
    gen.set_defaults(func=cmd_generate)
    env = sub.add_parser("env", help="record and print the workspace's settings (<work>/env.sh)", **common)
    _workspace_options(env)
    env.set_defaults(func=cmd_env)
    return parser


if __name__ == "__main__":
    sys.exit(main())
