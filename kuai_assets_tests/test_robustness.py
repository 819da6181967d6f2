"""Reliability (issue 4): nothing is lost or half-written, concurrent runs never collide.

The end-to-end tests launch real `dagster asset materialize` processes (the executor of
kuai_assets.definitions; the multiprocess one, forked steps, where a test kills a run) against a persistent Dagster home in a temp folder, kill
them, run them side by side, and point them at an MLflow store that cannot be written. Unit tests
around them pin down the storage layer's clean-up of what killed writers leave behind, the
connection snapshots that keep a reader on one version of a table, and the tracking errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster._core.instance.ref import InstanceRef

from kuai_assets import cli, storage
from kuai_assets.storage import WorkDir

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

DAGSTER = Path(sys.executable).parent / "dagster"
RUN_TIMEOUT = 300  # seconds a whole CLI run may take on a loaded 2-core machine
# small LightGBM settings: these tests check behaviour, not AUC
QUICK_MODEL = {"max_rounds": 30, "early_stopping_rounds": 10}


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory) -> Path:
    from kuai_assets.synth import generate, get_size

    root = tmp_path_factory.mktemp("robust_data") / "tiny64"
    generate(root, get_size("tiny").with_vector_dim(64), seed=23)
    return root


def resources(data: Path, work: Path, tracking_uri: str | None = None, experiment: str = "kuai_assets") -> dict:
    from kuai_assets.defs.engine import EngineResource
    from kuai_assets.defs.resources import WorkspaceResource, TrackingResource

    return {
        "engine": EngineResource(),
        "workspace": WorkspaceResource(data_dir=str(data), work_dir=str(work)),
        "tracking": TrackingResource(
            tracking_uri=tracking_uri or f"sqlite:///{work}/mlflow/mlflow.db",
            artifact_root=str(work / "mlflow" / "artifacts"),
            experiment=experiment,
        ),
    }


def assets_named(*names: str) -> list:
    """The definitions holding these assets (a multi-asset holds more: pass `selection=names` too)."""
    from kuai_assets.definitions import defs

    wanted = {dg.AssetKey(n) for n in names}
    chosen = [a for a in defs.assets if set(a.keys) & wanted]
    assert {k for a in chosen for k in a.keys} >= wanted
    return chosen


def dagster_home(root: Path) -> Path:
    """A Dagster home as every `kuai` command leaves it (written and initialized before any run)."""
    return cli.initialize_dagster_home(root / "dagster_home")


def cli_env(home: Path, data: Path, work: Path, tracking_uri: str | None = None, **extra: str) -> dict:
    """The environment `kuai env` gives the dagster CLI, for a temp instance, dataset and work dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "KUAI_", "MLFLOW_"))}
    env.update(
        {
            "DAGSTER_HOME": str(home),
            **cli.DAGSTER_CLI_MODULE,
            "KUAI_DATA_DIR": str(data),
            "KUAI_WORK_DIR": str(work),
            "MLFLOW_TRACKING_URI": tracking_uri or f"sqlite:///{work}/mlflow/mlflow.db",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "KUAI_DUCKDB_MEMORY": "1GB",
            **extra,
        }
    )
    return env


class Launched:
    """A `dagster asset materialize` process in its own process group, logging to a file."""

    def __init__(self, select: str, env: dict, log: Path, config: dict | None = None):
        self.log = log
        argv = [str(DAGSTER), "asset", "materialize", "--select", select]
        if config:
            argv += ["--config-json", json.dumps(config)]
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                argv, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pgid = self.process.pid  # start_new_session: the leader's pid is the group id

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"run did not finish within {timeout}s:\n{self.tail()}") from None

    def kill(self) -> None:
        """SIGKILL every process of the group (the CLI, the forkserver, the steps)."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def launcher():
    """Start runs; whatever still runs at the end of the test is killed, group and all."""
    launched: list[Launched] = []

    def launch(*args, **kwargs) -> Launched:
        run = Launched(*args, **kwargs)
        launched.append(run)
        return run

    yield launch
    for run in launched:
        run.kill()


def live_members(pgid: int) -> list[int]:
    """Pids of the group's processes that still run (zombies waiting to be reaped do not)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(stat.parent.name))
    return pids


def wait_until(predicate, timeout: float, what: str, run: Launched | None = None, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if run is not None and run.process.poll() is not None:
            raise AssertionError(f"the run exited ({run.process.returncode}) before {what}:\n{run.tail()}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f":\n{run.tail()}" if run else ""))


def table_digest(path: Path) -> tuple[int, int]:
    """Row count and an order-independent checksum of every column of a Parquet file (read fully)."""
    con = duckdb.connect()
    try:
        rows, checksum = con.execute(
            f"select count(*), sum(hash(t)::hugeint) from read_parquet({storage.sql_string(path)}) t"
        ).fetchone()
    finally:
        con.close()
    return rows, int(checksum or 0)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_digest(folder: Path, data_only: bool = False) -> dict[str, str]:
    """Digest of every file of a store version (data_only: not meta.json, which records timings)."""
    return {
        p.name: file_digest(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and not (data_only and p.name == "meta.json")
    }


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if storage.TEMP_NAME.match(p.name)) if folder.is_dir() else []


def assert_published_outputs_whole(work: Path) -> None:
    """Every published name is a whole output: tables read completely, store links resolve to a
    complete version (the vector store opens and its files agree)."""
    for path in sorted((work / "tables").iterdir()):
        if not path.name.startswith("."):
            assert path.suffix == ".parquet", path
            pq.read_table(path)  # raises on a truncated or half-written file
    for link in sorted((work / "stores").iterdir()):
        if link.name.startswith("."):
            continue
        assert link.is_symlink(), f"{link} is not a link to a version"
        target = link.resolve()
        assert target.is_dir() and target.parent == link.parent and target.name.startswith(f".{link.name}-"), target
        if link.name == "video_embeddings":
            meta = json.loads((target / "meta.json").read_text())
            photo_id = np.load(target / "photo_id.npy")
            vectors = np.load(target / "vectors.npy", mmap_mode="r")  # checks the size against the header
            assert vectors.shape == (len(photo_id), meta["dim"]) == (meta["vectors"], meta["dim"])
            assert len(np.load(target / "split.npy")) == len(photo_id)
        if link.name in ("model", "baseline_model"):
            info = json.loads((target / "run.json").read_text())
            assert info["mlflow_run_id"]
            for name in ("validation_model.txt", "submission_model.txt", "test_predictions.parquet"):
                assert (target / name).is_file(), target / name
            pq.read_table(target / "test_predictions.parquet")


def open_instance(home: Path) -> dg.DagsterInstance:
    """The persistent instance the CLI runs use (DAGSTER_HOME=home)."""
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def dagster_runs(home: Path) -> list:
    with open_instance(home) as instance:
        return list(instance.get_runs())


# -- 1. kill a run in the middle of writing ---------------------------------------------------------

# Loaded by every Python process of the launched run (the CLI, the forkserver, the steps) through
# PYTHONPATH: holds the chosen writers after their output is completely written to its temporary
# name and before it is published, and says so with a marker file. A deterministic "in the middle
# of writing"; the storage layer itself is not changed.
HOLD_HOOK = textwrap.dedent(
    """
    import os

    if os.environ.get("KUAI_TEST_HOLD_DIR"):
        import time
        from pathlib import Path

        import kuai_assets.storage as storage

        markers = Path(os.environ["KUAI_TEST_HOLD_DIR"])
        names = set(os.environ["KUAI_TEST_HOLD_NAMES"].split(","))

        def holding(publish):
            def hold_then_publish(temporary, final):
                if Path(final).name in names:
                    (markers / Path(final).name).write_text(str(temporary))
                    time.sleep(3600)
                return publish(temporary, final)

            return hold_then_publish

        storage._publish_file = holding(storage._publish_file)
        storage._publish_store = holding(storage._publish_store)
    """
)


def halved_vectors_copy(source: Path, target: Path) -> Path:
    """The dataset at `source` with every visual vector halved (same photos, other vectors); the
    other files are links to the originals."""
    import io
    import zipfile

    for path in sorted(source.rglob("*")):
        out = target / path.relative_to(source)
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        elif path.suffix == ".zip" and "visual" in path.name:
            with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
                for info in zin.infolist():
                    data = zin.read(info)
                    if not info.is_dir() and data[:6] == b"\x93NUMPY":
                        buffer = io.BytesIO()
                        np.save(buffer, np.load(io.BytesIO(data)) * 0.5)
                        data = buffer.getvalue()
                    zout.writestr(info, data)
        else:
            out.symlink_to(path)
    return target


def test_killed_run_leaves_previous_versions_whole_and_the_next_run_cleans_up(tiny64, tmp_path, launcher):
    """SIGKILL a real run while a table (model_rows) and a store (video_embeddings) sit complete
    under their temporary names, different from the published versions: the published versions
    stay exactly as they were, nothing half-written is under a published name, and the next run
    publishes the new versions and deletes what the killed run left behind."""
    work, home = tmp_path / "work", dagster_home(tmp_path)
    with open_instance(home) as instance:
        previous = dg.materialize(
            assets_named("raw_interactions", "model_rows", "video_embeddings"),
            selection=["raw_interactions", "model_rows", "video_embeddings"],
            resources=resources(tiny64, work),
            instance=instance,
        )
    assert previous.success
    w = WorkDir(work)
    model_rows = w.table_path("model_rows")
    before_rows = table_digest(model_rows)
    before_version = w.require_store("video_embeddings")
    before_store = store_digest(before_version)

    # the killed run writes other versions of both: 3 folds instead of 5, halved vectors
    other = halved_vectors_copy(tiny64, tmp_path / "halved")
    selection, config = "model_rows,video_embeddings", {"ops": {"model_rows": {"config": {"folds": 3}}}}
    hook, markers = tmp_path / "hook", tmp_path / "markers"
    hook.mkdir()
    markers.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_HOOK)
    env = cli_env(
        home, other, work,
        PYTHONPATH=os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]),
        KUAI_TEST_HOLD_DIR=str(markers),
        KUAI_TEST_HOLD_NAMES="model_rows.parquet,video_embeddings",
        # two writers held at once need two steps at a time (in process, the first would hold the run)
        KUAI_EXECUTOR="multiprocess",
    )
    run = launcher(selection, env, tmp_path / "killed.log", config)
    wait_until(
        lambda: (markers / "model_rows.parquet").exists() and (markers / "video_embeddings").exists(),
        RUN_TIMEOUT, "both writers to reach their publish step", run,
    )
    # mid-write: the new versions exist, complete, under temporary names only
    table_tmp = Path((markers / "model_rows.parquet").read_text())
    store_tmp = Path((markers / "video_embeddings").read_text())
    assert table_tmp.parent == w.tables and table_tmp.name in temporaries(w.tables)
    assert store_tmp.parent == w.stores and store_tmp.name in temporaries(w.stores)
    new_rows, new_store = table_digest(table_tmp), store_digest(store_tmp, data_only=True)
    assert new_rows != before_rows and new_store != store_digest(before_version, data_only=True)
    assert table_digest(model_rows) == before_rows

    run.kill()
    wait_until(lambda: not live_members(run.pgid), 30, "every process of the killed run to end")
    assert run.process.returncode == -signal.SIGKILL

    # the previous materialization is intact and nothing half-written is published
    assert table_digest(model_rows) == before_rows
    assert w.require_store("video_embeddings") == before_version
    assert store_digest(before_version) == before_store
    assert_published_outputs_whole(work)
    assert table_tmp.name in temporaries(w.tables) and store_tmp.name in temporaries(w.stores)

    # the next run (in process, same instance) succeeds, publishes the new versions, and removes
    # the killed run's leftovers
    with open_instance(home) as instance:
        rerun = dg.materialize(
            assets_named("model_rows", "video_embeddings"),
            selection=["model_rows", "video_embeddings"],
            resources=resources(other, work),
            instance=instance,
            run_config=config,
        )
    assert rerun.success
    after_version = w.require_store("video_embeddings")
    assert after_version != before_version
    assert store_digest(after_version, data_only=True) == new_store, "the rerun writes what the killed run had"
    assert table_digest(model_rows) == new_rows
    assert temporaries(w.tables) == [] and temporaries(w.stores) == []
    assert before_version.is_dir(), "the version before stays (KEEP_STORE_VERSIONS = 2)"
    assert_published_outputs_whole(work)
    # the instance holds the previous run, the killed one (never finished) and the rerun
    statuses = [r.status for r in dagster_runs(home)]
    assert len(statuses) == 3 and statuses.count(dg.DagsterRunStatus.SUCCESS) == 2, statuses


# -- 2. two runs at once on overlapping selections ----------------------------------------------------


def copy_work(source: Path, target: Path, tables: list[str], stores: list[str] = ()) -> None:
    (target / "tables").mkdir(parents=True)
    for name in tables:
        shutil.copy2(source / "tables" / f"{name}.parquet", target / "tables" / f"{name}.parquet")
    if stores:
        (target / "stores").mkdir()
    for name in stores:
        version = (source / "stores" / name).resolve()
        shutil.copytree(version, target / "stores" / version.name)
        os.symlink(version.name, target / "stores" / name)


def test_two_concurrent_runs_on_overlapping_selections_both_succeed(materialized, tmp_path, launcher):
    """Two runs at once, same work dir, instance and (new) MLflow store, both rewriting the SQL
    assets model_rows and label_history (which reads model_rows while the other run replaces it)
    and both training `model`: both succeed, the tables are exactly what one run alone writes,
    both models are recorded in MLflow, the model store is whole."""
    from mlflow import MlflowClient

    source, data = Path(materialized["work"]), Path(materialized["data"])
    work, home = tmp_path / "work", dagster_home(tmp_path)
    shared = ["model_rows", "label_history"]
    copy_work(source, work, shared + ["raw_interactions", "training_matrix"])
    reference = {name: table_digest(source / "tables" / f"{name}.parquet") for name in shared}

    select = ",".join(shared + ["model"])
    config = {"ops": {"model": {"config": QUICK_MODEL}}}
    env = cli_env(home, data, work)
    first = launcher(select, env, tmp_path / "first.log", config)
    second = launcher(select, env, tmp_path / "second.log", config)
    codes = [first.wait(), second.wait()]
    logs = first.text() + second.text()
    assert codes == [0, 0], f"first:\n{first.tail()}\nsecond:\n{second.tail()}"
    for marker in ("database is locked", "Could not set lock", "Conflicting lock", "TProtocolException"):
        assert marker not in logs

    runs = dagster_runs(home)
    assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    # the runs did overlap in time (otherwise this test proves nothing about concurrency)
    with open_instance(home) as instance:
        spans = [(r.start_time, r.end_time) for r in instance.get_run_records()]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans

    w = WorkDir(work)
    for name in shared:
        assert table_digest(w.table_path(name)) == reference[name], f"{name} differs from a lone run's"
    assert temporaries(w.tables) == [] and temporaries(w.stores) == []
    assert_published_outputs_whole(work)

    client = MlflowClient(f"sqlite:///{work}/mlflow/mlflow.db")
    recorded = client.search_runs(
        [client.get_experiment_by_name("kuai_assets").experiment_id], "tags.dagster_asset = 'model'"
    )
    assert sorted(r.data.tags["dagster_run_id"] for r in recorded) == sorted(r.run_id for r in runs)
    assert all(r.info.status == "FINISHED" and "valid_auc" in r.data.metrics for r in recorded)
    assert len(client.search_model_versions("name='kuai_click_model'")) == 2
    published = json.loads((w.require_store("model") / "run.json").read_text())
    assert published["mlflow_run_id"] in {r.info.run_id for r in recorded}
    versions = [p for p in w.stores.iterdir() if p.name.startswith(".model-")]
    assert 1 <= len(versions) <= storage.KEEP_STORE_VERSIONS


# -- storage: what killed writers leave behind, and readers of a table being replaced -----------------


def _leftover(folder: Path, final_name: str, pid: int, host: str = storage.HOST, folder_like: bool = False) -> Path:
    path = folder / f".{final_name}.tmp-{host}-{pid}-0123abcd"
    if folder_like:
        path.mkdir()
        (path / "vectors.npy").write_bytes(b"half")
    else:
        path.write_bytes(b"PAR1 half a file")
    return path


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_next_write_removes_stale_temporaries_and_spares_live_writers(tmp_path):
    work = WorkDir(tmp_path / "work")
    work.tables.mkdir(parents=True)
    work.stores.mkdir(parents=True)
    dead = _dead_pid()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        stale_table = _leftover(work.tables, "t.parquet", dead)
        stale_other_table = _leftover(work.tables, "other.parquet", dead)
        legacy = work.tables / f".t.parquet.tmp-{dead}-89abcdef"  # named before the host was recorded
        legacy.write_bytes(b"x")
        live_table = _leftover(work.tables, "t.parquet", alive.pid)
        foreign = _leftover(work.tables, "t.parquet", dead, host="otherhost_1")
        foreign_old = _leftover(work.tables, "u.parquet", dead, host="otherhost_1")
        long_ago = time.time() - storage.STALE_AFTER_SECONDS - 60
        os.utime(foreign_old, (long_ago, long_ago))
        stale_store = _leftover(work.stores, "s", dead, folder_like=True)
        live_store = _leftover(work.stores, "s", alive.pid, folder_like=True)

        with work.writing_table("t") as tmp:
            pq.write_table(pa.table({"a": [1, 2, 3]}), tmp)
        assert pq.read_table(work.table_path("t")).num_rows == 3
        for gone in (stale_table, stale_other_table, legacy, foreign_old):
            assert not gone.exists(), gone
        for kept in (live_table, foreign):
            assert kept.exists(), kept
        assert stale_store.exists(), "a table write only sweeps tables/"

        with work.writing_store("s") as out:
            (out / "vectors.npy").write_bytes(b"whole")
        assert (work.require_store("s") / "vectors.npy").read_bytes() == b"whole"
        assert not stale_store.exists() and live_store.exists()

        alive.kill()
        alive.wait()
        with work.writing_store("s") as out:
            (out / "vectors.npy").write_bytes(b"again")
        assert not live_store.exists(), "its writer is gone now"
    finally:
        alive.kill()
        alive.wait()


def test_failed_store_write_publishes_nothing_and_keeps_two_versions(tmp_path):
    work = WorkDir(tmp_path)
    contents = []
    for i in range(3):
        with work.writing_store("s") as out:
            (out / "value").write_text(str(i))
        contents.append(work.require_store("s"))
        time.sleep(0.01)
    current = work.require_store("s")
    with pytest.raises(RuntimeError, match="boom"):
        with work.writing_store("s") as out:
            (out / "value").write_text("half")
            raise RuntimeError("boom")
    assert work.require_store("s") == current and (current / "value").read_text() == "2"
    assert sorted(p.name for p in work.stores.iterdir() if not p.name.endswith(".lock")) == sorted(
        ["s", contents[1].name, contents[2].name]
    )


def test_connection_reads_one_version_of_a_table_while_another_run_replaces_it(tmp_path):
    """DuckDB reopens a Parquet file during scans; a connection must keep reading the version it
    connected to even when a new version is renamed over the published name meanwhile."""
    work = WorkDir(tmp_path)

    def publish(n: int) -> None:
        with work.writing_table("t") as tmp:
            pq.write_table(pa.table({"a": np.arange(n)}), tmp, row_group_size=1000)

    publish(10_000)
    con = work.connect(["t"], threads=4)
    pins = [p for p in work.pinned.iterdir()]
    assert len(pins) == 1
    publish(25_000)
    assert con.execute("select count(*), sum(a) from t").fetchone() == (10_000, sum(range(10_000)))
    fresh = work.connect(["t"])
    assert fresh.execute("select count(*) from t").fetchone() == (25_000,)
    con.close()
    fresh.close()
    del con, fresh
    assert list(work.pinned.iterdir()) == [], "a connection's snapshot goes with it"


# -- 3. the MLflow store cannot be written ------------------------------------------------------------


def test_model_fails_clearly_and_publishes_nothing_when_mlflow_cannot_be_written(materialized, tmp_path, launcher):
    """MLFLOW_TRACKING_URI names a SQLite file under a regular file (unwritable even for root):
    materializing model and submission fails with the store's name, the previous model stays
    published, and submission does not run."""
    source = Path(materialized["work"])
    work, home = tmp_path / "work", dagster_home(tmp_path)
    copy_work(source, work, ["training_matrix"], ["model"])
    shutil.copy2(source / "submission.txt", work / "submission.txt")
    w = WorkDir(work)
    model_before = w.require_store("model")
    model_files = store_digest(model_before)
    submission_before = file_digest(work / "submission.txt")
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file where the store's folder should be")
    bad_uri = f"sqlite:///{blocker}/mlflow.db"

    run = launcher(
        "model,submission", cli_env(home, Path(materialized["data"]), work, bad_uri), tmp_path / "run.log",
        {"ops": {"model": {"config": QUICK_MODEL}}},
    )
    assert run.wait() != 0
    log = run.text()
    # the `tracking` resource refuses to start the model step (setup_for_execution), before any training
    assert f"tracking: cannot write the MLflow store at {bad_uri}" in log, run.tail()

    assert w.require_store("model") == model_before and store_digest(model_before) == model_files
    assert [p.name for p in w.stores.iterdir() if p.name.startswith(".model-")] == [model_before.name]
    assert temporaries(w.stores) == []
    assert file_digest(work / "submission.txt") == submission_before
    [record] = dagster_runs(home)
    assert record.status == dg.DagsterRunStatus.FAILURE
    with open_instance(home) as instance:
        materialized_keys = {
            e.asset_materialization.asset_key
            for e in instance.all_logs(record.run_id)
            if e.is_dagster_event and e.dagster_event.is_step_materialization
        }
    assert materialized_keys == set()


def model_workspace(materialized: dict, tmp_path: Path) -> tuple[Path, WorkDir, Path, dict, str]:
    """A copy of the session's training matrix, model store and MLflow store under tmp_path/work
    (copying a store is faster than creating one): the work dir, its WorkDir, the published model
    store, its file digests (to prove it untouched later) and the copied store's tracking URI."""
    source, work = Path(materialized["work"]), tmp_path / "work"
    copy_work(source, work, ["training_matrix"], ["model"])
    w = WorkDir(work)
    model_before = w.require_store("model")
    (work / "mlflow").mkdir()
    shutil.copy2(source / "mlflow" / "mlflow.db", work / "mlflow" / "mlflow.db")
    return work, w, model_before, store_digest(model_before), f"sqlite:///{work}/mlflow/mlflow.db"


def test_model_is_not_published_when_mlflow_fails_in_the_middle_of_recording(materialized, tmp_path, monkeypatch):
    """The store accepts the run, then fails while the model is logged (a disk error): the step
    fails with the store's name, the MLflow run is marked FAILED, and the model store keeps the
    previous, recorded model."""
    import sqlite3

    import mlflow.lightgbm
    from mlflow import MlflowClient

    work, w, model_before, model_files, uri = model_workspace(materialized, tmp_path)

    def disk_error(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(mlflow.lightgbm, "log_model", disk_error)
    # the copied store, with an experiment of our own
    result = dg.materialize(
        assets_named("model"),
        resources=resources(Path(materialized["data"]), work, uri, experiment="robustness"),
        run_config={"ops": {"model": {"config": QUICK_MODEL}}},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.message
    assert f"cannot write the MLflow store at {uri}" in message and "disk I/O error" in message
    assert w.require_store("model") == model_before and store_digest(model_before) == model_files
    assert temporaries(w.stores) == []
    client = MlflowClient(uri)
    [attempt] = client.search_runs([client.get_experiment_by_name("robustness").experiment_id])
    assert attempt.info.status == "FAILED" and attempt.data.tags["dagster_run_id"] == result.run_id


def test_an_interrupted_ablation_leaves_its_mlflow_parent_failed(materialized, tmp_path, monkeypatch):
    """Ctrl-C during the ablation (Dagster raises DagsterExecutionInterruptedError in the step):
    the MLflow parent run, which holds only the variants done so far, is marked FAILED, not left
    FINISHED as if it were whole."""
    from dagster._core.errors import DagsterExecutionInterruptedError
    from mlflow import MlflowClient

    from kuai_assets.defs import model as model_defs

    work, _, _, _, uri = model_workspace(materialized, tmp_path)
    variants_done = []
    training = model_defs.run_ablation

    def interrupted(*args, **kwargs):
        report = args[6]

        def after_two(result):
            report(result)
            variants_done.append(result.variant)
            if len(variants_done) == 2:
                raise DagsterExecutionInterruptedError()

        return training(*args[:6], after_two, *args[7:], **kwargs)

    monkeypatch.setattr(model_defs, "run_ablation", interrupted)
    result = dg.materialize(
        assets_named("feature_group_ablation"),
        resources=resources(Path(materialized["data"]), work, uri, experiment="interrupted"),
        run_config={"ops": {"feature_group_ablation": {"config": {"max_fit_rows": 5_000, "max_rounds": 10,
                                                                   "early_stopping_rounds": 5}}}},
        raise_on_error=False,
    )
    assert not result.success and len(variants_done) == 2
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("interrupted").experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FAILED" and len(children) == 2
    assert all(child.info.status == "FINISHED" for child in children)


@pytest.mark.parametrize("refit", ["succeeds", "fails"])
def test_the_model_run_holds_its_validation_auc_in_mlflow_before_the_refit(materialized, tmp_path, monkeypatch, refit):
    """The model's MLflow run is RUNNING from the step's start and holds the validation AUC when
    the refit begins (the number a person waits for after an edit); it ends FINISHED with the rest,
    or FAILED, the model store untouched, when the refit fails."""
    from mlflow import MlflowClient

    from kuai_assets.ml import gbdt

    work, w, model_before, model_files, uri = model_workspace(materialized, tmp_path)
    client = MlflowClient(uri)
    seen = {}
    original = gbdt.train_final

    def watched_refit(*args, **kwargs):
        experiment = client.get_experiment_by_name("watched").experiment_id
        [running] = client.search_runs([experiment], "attributes.status = 'RUNNING'")
        seen.update(run_id=running.info.run_id, metrics=dict(running.data.metrics),
                    series=len(client.get_metric_history(running.info.run_id, "valid_auc_by_iteration")))
        if refit == "fails":
            raise RuntimeError("the refit broke")
        return original(*args, **kwargs)

    monkeypatch.setattr(gbdt, "train_final", watched_refit)
    result = dg.materialize(
        assets_named("model"), resources=resources(Path(materialized["data"]), work, uri, experiment="watched"),
        run_config={"ops": {"model": {"config": QUICK_MODEL}}}, raise_on_error=False,
    )
    assert 0.5 < seen["metrics"]["valid_auc"] <= 1 and seen["series"] >= seen["metrics"]["best_iteration"] >= 1
    assert "test_auc" not in seen["metrics"]
    [run] = client.search_runs([client.get_experiment_by_name("watched").experiment_id])
    assert run.info.run_id == seen["run_id"], "one run, open from the start"
    assert run.data.metrics["valid_auc"] == seen["metrics"]["valid_auc"]
    assert len(client.get_metric_history(run.info.run_id, "valid_auc")) == 1, "logged once, before the refit"
    if refit == "succeeds":
        assert result.success and run.info.status == "FINISHED"
        assert json.loads((w.require_store("model") / "run.json").read_text())["mlflow_run_id"] == run.info.run_id
        assert any(v.run_id == run.info.run_id for v in client.search_model_versions("name='kuai_click_model'"))
    else:
        assert not result.success and run.info.status == "FAILED"
        assert w.require_store("model") == model_before and store_digest(model_before) == model_files


@pytest.mark.parametrize("breakage", ["store under a file", "store is a folder", "artifacts under a file"])
def test_tracker_reports_an_unwritable_store_before_training(tmp_path, breakage):
    from kuai_assets.ml.tracking import Tracker, TrackingError

    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    uri, artifacts = f"sqlite:///{tmp_path}/ok/mlflow.db", tmp_path / "ok" / "artifacts"
    if breakage == "store under a file":
        uri = f"sqlite:///{blocker}/mlflow.db"
    elif breakage == "store is a folder":
        (tmp_path / "folder.db").mkdir()
        uri = f"sqlite:///{tmp_path}/folder.db"
    else:
        artifacts = blocker / "artifacts"
    tracker = Tracker(uri, artifacts)
    started = time.monotonic()
    with pytest.raises(TrackingError, match=f"cannot write the MLflow store at {uri}"):
        tracker.check()
    with pytest.raises(TrackingError, match=f"cannot write the MLflow store at {uri}"):
        with tracker.run("r", {}):
            import mlflow

            mlflow.log_text("x", "x.txt")
    assert time.monotonic() - started < 60


# -- 4. safe defaults --------------------------------------------------------------------------------


def test_ui_commands_bind_localhost_by_default():
    """`kuai ui` and `kuai mlflow-ui` build argv that the real dagster and mlflow CLIs parse to
    host 127.0.0.1 (nothing listens on other interfaces unless --host says so)."""
    import click
    from dagster._cli.dev import dev_command
    from mlflow.cli import cli as mlflow_cli

    parser = cli.build_parser()
    dagster_argv = cli.ui_argv(parser.parse_args(["ui"]))
    assert dagster_argv[:2] in (["dg", "dev"], ["dagster", "dev"])  # dg dev passes -m/-h/-p to dagster dev
    params = dev_command.make_context("dev", dagster_argv[2:]).params
    assert params["host"] == "127.0.0.1" and params["module_name"] == ("kuai_assets.definitions",)

    mlflow_argv = cli.mlflow_ui_argv(parser.parse_args(["mlflow-ui"]), "sqlite:////tmp/kuai/mlflow.db")
    assert mlflow_argv[:2] == ["mlflow", "ui"]
    ui = mlflow_cli.get_command(click.Context(mlflow_cli), "ui")
    params = ui.make_context("ui", mlflow_argv[2:]).params
    assert params["host"] == "127.0.0.1" and params["backend_store_uri"] == "sqlite:////tmp/kuai/mlflow.db"

    # and an explicit --host is passed through (the check above would see a hard-coded host)
    exposed = cli.ui_argv(parser.parse_args(["ui", "--host", "0.0.0.0"]))
    assert dev_command.make_context("dev", exposed[2:]).params["host"] == "0.0.0.0"


def test_a_fresh_dagster_home_initialized_by_two_processes_at_once_has_one_schema_version(tmp_path):
    """Two `kuai` commands starting on a new work dir at the same moment: the instance databases
    are created once (a second schema stamp would break every later run)."""
    import sqlite3

    home = tmp_path / "dagster_home"
    code = f"from pathlib import Path; from kuai_assets import cli; cli.initialize_dagster_home(Path({str(home)!r}))"
    processes = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
    assert [p.wait(120) for p in processes] == [0, 0, 0]
    for db in (home / "history" / "runs.db", home / "history" / "runs" / "index.db", home / "schedules" / "schedules.db"):
        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from alembic_version").fetchone() == (1,), db
