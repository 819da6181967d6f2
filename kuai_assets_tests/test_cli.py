"""`kuai` as a person types it: every mistake is one line on stderr and exit code 2, the help
lists every setting the platform reads, and an unreachable MLflow store is reported within the
probe's bound, before any work.

The commands run as subprocesses (the installed `kuai` script, this worktree's code first on
PYTHONPATH) in a clean environment, as from a fresh shell.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kuai_assets import settings
from kuai_assets.synth.sizes import SIZES

KUAI = Path(sys.executable).parent / "kuai"
REPO = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """A fresh shell's environment: no KUAI_, DAGSTER_ or MLFLOW_ settings, this code first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUAI_", "DAGSTER_", "MLFLOW_"))}
    env.update({"PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true", "KUAI_DUCKDB_MEMORY": "1GB", **extra})
    return env


def kuai(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(KUAI), *args], env=env or clean_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The mistake's message: exit code 2, exactly one line on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_help_lists_every_setting_the_platform_reads():
    result = kuai("run", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--size", "--data", "--work", "--log-level"):
        assert option in result.stdout
    for setting in settings.SETTINGS:
        assert setting.name in result.stdout, setting.name


def test_every_environment_variable_read_in_the_code_is_a_listed_setting():
    """The one place: a KUAI_ (or MLflow) variable read anywhere in the package is in settings.SETTINGS."""
    import re

    read = set()
    for path in (REPO / "kuai_assets").rglob("*.py"):
        if path.name == "bench.py":  # the benchmark's own knobs, not the platform's
            continue
        text = path.read_text()
        read |= set(re.findall(r"""environ(?:\.get\(|\[|\.setdefault\()\s*["']((?:KUAI|MLFLOW)_[A-Z_]+)""", text))
    read -= {"MLFLOW_DISABLE_TELEMETRY", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"}  # forced / an implementation detail
    assert read, "the scan found nothing: it proves nothing"
    assert read <= set(settings.BY_NAME), read - set(settings.BY_NAME)


def test_unknown_size_is_one_line(tmp_path):
    line = one_line_error(kuai("run", "--size", "tny", "--work", str(tmp_path / "w")))
    assert line == f"kuai: unknown size 'tny' (--size): choose one of {', '.join(SIZES)}"
    assert not (tmp_path / "w").exists(), "nothing is written for a mistake"


def test_unknown_size_from_the_environment_is_one_line(tmp_path):
    line = one_line_error(kuai("run", "--work", str(tmp_path / "w"), env=clean_env(KUAI_SYNTH_SIZE="tny")))
    assert line == f"kuai: unknown size 'tny' (KUAI_SYNTH_SIZE): choose one of {', '.join(SIZES)}"


def test_missing_data_dir_is_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    line = one_line_error(kuai("run", "--data", str(missing), "--work", str(tmp_path / "w")))
    assert line == (
        f"kuai: no dataset at {missing}: point KUAI_DATA_DIR (or `kuai run --data`, or the workspace "
        "resource's data_dir) at a folder in the released layout, with train/ and test/ inside"
    )
    assert not (tmp_path / "w").exists()


def test_a_folder_that_is_not_a_dataset_is_one_line(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    result = kuai("run", "--data", str(tmp_path / "data"), "--work", str(tmp_path / "w"))
    line = one_line_error(result)
    assert line.startswith(f"kuai: {tmp_path / 'data'} is not a dataset in the released layout: missing train/train_interaction.txt, ")


def test_generate_into_an_existing_folder_is_one_line(tmp_path):
    line = one_line_error(kuai("generate", "--size", "tiny", "--out", str(tmp_path)))
    assert line == f"kuai: {tmp_path} already exists: `kuai generate` writes a new folder (remove it or choose another --out)"


def test_generate_takes_the_generators_options_and_lists_its_worlds(tmp_path):
    import json

    from kuai_assets.synth.world import WORLDS

    help_text = kuai("generate", "--help").stdout
    for option in ("--world", "--seed", "--vector-dim", "--visual-format", "--zip-compression", "--visual-prefix"):
        assert option in help_text
    for world in WORLDS.values():
        assert f"  {world.name}: {world.summary}" in help_text
    made = kuai("generate", "--size", "tiny", "--world", "click_blind_timeline", "--seed", "3", "--vector-dim", "16",
                "--out", str(tmp_path / "data"))
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout)
    assert (summary["size"], summary["world"], summary["seed"]) == ("tiny", "click_blind_timeline", 3)
    assert (tmp_path / "data" / "train" / "train_interaction.txt").is_file()
    line = one_line_error(kuai("generate", "--world", "nope", "--out", str(tmp_path / "x")))
    assert line.startswith("kuai: generate: argument --world: invalid choice: 'nope'")


def test_generate_unknown_size_is_one_line(tmp_path):
    line = one_line_error(kuai("generate", "--size", "huge", "--out", str(tmp_path / "x")))
    assert line == f"kuai: unknown size 'huge' (--size): choose one of {', '.join(SIZES)}"


def test_unknown_option_is_one_line():
    line = one_line_error(kuai("run", "--sise", "tiny"))
    assert line == "kuai: unrecognized arguments: --sise tiny (see `kuai --help`)"


def test_a_run_config_that_does_not_fit_is_one_line_before_any_work(tmp_path):
    work = tmp_path / "w"
    line = one_line_error(kuai("run", "--size", "tiny", "--work", str(work), "--config-json", "{ops: 1}"))
    assert line.startswith("kuai: run: --config-json is not JSON: Expecting property name enclosed in double quotes"), line
    line = one_line_error(kuai("run", "--size", "tiny", "--work", str(work), "--config-json", "[1]"))
    assert line == "kuai: run: --config-json must be a JSON object (a run config), got list"
    wrong = '{"ops": {"model": {"config": {"max_rounds": "many"}}}, "nope": 1}'
    line = one_line_error(kuai("run", "--size", "tiny", "--work", str(work), "--config-json", wrong))
    assert line.startswith("kuai: run: --config-json does not fit the job's config: "), line
    assert "max_rounds" in line and "nope" in line, line
    assert not (work / "data").exists()  # the synthetic default was not generated


def test_unreachable_mlflow_server_is_reported_before_any_work(tmp_path):
    """Nothing listens on port 1: the probe says so at once (MLflow's own retries took minutes)."""
    data = tmp_path / "data"  # a folder that is not a dataset: the MLflow check must come first
    data.mkdir()
    started = time.monotonic()
    result = kuai("run", "--data", str(data), "--work", str(tmp_path / "w"), env=clean_env(MLFLOW_TRACKING_URI="http://127.0.0.1:1"))
    elapsed = time.monotonic() - started
    line = one_line_error(result)
    assert line == (
        "kuai: cannot reach the MLflow server at http://127.0.0.1:1 (GET http://127.0.0.1:1/health: "
        "[Errno 111] Connection refused; waited at most 10 s). Start it (`kuai mlflow-ui`), or point "
        "MLFLOW_TRACKING_URI (or the `tracking` resource's tracking_uri) at a reachable, writable store."
    )
    assert "checking the MLflow store at http://127.0.0.1:1 (at most 10 s)" in result.stdout
    assert elapsed < 30, elapsed  # process start and imports included; the probe itself is bounded


def test_a_server_that_never_answers_is_bounded():
    """A server that accepts the connection and never answers: the probe gives up at its bound."""
    from kuai_assets.ml.tracking import TrackingError, probe_store

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)  # never accepted: the request waits for an answer that never comes
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(TrackingError) as caught:
            probe_store(uri, timeout=1.0)
        elapsed = time.monotonic() - started
    assert str(caught.value) == (
        f"cannot reach the MLflow server at {uri} (GET {uri}/health: timed out; waited at most 1 s). "
        "Start it (`kuai mlflow-ui`), or point MLFLOW_TRACKING_URI (or the `tracking` resource's "
        "tracking_uri) at a reachable, writable store."
    )
    assert elapsed < 2.5, elapsed


def test_probe_accepts_a_writable_sqlite_store_and_refuses_an_unwritable_one(tmp_path):
    from kuai_assets.ml.tracking import TrackingError, probe_store

    assert "is writable" in probe_store(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store's folder should be")
    with pytest.raises(TrackingError, match=rf"^cannot write the MLflow store at sqlite:///{blocker}/mlflow.db: "):
        probe_store(f"sqlite:///{blocker}/mlflow.db")


def test_a_failed_run_ends_with_its_cause_and_no_cascade(tmp_path):
    """A dataset whose train file has a bad id: the run fails, and `kuai run` ends with the failed
    step's own message (read from the run's events), not "see the error above"; the steps skipped
    after it stay out of the WARNING-level log."""
    from kuai_assets.synth import generate, get_size

    data = tmp_path / "data"
    generate(data, get_size("tiny").with_vector_dim(16), seed=3)
    path = data / "train" / "train_interaction.txt"
    rows = path.read_text().splitlines()
    rows[2] = "u" + rows[2]
    path.write_text("\n".join(rows) + "\n")

    result = kuai("run", "--data", str(data), "--work", str(tmp_path / "w"), "--log-level", "WARNING", timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    tail = result.stderr.strip().splitlines()[-3:]
    assert tail[0].startswith("[kuai] the run failed after ") and "(Dagster run " in tail[0], tail
    assert tail[2].startswith("[kuai] once that is dealt with, `kuai run --unsynced` goes on from here"), tail
    assert tail[1] == (
        f"  raw_interactions: {path}, line 3: column 'user_id' must be an integer, got 'u{rows[2][1:].split()[0]}'; "
        f"the line reads {rows[2][:120]!r}"
    ), tail
    assert "see the error above" not in result.stderr
    assert "Not executing" not in result.stderr
    # the step's failure is logged with its message, not with the stack of Dagster's frames
    assert "STEP_FAILURE" in result.stderr and "Stack Trace" not in result.stderr, result.stderr


def test_free_space_is_checked_against_what_a_run_may_write(tmp_path, monkeypatch):
    """`kuai run` says the free space of the work dir's disk against what a whole run may write:
    half the vectors' bytes for the store, 22x the text files' for the tables, half as much again
    while steps run, less the outputs the workspace holds; it warns when that may not fit."""
    from kuai_assets import cli, storage

    data, work = tmp_path / "data", tmp_path / "work"
    (data / "train").mkdir(parents=True)
    (data / "test").mkdir()
    (data / "train" / "train_interaction.txt").write_bytes(b"x" * 2**20)
    (data / "test" / "final_visual_test.zip").write_bytes(b"x" * 4 * 2**20)
    (data / "ground_truth").mkdir()
    (data / "ground_truth" / "test_ground_truth.txt").write_bytes(b"x" * 2**20)  # not read into the tables
    (work / "tables").mkdir(parents=True)
    (work / "tables" / "raw_interactions.parquet").write_bytes(b"x" * 3 * 2**20)
    workspace = settings.resolve_workspace(work, data)
    # 1.5 x (0.5 x 4 MiB + 22 x 1 MiB) = 36 MiB, less the 3 MiB held
    assert cli.run_writes(data) == (36 * 2**20, 4 * 2**20, 2**20)
    # the vectors as the unzipped folder of per-photo .npy files count as vectors all the same
    unzipped = tmp_path / "unzipped"
    shutil.copytree(data, unzipped)
    (unzipped / "test" / "final_visual_test.zip").unlink()
    (unzipped / "test" / "final_visual_test").mkdir()
    for photo in range(4):
        (unzipped / "test" / "final_visual_test" / f"{photo}.npy").write_bytes(b"x" * 2**20)
    assert cli.run_writes(unzipped) == (36 * 2**20, 4 * 2**20, 2**20)
    said: list[str] = []

    monkeypatch.setattr(storage, "free_bytes", lambda path: 2**30)
    assert cli.check_free_space(workspace, said.append)
    assert said == [
        f"[kuai] checking free space at {work}: 1.0 GiB free; a whole run may write up to 33.0 MiB "
        "(for the dataset's 4.0 MiB of vectors and 1.0 MiB of text files, less the 3.0 MiB of outputs it replaces)"
    ]

    said.clear()
    monkeypatch.setattr(storage, "free_bytes", lambda path: 33 * 2**20 - 1)
    assert not cli.check_free_space(workspace, said.append)
    assert said[1].startswith(f"[kuai] warning: the run may fill the disk of {work} before it ends: "), said


def test_the_console_drops_dagsters_stack_after_a_failure_only():
    """A platform Failure prints its message alone; any other error keeps the stack that says
    where it came from; the skipped-step cascade falls under the threshold."""
    import logging

    from kuai_assets.console import QuietFailures

    quiet = QuietFailures(logging.INFO)

    def record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("dagster", level, __file__, 1, message, None, None)

    failure = record(
        'STEP_FAILURE - Execution of step "raw_text" failed.\n\n'
        "dagster._core.definitions.events.Failure: raw_text: train_text.txt, line 3: not an integer\n\n"
        "Stack Trace:\n  File \"execute_plan.py\", line 243\n"
    )
    assert quiet.filter(failure)
    assert failure.getMessage() == (
        'STEP_FAILURE - Execution of step "raw_text" failed.\n\n'
        "dagster._core.definitions.events.Failure: raw_text: train_text.txt, line 3: not an integer"
    )
    bug = record('STEP_FAILURE - Execution of step "model" failed.\n\nKeyError: \'x\'\n\nStack Trace:\n  File "gbdt.py"\n')
    assert quiet.filter(bug) and bug.getMessage().endswith('Stack Trace:\n  File "gbdt.py"\n')
    cascade = record('Dependencies for step model failed: [\'training_matrix\']. Not executing.')
    assert not quiet.filter(cascade) and cascade.levelname == "DEBUG"
    # Ctrl-C: where the signal landed says nothing
    interrupted = record('STEP_FAILURE - Execution of step "feature_group_ablation" failed.\n\n'
                         "dagster._core.errors.DagsterExecutionInterruptedError\n\n"
                         'Stack Trace:\n  File "lightgbm/basic.py", line 4266\n')
    assert quiet.filter(interrupted)
    assert interrupted.getMessage() == ('STEP_FAILURE - Execution of step "feature_group_ablation" failed.\n\n'
                                        "dagster._core.errors.DagsterExecutionInterruptedError")
    # an error whose stack merely passes through an interruption handler keeps its stack
    other = record('STEP_FAILURE - Execution of step "model" failed.\n\nKeyError: \'x\'\n\n'
                   'Stack Trace:\n  File "interrupts.py" in DagsterExecutionInterruptedError\n')
    assert quiet.filter(other) and other.getMessage().endswith('DagsterExecutionInterruptedError\n')


def _run_in_progress(instance, tags: dict[str, str]) -> str:
    """A run of the `everything` job recorded as started in `instance`, as one in progress is."""
    import dagster as dg

    run = dg.DagsterRun(job_name="everything", status=dg.DagsterRunStatus.STARTED, tags=tags)
    instance.add_run(run)
    return run.run_id


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_run_in_progress_stops_kuai_run_and_one_whose_kuai_run_was_killed_is_ended(tmp_path):
    """`kuai run` names the run in progress in its workspace and starts nothing. A run left
    "started" by a `kuai run` that was killed is marked failed first, with the reason, so that it
    does not hold this check for ever."""
    import dagster as dg

    from kuai_assets.cli import initialize_dagster_home
    from kuai_assets.runs_in_progress import PROCESS_TAG
    from kuai_assets.synth import generate, get_size

    data, work = tmp_path / "data", tmp_path / "w"
    generate(data, get_size("tiny").with_vector_dim(16), seed=3)
    home = initialize_dagster_home(work / "dagster_home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        killed = _run_in_progress(instance, {PROCESS_TAG: f"{socket.gethostname()}:{_dead_pid()}:1"})
        live = _run_in_progress(instance, {})  # from the UI or `dagster asset materialize`, alive

    result = kuai("run", "--data", str(data), "--work", str(work))
    line = one_line_error(result)
    assert re.fullmatch(
        rf"kuai: run: Dagster run {live} \(everything, started at \d\d:\d\d:\d\d by the UI or the dagster CLI\) is in "
        r"progress in this workspace; a second run would redo its work on the same tables, and the summary could "
        r"show the other's results\. Wait for it to finish, or stop it in `kuai ui` \(Runs, the run, Terminate\)",
        line,
    ), line
    assert re.search(rf"\[kuai\] Dagster run {killed} was left in progress by a `kuai run` that was killed \(pid \d+\): "
                     "marked failed", result.stdout), result.stdout
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(killed).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(live).status == dg.DagsterRunStatus.STARTED
        assert instance.get_runs_count() == 2  # no run was started


def test_the_refusal_names_what_the_run_in_progress_has_left_and_how_to_stop_it(tmp_path):
    """A live `kuai run`'s run: what it has still to run, and Ctrl-C in that `kuai run` as a way to
    stop it; a run with a long way to go is said in short."""
    import dagster as dg

    from kuai_assets import runs_in_progress as rip

    @dg.asset
    def evaluation() -> None:
        pass

    @dg.asset(deps=[evaluation])
    def feature_group_ablation() -> None:
        pass

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        done = instance.get_run_by_id(dg.materialize([evaluation, feature_group_ablation], instance=instance).run_id)
        # a run of the same plan, started by this process and not yet past its first step
        run = dg.DagsterRun(job_name="everything", status=dg.DagsterRunStatus.STARTED, tags=rip.own_tags(),
                            execution_plan_snapshot_id=done.execution_plan_snapshot_id)
        instance.add_run(run)
        text = rip.refusal(instance)
    assert re.fullmatch(
        rf"run: Dagster run {run.run_id} \(everything, started at \d\d:\d\d:\d\d by `kuai run`, pid {os.getpid()}\) is in "
        r"progress in this workspace \(still to run: evaluation, feature_group_ablation\); a second run would redo its "
        r"work on the same tables, and the summary could show the other's results\. Wait for it to finish, or stop it "
        r"with Ctrl-C in that `kuai run` \(after its evaluation, that stops only what is left\) or in `kuai ui` "
        r"\(Runs, the run, Terminate\)",
        text,
    ), text


def test_a_kuai_run_process_is_gone_only_when_it_is():
    from kuai_assets import runs_in_progress as rip

    host = socket.gethostname()
    assert rip.process_gone(rip.own_tags()) is None  # this process, alive
    dead = _dead_pid()
    assert rip.process_gone({rip.PROCESS_TAG: f"{host}:{dead}:1"}) == dead
    assert rip.process_gone({rip.PROCESS_TAG: f"another-{host}:{dead}:1"}) is None  # cannot tell from here
    assert rip.process_gone({}) is None  # not started by `kuai run`
    if Path("/proc/self/stat").exists():  # this pid, reused by a process started at another time
        assert rip.process_gone({rip.PROCESS_TAG: f"{host}:{os.getpid()}:1"}) == os.getpid()


def test_kuai_ui_ends_the_runs_of_a_killed_kuai_run_before_it_starts(tmp_path, monkeypatch, capsys):
    """`kuai ui` marks failed, before the UI starts, a run whose `kuai run` was killed: the UI would
    show it in progress for ever. A run that may still be going is left alone."""
    import dagster as dg

    from kuai_assets import cli
    from kuai_assets.runs_in_progress import PROCESS_TAG

    home = cli.initialize_dagster_home(tmp_path / "dagster_home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        killed = _run_in_progress(instance, {PROCESS_TAG: f"{socket.gethostname()}:{_dead_pid()}:1"})
        live = _run_in_progress(instance, {})
    started = []
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setattr(cli, "_exec", lambda argv: started.append(argv) or 0)
    monkeypatch.setattr(cli, "refuse_a_missing_dataset", lambda workspace: None)
    monkeypatch.setattr(cli, "prepare_environment", lambda workspace: None)
    assert cli.main(["ui", "--work", str(tmp_path)]) == 0
    assert started and started[0][1] == "dev"  # then the UI started
    assert f"Dagster run {killed} was left in progress by a `kuai run` that was killed" in capsys.readouterr().out
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(killed).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(live).status == dg.DagsterRunStatus.STARTED
