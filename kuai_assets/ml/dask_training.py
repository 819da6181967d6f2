"""LightGBM on a Dask cluster: the refit for a fixed number of rounds, data-parallel over the workers.

LightGBM's Dask interface does not support early stopping, so the number of rounds comes from
the local validation run (`training.train_validation`, then `refit_rounds_factor`), exactly as
the local refit takes it. The result is a plain `lightgbm.Booster`, used like a local one
(predict, save_model, MLflow logging).

The rows are handed over as numpy arrays, split into one chunk per worker and shipped through the
scheduler: right for a matrix that fits the driver. A matrix that does not would be read by the
workers themselves (dask.dataframe.read_parquet of the training matrix on shared storage, then
`DaskLGBMClassifier.fit` on that collection); the training call is the same.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from urllib.parse import urlparse

from kuai_assets.features.matrix import Feature
from kuai_assets.ml.training import LightGbmParams, Rows

CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_SCHEDULER_PORT = 8786


class DaskSchedulerError(RuntimeError):
    """The Dask scheduler cannot be reached, or has no workers."""


@dataclass
class DaskFit:
    booster: object  # lightgbm.Booster
    rounds: int
    workers: int
    fit_rows: int
    seconds: float


def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> tuple[str, int]:
    """Refuse an address that is malformed or whose scheduler does not answer within `timeout` s."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme not in ("tcp", "tls") or not parsed.hostname:
        raise DaskSchedulerError(f"Dask scheduler address {address!r} must read tcp://host:port (or tls://host:port)")
    port = parsed.port or DEFAULT_SCHEDULER_PORT
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except socket.timeout:
        raise DaskSchedulerError(
            f"Dask scheduler {address} is unreachable: no answer from {parsed.hostname}:{port} within {timeout:g} s"
        ) from None
    except OSError as err:
        raise DaskSchedulerError(
            f"Dask scheduler {address} is unreachable: {parsed.hostname}:{port}: {err.strerror or err}"
        ) from None
    return parsed.hostname, port


def dask_params(params: LightGbmParams) -> dict:
    """The local LightGBM parameters, as DaskLGBMClassifier keyword arguments."""
    out = params.lightgbm()
    out.pop("metric", None)  # no evaluation sets on Dask: nothing to measure during training
    out.pop("num_threads", None)  # each worker uses its own threads (LightGBM on Dask ignores it)
    return out


def train_on_dask(
    fit: Rows,
    features: list[Feature],
    params: LightGbmParams,
    rounds: int,
    scheduler: str,
    timeout: float = CONNECT_TIMEOUT_SECONDS,
    log=lambda message: None,
) -> DaskFit:
    """Fit `rounds` boosting rounds on the scheduler's workers; return a local Booster.

    Refused before any data moves: a scheduler that does not answer within `timeout` seconds,
    one without workers, rows without labels, fewer than one round.
    """
    if fit.y is None:
        raise ValueError("training on Dask needs labelled rows")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    check_scheduler(scheduler, timeout)

    import dask.array as da
    import lightgbm as lgb
    from distributed import Client

    started = time.time()
    try:
        client = Client(scheduler, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise DaskSchedulerError(f"Dask scheduler {scheduler} did not accept a client within {timeout:g} s: {err}") from None
    try:
        workers = len(client.scheduler_info().get("workers", {}))
        if workers == 0:
            raise DaskSchedulerError(f"Dask scheduler {scheduler} has no workers")
        chunk = max(1, -(-len(fit.x) // workers))
        starts = range(0, len(fit.x), chunk)
        # one chunk per worker, scattered (not embedded in the task graph)
        x_parts = client.scatter([fit.x[i : i + chunk] for i in starts])
        y_parts = client.scatter([fit.y[i : i + chunk] for i in starts])
        x = da.concatenate(
            [da.from_delayed(f, shape=(min(chunk, len(fit.x) - i), fit.x.shape[1]), dtype=fit.x.dtype) for f, i in zip(x_parts, starts)]
        )
        y = da.concatenate(
            [da.from_delayed(f, shape=(min(chunk, len(fit.y) - i),), dtype=fit.y.dtype) for f, i in zip(y_parts, starts)]
        )
        log(f"dask: {len(fit.x):,} rows in {len(starts)} chunk(s) on {workers} worker(s); {rounds} rounds")
        categorical = [f.name for f in features if f.kind == "discrete"]
        model = lgb.DaskLGBMClassifier(client=client, n_estimators=rounds, **dask_params(params))
        with client.as_current():
            model.fit(x, y, feature_name=[f.name for f in features], categorical_feature=categorical or "auto")
        booster = model.booster_
    finally:
        client.close()
    return DaskFit(booster, rounds, workers, len(fit.x), round(time.time() - started, 1))

