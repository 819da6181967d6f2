"""MLflow tracking: one experiment, a local SQLite store under the work dir unless
MLFLOW_TRACKING_URI says otherwise, and a file lock so concurrent Dagster steps never race on it.

The store is probed within a bounded time before work starts (`probe_store`); MLflow's own HTTP
retries are bounded for the process (MLFLOW_HTTP_REQUEST_* unless set), and its loggers keep to
warnings, so its chatter stays out of the run log. Every registered model version gets the
alias `candidate`; `promote_if_better` moves `champion` to it only when its validation AUC beats
the champion's. A model's run is tagged `test_auc_status=pending` when it is recorded, until
`evaluation` writes its test AUC (`Tracker.record_test_scores`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow's defaults retry an unreachable server for minutes (7 retries, backoff factor 2, 120 s
# timeout per request): a run would hang that long before saying the store is unreachable
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# "Creating initial MLflow database tables...", alembic's migrations: not the run's business
# (MLflow sets its loggers' levels from MLFLOW_LOGGING_LEVEL when it is imported)
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
for _name in ("mlflow", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)

EXPERIMENT = "kuai_assets"
REGISTERED_MODEL = "kuai_click_model"
CANDIDATE, CHAMPION = "candidate", "champion"
# a model's run carries this tag: "pending" from its training until `evaluation` has written its
# test_auc ("scored"), or "no ground truth" where the dataset has none (real data)
TEST_AUC_STATUS = "test_auc_status"
PENDING, SCORED, NO_GROUND_TRUTH = "pending", "scored", "no ground truth"
PROBE_SECONDS = 10.0


class TrackingError(RuntimeError):
    """The MLflow store could not be written; nothing may use a model that was not recorded."""


def default_tracking_uri(work_root: Path) -> str:
    from kuai_assets import settings

    return settings.default_tracking_uri(Path(work_root))


def _advice() -> str:
    return "Point MLFLOW_TRACKING_URI (or the `tracking` resource's tracking_uri) at a reachable, writable store."


def probe_store(tracking_uri: str, timeout: float = PROBE_SECONDS) -> str:
    """Check, within `timeout` seconds, that the tracking store can be used; say what was checked.

    http(s): one GET of the server's /health (any HTTP answer below 500 means an MLflow server,
    or a proxy in front of one, is there). sqlite: the file's folder can be created and the
    database's write lock taken. A local folder (file: or a path): it can be created and written.
    Other schemes are not probed. Raises TrackingError with the URI and the cause.
    """
    outcome: dict[str, object] = {}

    def probe() -> None:
        try:
            outcome["ok"] = _probe(tracking_uri, timeout)
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    worker = threading.Thread(target=probe, daemon=True)  # DNS lookups ignore socket timeouts
    worker.start()
    worker.join(timeout + 0.5)
    if "ok" in outcome:
        return str(outcome["ok"])
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, TrackingError):
            raise error
        raise TrackingError(f"cannot use the MLflow store at {tracking_uri}: {type(error).__name__}: {error}. {_advice()}")
    raise TrackingError(f"the MLflow store at {tracking_uri} did not answer within {timeout:g} s. {_advice()}")


def _probe(uri: str, timeout: float) -> str:
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"cannot reach the MLflow server at {uri} (GET {url}: {reason}; waited at most {timeout:g} s). "
                f"Start it (`kuai mlflow-ui`), or {_advice()[0].lower()}{_advice()[1:]}"
            ) from None
        if status >= 500:
            raise TrackingError(f"the MLflow server at {uri} answers GET {url} with HTTP {status}. {_advice()}")
        return f"MLflow server {uri} answers (GET /health: HTTP {status})"
    if uri.startswith("sqlite:///"):
        import sqlite3

        path = Path(uri[len("sqlite:///") :])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(path, timeout=timeout)
            try:
                con.execute("begin immediate")  # takes the write lock: fails on a read-only store
                con.rollback()
            finally:
                con.close()
        except (OSError, sqlite3.Error) as exc:
            raise TrackingError(f"cannot write the MLflow store at {uri}: {type(exc).__name__}: {exc}. {_advice()}") from None
        return f"MLflow store {uri} (SQLite) is writable"
    if uri.startswith("file:") or "://" not in uri:
        from urllib.parse import unquote, urlparse

        folder = Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else Path(uri)
        try:
            _probe_local_artifacts(folder.as_uri() if folder.is_absolute() else str(folder))
        except OSError as exc:
            raise TrackingError(f"cannot write the MLflow store at {uri}: {type(exc).__name__}: {exc}. {_advice()}") from None
        return f"MLflow store {uri} (a local folder) is writable"
    return f"MLflow store {uri}: this scheme is not probed"


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

    def start_run(self, run_name: str, tags: dict[str, str]) -> str:
        """Create a run that stays RUNNING while its work goes on (the MLflow UI lists it, and
        shows what is logged to it, from the start); return its id. The work logs to it
        (`log_metrics_to`, `log_series_to`), then `run(..., run_id=...)` resumes and ends it; a work
        that fails is marked FAILED by running inside `failed_on_error` (or calling `end_failed`).
        The store's lock is held only while writing."""
        import mlflow
        from mlflow import MlflowClient

        with self.locked():
            try:
                mlflow.set_tracking_uri(self.tracking_uri)
                experiment_id = self._experiment_id(mlflow)
                run = MlflowClient(self.tracking_uri).create_run(experiment_id, run_name=run_name, tags=tags)
            except Exception as exc:
                raise self._error(exc) from exc
        return run.info.run_id

    def end_failed(self, run_id: str) -> None:
        """Mark a run started by `start_run` FAILED (its work failed); quiet if the store refuses."""
        from mlflow import MlflowClient

        with self.locked():
            try:
                MlflowClient(self.tracking_uri).set_terminated(run_id, status="FAILED")
            except Exception:
                pass  # the work's own error says more

    @contextmanager
    def failed_on_error(self, run_id: str):
        """The work of a run started by `start_run`: if it raises, the run is marked FAILED
        (`end_failed`) and the error goes on."""
        try:
            yield
        except BaseException:
            self.end_failed(run_id)
            raise

    @contextmanager
    def run(self, run_name: str | None, tags: dict[str, str], parent_run_id: str | None = None,
            run_id: str | None = None):
        """An MLflow run (nested under `parent_run_id` if given; or the run `run_id` made by
        `start_run`, resumed); store errors become TrackingError.

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
                if run_id is not None:
                    active = mlflow.start_run(run_id=run_id, tags=tags)
                else:
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
        """Log `values` as the steps 1, 2, ... of metric `key` (inside `run`, which holds the lock)."""
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(self.tracking_uri)
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(v), now, step) for step, v in enumerate(values, start=1)]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])

    def log_series_to(self, run_id: str, series: dict[str, list[float]]) -> None:
        """`log_series` outside a `run`: under the store's lock, store errors as TrackingError."""
        with self.locked():
            try:
                for key, values in series.items():
                    self.log_series(run_id, key, values)
            except Exception as exc:
                raise self._error(exc) from exc

    def log_metrics_to(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        """Add metrics to a run, finished (e.g. the test AUC, known only after scoring) or still
        running (e.g. the validation AUC, known before the refit; an epoch's AUC at `step`)."""
        from mlflow import MlflowClient

        with self.locked():
            try:
                client = MlflowClient(self.tracking_uri)
                for key, value in metrics.items():
                    client.log_metric(run_id, key, float(value), step=step)
            except Exception as exc:
                raise self._error(exc) from exc

    def record_test_scores(self, run_id: str, metrics: dict[str, float] | None) -> None:
        """Write a model's test scores (test_auc, ...) onto its finished run and settle its
        `test_auc_status`: "scored", or "no ground truth" when `metrics` is None."""
        from mlflow import MlflowClient

        with self.locked():
            try:
                client = MlflowClient(self.tracking_uri)
                for key, value in (metrics or {}).items():
                    client.log_metric(run_id, key, float(value))
                client.set_tag(run_id, TEST_AUC_STATUS, SCORED if metrics is not None else NO_GROUND_TRUTH)
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

    def run_url(self, run_id: str, experiment_id: str, ui_base: str) -> str:
        return f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def register_candidate(self, run_id: str, model_info, name: str) -> str:
        """Register the model logged in run `run_id` (mlflow's ModelInfo) as a new version of
        `name` with the alias `candidate`; return the version.

        Call it inside `run(...)` (which holds the store's lock). Registers through the client, so
        that MLflow prints nothing ("Successfully registered model ...") into the run's log.
        """
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(self.tracking_uri)
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name)
        version = client.create_model_version(
            name, source=model_info.model_uri, run_id=run_id, model_id=getattr(model_info, "model_id", None)
        ).version
        client.set_registered_model_alias(name, CANDIDATE, str(version))
        return str(version)


def run_link(url: str, ui_base: str) -> str:
    """A run's link as recorded (`Tracker.run_url`, with the MLflow UI of that day) on the MLflow UI
    at `ui_base`, the one configured now (`kuai mlflow-ui --port` records another)."""
    _, found, path = url.partition("/#/")
    return f"{ui_base.rstrip('/')}/#/{path}" if found else url


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


@dataclass(frozen=True)
class Promotion:
    """What `promote_if_better` decided: the run's version, its AUC, the champion before and after."""

    model: str
    version: str
    auc: float
    previous_champion: str | None
    previous_auc: float | None
    promoted: bool

    @property
    def champion(self) -> str:
        return self.version if self.promoted else str(self.previous_champion)

    def describe(self) -> str:
        if not self.promoted and self.previous_champion == self.version:  # checked again (a kept model)
            return f"{self.model} v{self.version} (valid_auc {self.auc:.5f}) is @{CHAMPION} already"
        if self.promoted and self.previous_champion is None:
            return f"{self.model} v{self.version} (valid_auc {self.auc:.5f}) is the first champion"
        if self.promoted:
            return (
                f"{self.model} v{self.version} (valid_auc {self.auc:.5f}) beats champion v{self.previous_champion} "
                f"({self.previous_auc:.5f}): now @{CHAMPION}"
            )
        return (
            f"{self.model} v{self.version} (valid_auc {self.auc:.5f}) does not beat champion v{self.previous_champion} "
            f"({self.previous_auc:.5f}): @{CHAMPION} stays"
        )


def promote_if_better(tracking_uri: str, model: str, run_id: str, metric: str = "valid_auc") -> Promotion:
    """Move the alias `champion` of registered model `model` to the version logged by `run_id`
    when that run's `metric` is strictly higher than the champion's run's (or there is no
    champion yet); otherwise leave it. Raises TrackingError when the run has no version of
    `model`, or either run lacks the metric.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    try:
        versions = client.search_model_versions(f"name = '{model}' and run_id = '{run_id}'")
    except MlflowException as exc:
        raise TrackingError(f"cannot read registered model {model!r} at {tracking_uri}: {exc}") from exc
    if not versions:
        raise TrackingError(f"run {run_id} has no version of registered model {model!r} at {tracking_uri}")
    version = max(versions, key=lambda v: int(v.version))

    def score(of_run: str) -> float:
        value = client.get_run(of_run).data.metrics.get(metric)
        if value is None:
            raise TrackingError(f"run {of_run} has no metric {metric!r}: cannot compare it with the champion")
        return float(value)

    auc = score(run_id)
    try:
        champion = client.get_model_version_by_alias(model, CHAMPION)
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) == str(version.version):
        return Promotion(model, str(version.version), auc, str(champion.version), auc, False)
    previous_auc = score(champion.run_id) if champion is not None else None
    promoted = previous_auc is None or auc > previous_auc
    if promoted:
        client.set_registered_model_alias(model, CHAMPION, str(version.version))
    return Promotion(
        model, str(version.version), auc, str(champion.version) if champion else None, previous_auc, promoted
    )


@dataclass(frozen=True)
class MatrixSlice:
    """Rows of one (setup, role) of a Parquet table that a run used, to log as an MLflow dataset.

    `columns` maps column name to MLflow type ("float", "double", "long", ...); `detail` says how
    the rows were chosen (a sample's settings) and enters the digest with the file's digest and
    the columns.
    """

    path: Path
    file_digest: str
    setup: str
    role: str
    rows: int
    columns: dict[str, str]
    context: str  # the run's use of it: training | validation
    detail: str = ""
    owner: str = ""  # whose file it is, when the file name alone is ambiguous (a model store's)

    @property
    def name(self) -> str:
        stem = f"{self.owner}/{Path(self.path).stem}" if self.owner else Path(self.path).stem
        return f"{stem}[{self.setup}/{self.role}]"

    @property
    def digest(self) -> str:
        import hashlib

        # the columns too: MLflow keeps one dataset per (name, digest) in an experiment
        key = "|".join([self.file_digest, self.setup, self.role, str(self.rows), self.detail, *self.columns])
        return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def matrix_dataset(piece: MatrixSlice):
    """The MLflow dataset entity of a slice: its source (the Parquet file's path), digest, schema
    and profile (rows, columns), without the data itself."""
    import json

    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.types import ColSpec, Schema

    class _SliceDataset(MetaDataset):
        @property
        def profile(self):
            return {"num_rows": piece.rows, "num_columns": len(piece.columns), "setup": piece.setup, "role": piece.role}

        def to_dict(self):
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    schema = Schema([ColSpec(kind, name) for name, kind in piece.columns.items()])
    return _SliceDataset(
        LocalArtifactDatasetSource(str(Path(piece.path).absolute())), name=piece.name, digest=piece.digest, schema=schema
    )


def log_datasets(pieces: list[MatrixSlice]) -> None:
    """Log each slice as an input of the active run (`mlflow.log_inputs`), with its context."""
    import mlflow

    if pieces:
        mlflow.log_inputs(
            datasets=[matrix_dataset(p) for p in pieces], contexts=[p.context for p in pieces], tags_list=[None] * len(pieces)
        )
