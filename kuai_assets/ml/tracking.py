"""MLflow tracking: one experiment, a local SQLite store under the work dir unless
MLFLOW_TRACKING_URI says otherwise, and a file lock so concurrent Dagster steps never race on it.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EXPERIMENT = "kuai_assets"
REGISTERED_MODEL = "kuai_click_model"


class TrackingError(RuntimeError):
    """The MLflow store could not be written; nothing may use a model that was not recorded."""


def default_tracking_uri(work_root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(work_root).absolute()}/mlflow/mlflow.db"


class Tracker:
    def __init__(self, tracking_uri: str, artifact_root: Path, experiment: str = EXPERIMENT):
        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root)
        self.experiment = experiment

    @property
    def _local_lock(self) -> Path:
        if self.tracking_uri.startswith("sqlite:///"):
            return Path(self.tracking_uri[len("sqlite:///") :]).parent / ".lock"
        return self.artifact_root / ".lock"

    @contextmanager
    def locked(self) -> Iterator[None]:
        try:
            self._local_lock.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self._local_lock, "a")
        except OSError as exc:
            raise self._error(exc) from exc
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._check_sqlite()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _check_sqlite(self) -> None:
        """A local SQLite store that cannot be opened for writing fails at once (MLflow itself
        retries for about two minutes before it gives up)."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return
        import sqlite3

        try:
            con = sqlite3.connect(self.tracking_uri[len("sqlite:///") :], timeout=60)
            try:
                con.execute("begin immediate")  # takes the write lock: fails on a read-only store
                con.rollback()
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _experiment_id(self, mlflow) -> str:
        experiment = mlflow.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.experiment_id
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        return mlflow.create_experiment(self.experiment, artifact_location=self.artifact_root.absolute().as_uri())

    def _error(self, exc: BaseException) -> TrackingError:
        return TrackingError(
            f"cannot write the MLflow store at {self.tracking_uri} (artifacts under {self.artifact_root}): "
            f"{type(exc).__name__}: {exc}. Point MLFLOW_TRACKING_URI (or the `tracking` resource's tracking_uri) "
            "at a writable store."
        )

    def check(self) -> str:
        """Fail fast, before any training, if the store cannot be written; return the experiment id.

        Opens the store (creating it and the experiment if needed), writes one experiment tag and
        a probe file in a local artifact location.
        """
        import mlflow
        from mlflow import MlflowClient

        with self.locked():
            try:
                mlflow.set_tracking_uri(self.tracking_uri)
                experiment_id = self._experiment_id(mlflow)
                client = MlflowClient(self.tracking_uri)
                client.set_experiment_tag(experiment_id, "kuai.store_checked_at", str(int(time.time())))
                _probe_local_artifacts(client.get_experiment(experiment_id).artifact_location)
            except Exception as exc:  # sqlalchemy, sqlite3, OSError, MlflowException: "cannot record"
                raise self._error(exc) from exc
        return experiment_id

    @contextmanager
    def run(self, run_name: str, tags: dict[str, str], parent_run_id: str | None = None):
        """An MLflow run (nested under `parent_run_id` if given); store errors become TrackingError.

        Errors of the store raised in the body (while logging params, metrics, artifacts, the
        model) become TrackingError too, and the run is marked FAILED if the store still allows.
        """
        import mlflow

        with self.locked():
            try:
                mlflow.set_tracking_uri(self.tracking_uri)
                experiment_id = self._experiment_id(mlflow)
                if parent_run_id:
                    tags = {**tags, "mlflow.parentRunId": parent_run_id}
                active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
            except Exception as exc:  # sqlalchemy, OSError, MlflowException: all mean "not recorded"
                raise self._error(exc) from exc
            try:
                yield active
            except BaseException as exc:
                try:
                    mlflow.end_run(status="FAILED")
                except Exception:
                    pass  # the store is what failed: the original error says more
                if isinstance(exc, _store_errors()):
                    raise self._error(exc) from exc
                raise
            else:
                try:
                    mlflow.end_run()
                except Exception as exc:
                    raise self._error(exc) from exc

    def log_series(self, run_id: str, key: str, values: list[float]) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(self.tracking_uri)
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(v), now, step) for step, v in enumerate(values, start=1)]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])

    def log_metrics_to(self, run_id: str, metrics: dict[str, float]) -> None:
        """Add metrics to a finished run (e.g. the test AUC, known only after scoring)."""
        from mlflow import MlflowClient

        with self.locked():
            try:
                client = MlflowClient(self.tracking_uri)
                for key, value in metrics.items():
                    client.log_metric(run_id, key, float(value))
            except Exception as exc:
                raise self._error(exc) from exc

    def log_files_to(self, run_id: str, files: dict[str, bytes]) -> None:
        """Attach files (name -> bytes) as artifacts of an existing run."""
        import tempfile

        from mlflow import MlflowClient

        with self.locked(), tempfile.TemporaryDirectory() as tmp:
            try:
                client = MlflowClient(self.tracking_uri)
                for name, data in files.items():
                    (Path(tmp) / name).write_bytes(data)
                    client.log_artifact(run_id, str(Path(tmp) / name))
            except Exception as exc:
                raise self._error(exc) from exc

    def run_url(self, run_id: str, experiment_id: str, ui_base: str = "http://127.0.0.1:5000") -> str:
        return f"{ui_base}/#/experiments/{experiment_id}/runs/{run_id}"


def _store_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean the store (database or artifact location) could not be written."""
    import sqlite3

    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return (MlflowException, SQLAlchemyError, sqlite3.Error, OSError, TrackingError)


def _probe_local_artifacts(location: str | None) -> None:
    """Create and remove a file in a local artifact location (other schemes are left to MLflow)."""
    if not location:
        return
    if location.startswith("file:"):
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(location).path))
    elif "://" in location:
        return
    else:
        path = Path(location)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".probe-{os.getpid()}-{time.time_ns()}"
    probe.write_bytes(b"")
    probe.unlink()
