"""One workspace for `kuai run`, the dagster CLI, the UIs and MLflow, whichever shell comes next.

The end-to-end test runs `kuai run` on tiny data (whose test face file is empty: accepted, and
the submission is still valid) with the tiny graph's light step settings (--config-json), a work
dir and a data dir elsewhere than the defaults, then, from a fresh shell that only sources
<work>/env.sh, the literal `dagster asset materialize --select model`: it reads and writes the same workspace, and the
instance lists both runs. The other tests pin down how the settings resolve and the checks the
resources make before a step runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from kuai_assets import settings
from kuai_assets_tests.conftest import SMALLEST_ATTENTION, TINY_RUN_CONFIG
from kuai_assets_tests.test_cli import KUAI, REPO, clean_env

DAGSTER = Path(sys.executable).parent / "dagster"
RUN_TIMEOUT = 900  # `kuai run` on tiny data on a loaded 2-core machine


def fresh_shell(script: str, timeout: float = RUN_TIMEOUT, **extra: str) -> subprocess.CompletedProcess:
    """`bash -c script` with only HOME, PATH and this code on PYTHONPATH: nothing of this session."""
    env = {"HOME": os.environ.get("HOME", "/tmp"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **extra}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=timeout, cwd="/")


@pytest.fixture(scope="module")
def faceless_test_data(tmp_path_factory) -> Path:
    """Tiny data whose test_face.txt is empty: no test photo has a detected face."""
    from kuai_assets.synth import generate, get_size

    root = tmp_path_factory.mktemp("elsewhere") / "tiny_no_test_faces"
    generate(root, get_size("tiny").with_vector_dim(64), seed=5)
    (root / "test" / "test_face.txt").write_text("")
    return root


def test_kuai_run_then_the_dagster_cli_in_a_fresh_shell_share_one_workspace(faceless_test_data, tmp_path):
    from kuai_assets.formats.submission import validate_submission
    from kuai_assets.formats.layout import interaction_file

    work = tmp_path / "somewhere"
    repo_work = REPO / ".kuai"
    repo_before = sorted(p.name for p in repo_work.iterdir()) if repo_work.is_dir() else None

    # the tiny graph's light model settings and the smallest attention network (conftest): what is
    # tested is the shared workspace
    light = json.dumps({"ops": {**TINY_RUN_CONFIG["ops"], "attention_model": {"config": SMALLEST_ATTENTION}}})
    result = subprocess.run(
        [str(KUAI), "run", "--size", "tiny", "--data", str(faceless_test_data), "--work", str(work), "--config-json", light],
        env=clean_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert f"checking the dataset's layout at {faceless_test_data}" in result.stdout
    assert "evaluation AUC" in result.stdout
    # the run log: no DEBUG worker lines at INFO, no MLflow chatter
    for noise in (" - DEBUG - ", "Successfully registered model", "Created version", "mlflow.store.db.utils"):
        assert noise not in result.stderr, noise
    # the empty test face file was accepted: the submission covers every test row
    assert validate_submission(work / "submission.txt", interaction_file(faceless_test_data, "test")) > 0

    recorded = settings.read_workspace_file(work)
    assert recorded["KUAI_WORK_DIR"] == str(work)
    assert recorded["KUAI_DATA_DIR"] == str(faceless_test_data)
    assert recorded["DAGSTER_HOME"] == str(work / "dagster_home")
    assert recorded["MLFLOW_TRACKING_URI"] == f"sqlite:///{work}/mlflow/mlflow.db"

    # a fresh shell: source env.sh, then the literal command (small model settings to be quick)
    config = json.dumps({"ops": {"model": {"config": {"max_rounds": 30, "early_stopping_rounds": 10}}}})
    shell = fresh_shell(f"source {work}/env.sh && dagster asset materialize --select model --config-json '{config}'")
    assert shell.returncode == 0, shell.stdout[-3000:] + shell.stderr[-5000:]
    assert "has not been materialized" not in shell.stderr
    # and Dagster 1.13's own CLI, from the repository (a dg project), in another fresh shell
    dg_shell = fresh_shell(f"source {work}/env.sh && cd {REPO} && dg launch --assets model --config-json '{config}'")
    assert dg_shell.returncode == 0, dg_shell.stdout[-3000:] + dg_shell.stderr[-5000:]

    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(work / "dagster_home"))) as instance:
        runs = instance.get_runs()
        assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 3, runs
        assert runs[1].asset_selection == {dg.AssetKey("model")}  # the dagster CLI's
        cli_run = runs[0]  # dg launch's, newest first
        assert cli_run.asset_selection == {dg.AssetKey("model")}
        event = instance.get_latest_materialization_event(dg.AssetKey("model"))
        assert event.run_id == cli_run.run_id
        metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}

    # the CLI's model is recorded in the workspace's MLflow store, registered @candidate
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work}/mlflow/mlflow.db")
    run = client.get_run(metadata["mlflow_run_id"])
    assert run.data.tags["dagster_run_id"] == cli_run.run_id
    candidate = client.get_model_version_by_alias("kuai_click_model", "candidate")
    assert candidate.run_id == metadata["mlflow_run_id"]
    # kuai run's model became the first champion (the check ran in the `everything` job)
    champion = client.get_model_version_by_alias("kuai_click_model", "champion")
    assert str(champion.version) == "1"

    # `kuai run --unsynced`: after the two retrains from the CLI, what `model` feeds is behind; the
    # network is given settings, so it runs with them; nothing upstream of the model runs again
    small = json.dumps({"ops": {"attention_model": {"config": SMALLEST_ATTENTION}}})
    again = subprocess.run([str(KUAI), "run", "--work", str(work), "--unsynced", "--config-json", small],
                           env=clean_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert re.search(r"\[kuai\] 4 of \d+ assets to materialize:\n\[kuai\]   settings given \(--config-json\): "
                     r"attention_model\n\[kuai\]   and 3 downstream of them\n", again.stdout), again.stdout
    assert "evaluation AUC" in again.stdout
    idle = subprocess.run([str(KUAI), "run", "--work", str(work), "--unsynced"],
                          env=clean_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path)
    assert idle.returncode == 0, idle.stdout[-3000:] + idle.stderr[-5000:]
    assert re.search(r"\[kuai\] every one of \d+ assets is up to date: nothing to materialize", idle.stdout), idle.stdout
    assert "[kuai] the latest results:" in idle.stdout
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(work / "dagster_home"))) as instance:
        runs = instance.get_runs()
        assert len(runs) == 4, runs  # the idle one started no run
        assert runs[0].status == dg.DagsterRunStatus.SUCCESS
        assert runs[0].asset_selection == {dg.AssetKey(k) for k in ("attention_model", "blend", "submission", "evaluation")}

    # nothing was written to the repo's default workspace
    after = sorted(p.name for p in repo_work.iterdir()) if repo_work.is_dir() else None
    assert after == repo_before


def test_the_workspace_file_supplies_what_the_environment_leaves_unset(tmp_path, monkeypatch):
    for name in [s.name for s in settings.SETTINGS]:
        monkeypatch.delenv(name, raising=False)
    work, data = tmp_path / "w", tmp_path / "d"
    settings.write_workspace_files(
        work,
        {
            "KUAI_WORK_DIR": str(work),
            "KUAI_DATA_DIR": str(data),
            "KUAI_SYNTH_SIZE": "tiny",
            "DAGSTER_HOME": str(work / "dagster_home"),
            "MLFLOW_TRACKING_URI": "sqlite:////elsewhere/mlflow.db",
            "KUAI_MLFLOW_UI_URL": "http://127.0.0.1:5517",
        },
    )
    # only DAGSTER_HOME (a UI started with it): the workspace holding it is found
    monkeypatch.setenv("DAGSTER_HOME", str(work / "dagster_home"))
    assert settings.default_work_dir() == work
    assert settings.default_data_dir() == data
    assert settings.default_tracking_uri() == "sqlite:////elsewhere/mlflow.db"
    assert settings.mlflow_ui_url() == "http://127.0.0.1:5517"
    # the live UI address: the workspace's record wins even over an environment that has an older
    # one (`dagster dev` started in the work dir loads the .env into its environment at start)
    monkeypatch.setenv("KUAI_MLFLOW_UI_URL", "http://127.0.0.1:5000")
    assert settings.mlflow_ui_url() == "http://127.0.0.1:5517"
    monkeypatch.delenv("KUAI_MLFLOW_UI_URL")
    # the environment wins over the file
    monkeypatch.setenv("KUAI_DATA_DIR", str(tmp_path / "other"))
    assert settings.default_data_dir() == tmp_path / "other"
    # env.sh exports what it records, except the live MLflow UI address (read from .env when used)
    script = (work / "env.sh").read_text()
    assert f"export KUAI_DATA_DIR={data}" in script and "KUAI_MLFLOW_UI_URL" not in script
    # the resources' defaults are the workspace's
    monkeypatch.delenv("KUAI_DATA_DIR")
    from kuai_assets.defs.resources import default_resources

    resources = default_resources()
    assert resources["workspace"].data_dir == str(data)
    assert resources["tracking"].ui_url == "http://127.0.0.1:5517"


def test_how_a_workspace_runs_is_recorded_with_it(tmp_path):
    """KUAI_ENGINE, KUAI_SPARK_URL and KUAI_EXECUTOR set for `kuai env` are recorded in the
    workspace: a fresh shell that sources env.sh, and a UI that reads the .env, run the table
    models on the same engine; a later `kuai` in that workspace keeps them. Unset, none is written."""
    from kuai_assets_tests.test_cli import kuai

    plain, spark = tmp_path / "plain", tmp_path / "spark"
    made = kuai("env", "--work", str(plain), "--size", "tiny", env=clean_env())
    assert made.returncode == 0, made.stderr
    assert not {"KUAI_ENGINE", "KUAI_SPARK_URL", "KUAI_EXECUTOR"} & set(settings.read_workspace_file(plain))
    made = kuai("env", "--work", str(spark), "--size", "tiny",
                env=clean_env(KUAI_ENGINE="spark", KUAI_SPARK_URL="local[1]", KUAI_EXECUTOR="multiprocess"))
    assert made.returncode == 0, made.stderr
    recorded = settings.read_workspace_file(spark)
    assert (recorded["KUAI_ENGINE"], recorded["KUAI_SPARK_URL"], recorded["KUAI_EXECUTOR"]) == ("spark", "local[1]", "multiprocess")
    probe = ("from kuai_assets.defs.engine import default_engine_resource; from kuai_assets.definitions import EXECUTOR; "
             "r = default_engine_resource(); print(r.kind, r.spark_url, EXECUTOR.name)")
    shell = fresh_shell(f"source {spark / settings.ENV_SCRIPT} && python -c '{probe}'")
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.split() == ["spark", "local[1]", "multiprocess"]
    # the .env alone (a UI started with DAGSTER_HOME only) gives the same engine
    shell = fresh_shell(f"{sys.executable} -c '{probe}'", DAGSTER_HOME=str(spark / "dagster_home"))
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.split()[:2] == ["spark", "local[1]"]
    # a later `kuai` in the workspace, without the variables, keeps what it recorded, and says nothing
    again = kuai("env", "--work", str(spark), env=clean_env())
    assert again.returncode == 0, again.stderr
    assert settings.read_workspace_file(spark)["KUAI_ENGINE"] == "spark"
    assert again.stderr == ""
    # a variable set for one command stays for the later ones: the command says so, on stderr
    # (stdout stays the env.sh it prints)
    changed = kuai("env", "--work", str(plain), env=clean_env(KUAI_EXECUTOR="multiprocess"))
    assert changed.returncode == 0, changed.stderr
    assert changed.stderr.splitlines() == [
        f"[kuai] recorded in {plain / settings.WORKSPACE_FILE}, for every later command in this workspace: "
        "KUAI_EXECUTOR=multiprocess (was not set)"
    ]
    assert changed.stdout == (plain / settings.ENV_SCRIPT).read_text()
    changed = kuai("env", "--work", str(plain), env=clean_env(KUAI_EXECUTOR="in_process"))
    assert changed.stderr.splitlines() == [
        f"[kuai] recorded in {plain / settings.WORKSPACE_FILE}, for every later command in this workspace: "
        "KUAI_EXECUTOR=in_process (was multiprocess)"
    ]


def test_another_work_dir_does_not_inherit_a_sourced_workspace(tmp_path, monkeypatch):
    """A shell that sourced workspace A's env.sh, then `kuai run --work B`: B gets its own defaults."""
    for name in [s.name for s in settings.SETTINGS]:
        monkeypatch.delenv(name, raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("KUAI_WORK_DIR", str(a))
    monkeypatch.setenv("KUAI_DATA_DIR", str(tmp_path / "a_data"))
    monkeypatch.setenv("DAGSTER_HOME", str(a / "dagster_home"))
    workspace = settings.resolve_workspace(work=b, size="tiny")
    assert workspace.data_dir == b / "data" / "tiny" and workspace.generates_its_data
    assert workspace.dagster_home == b / "dagster_home"
    assert workspace.tracking_uri == f"sqlite:///{b}/mlflow/mlflow.db"


def test_only_the_workspaces_own_synthetic_default_is_ever_generated(tmp_path):
    from kuai_assets.defs.resources import WorkspaceResource

    from kuai_assets.defs.raw import dataset

    elsewhere = tmp_path / "repo" / ".kuai" / "data" / "tiny"
    resource = WorkspaceResource(data_dir=str(elsewhere), work_dir=str(tmp_path / "work"))
    assert not resource.generates_here()
    with pytest.raises(dg.Failure, match=rf"^no dataset at {elsewhere}: "):
        resource.data_root()
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([dataset], resources={"workspace": resource}, instance=instance, raise_on_error=False)
    assert not result.success
    assert not (tmp_path / "repo").exists()


def test_the_dataset_asset_generates_the_workspaces_default_once_and_fingerprints_it(tmp_path):
    from kuai_assets.defs.raw import dataset

    work = tmp_path / "work"
    resource = WorkspaceResource(data_dir=str(work / "data" / "tiny"), work_dir=str(work))
    assert resource.generates_here()

    def materialize_dataset():
        with dg.DagsterInstance.ephemeral() as instance:
            result = dg.materialize([dataset], resources={"workspace": resource}, instance=instance)
            event = result.asset_materializations_for_node("dataset")[0]
            return event.metadata, event.tags["dagster/data_version"]

    metadata, version = materialize_dataset()
    assert (work / "data" / "tiny" / "ground_truth" / "summary.json").is_file()
    assert metadata["files"].value >= 6 and metadata["data_dir"].value == str(work / "data" / "tiny")
    again = materialize_dataset()[1]
    assert again == version  # nothing regenerated, nothing changed
    text = work / "data" / "tiny" / "test" / "test_text.txt"
    text.write_text(text.read_text() + "")
    os.utime(text, ns=(text.stat().st_atime_ns, text.stat().st_mtime_ns + 10**9))
    assert materialize_dataset()[1] != version


def test_kuai_mlflow_ui_records_its_address_for_the_dagster_links(tmp_path):
    work = tmp_path / "w"
    env = clean_env(KUAI_WORK_DIR=str(work))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(KUAI), "mlflow-ui", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while settings.read_workspace_file(work).get("KUAI_MLFLOW_UI_URL") != f"http://127.0.0.1:{port}":
            assert time.monotonic() < deadline, settings.read_workspace_file(work)
            assert server.poll() is None, server.returncode
            time.sleep(0.2)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    # what a step in a fresh process of this workspace links to
    probe = fresh_shell(
        f"source {work}/env.sh && python -c 'from kuai_assets.definitions import defs; print(defs.resources[\"tracking\"].ui_url)'"
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == f"http://127.0.0.1:{port}"


# -- the checks the resources make before a step runs (dagster CLI and UI runs) --------------------


from kuai_assets.defs.resources import TrackingResource, WorkspaceResource  # noqa: E402


@dg.asset
def needs_tracking(tracking: TrackingResource) -> None:
    raise AssertionError("the step must not start")


@dg.asset
def needs_workspace(workspace: WorkspaceResource) -> None:
    raise AssertionError("the step must not start")


def failure_causes(assets, resources) -> list[str]:
    """Materialize in process; the failure causes as `kuai run` prints them (read from the events)."""
    from kuai_assets.cli import failure_causes

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(assets, resources=resources, instance=instance, raise_on_error=False)
        assert not result.success
        return failure_causes(instance, result.run_id)


def test_an_interrupted_step_says_so():
    """Ctrl-C in `kuai run` (Dagster raises DagsterExecutionInterruptedError in the step): the cause
    is the interruption in words, not the exception's class name."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    @dg.asset
    def interrupted() -> None:
        raise DagsterExecutionInterruptedError()

    assert failure_causes([interrupted], {}) == ["interrupted: interrupted (Ctrl-C, or a signal to the run's process)"]


def test_a_step_does_not_start_on_an_unreachable_mlflow_store(tmp_path):
    started = time.monotonic()
    causes = failure_causes(
        [needs_tracking], {"tracking": TrackingResource(tracking_uri="http://127.0.0.1:1", artifact_root=str(tmp_path))}
    )
    assert time.monotonic() - started < 30
    assert causes == [
        "needs_tracking: tracking: cannot reach the MLflow server at http://127.0.0.1:1 (GET http://127.0.0.1:1/health: "
        "[Errno 111] Connection refused; waited at most 10 s). Start it (`kuai mlflow-ui`), or point MLFLOW_TRACKING_URI "
        "(or the `tracking` resource's tracking_uri) at a reachable, writable store."
    ]


def test_a_step_does_not_start_on_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "data").mkdir()
    causes = failure_causes(
        [needs_workspace], {"workspace": WorkspaceResource(data_dir=str(tmp_path / "data"), work_dir=str(tmp_path / "w"))}
    )
    assert len(causes) == 1 and causes[0].startswith(
        f"needs_workspace: workspace: {tmp_path / 'data'} is not a dataset in the released layout: "
        "missing train/train_interaction.txt"
    ), causes
