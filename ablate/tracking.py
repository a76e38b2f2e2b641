"""MLflow bookkeeping: one parent run per launch, exactly one child run per trial.

Only explicit-run-id ``MlflowClient`` calls are used (no fluent "active run" state), so
the same code works in the driver and in Ray workers on other nodes.

Exactly-once child runs: a child run is tagged with the Ray trial id. A trial that is
retried after a crash, restored by ``ablate resume`` or restarted from a checkpoint finds
its run by that tag (and its checkpoint also stores the run id) and continues it, so a
trial never gets a second run.
"""

from __future__ import annotations

import fcntl
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
import requests
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ablate.errors import UserError
from ablate.mlflow_internals import MLFLOW_DATASET_CONTEXT
from ablate.sqlite_urls import sqlite_file

T = TypeVar("T")

#: Tag names that tables, dashboards and resume rely on.
TAG_KIND = "ablate.kind"
TAG_ROW = "ablate.row"
TAG_SEED = "ablate.seed"
#: A cross-validated trial's fold, and the hash of its dataset's frozen folds
#: (:mod:`ablate.data.folds`): equal on every trial of a study whose rows share the folds.
TAG_FOLD = "ablate.fold"
TAG_FOLD_HASH = "ablate.fold_hash"
TAG_STATUS = "ablate.status"
TAG_ERROR = "ablate.error"
TAG_TRIAL_ID = "ablate.trial_id"
TAG_PARENT = "mlflow.parentRunId"
TAG_OPTUNA_STORAGE = "ablate.optuna_storage"
TAG_OPTUNA_STUDY = "ablate.optuna_study"
#: On a search's parent run: its objectives (``val_psnr:max,val_sd:min``) and searched keys.
TAG_SEARCH_OBJECTIVES = "ablate.search_objectives"
TAG_SEARCH_PARAMS = "ablate.search_params"
#: On a ``--confirm-seeds`` grid's parent run: the search's parent run id, and the grid's
#: role (``best``: the best trial's values; ``defaults``: the row as the YAML declares it).
TAG_CONFIRMS = "ablate.confirms"
TAG_CONFIRM_ROLE = "ablate.confirm_role"
#: On every trial run (and its launch's parent run, and each registered model and version it
#: exported): the dataset it trained on, by name and by content hash
#: (:func:`ablate.data.staging.content_hash`). Tables and exports never mix two hashes.
TAG_DATASET = "ablate.dataset"
TAG_DATASET_SHA256 = "ablate.dataset_sha256"
#: On a launch's parent run: its YAML's rows in the YAML's order (all of them, also those
#: ``--rows`` left out) and the row its tables test against (``reference:``, default the first).
TAG_ROW_ORDER = "ablate.row_order"
TAG_REFERENCE = "ablate.reference"
#: On a replicated launch's parent run (``--until-resolved``, :mod:`ablate.launch.replicate`): its
#: number of seed waves so far, and why replication stopped (the table's notes show it).
TAG_REPLICATION_WAVES = "ablate.replication_waves"
TAG_REPLICATION_STOP = "ablate.replication_stop"

#: Experiment tags: the MLflow UI opens a model-training experiment on its runs table
#: (an untagged one may open as a GenAI experiment, on traces).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}

_MAX_PARAM_LEN = 6000
#: ``finish_run`` status -> MLflow run status.
_MLFLOW_STATUS = {"completed": "FINISHED", "pruned": "KILLED", "interrupted": "KILLED"}


def run_filter(tags: Mapping[str, str] | None = None, *, has_metric: str | None = None) -> str:
    """MLflow's run filter for runs holding every tag value of ``tags`` (and, with
    ``has_metric``, a finite value of that metric): the one place the filter syntax is
    written, so a tag name is never quoted differently by two readers."""
    clauses = [f"tags.`{key}` = '{value}'" for key, value in (tags or {}).items()]
    if has_metric is not None:
        clauses.append(f"metrics.`{has_metric}` > -1e300")
    return " and ".join(clauses)


def is_server(tracking_uri: str) -> bool:
    """An ``mlflow server`` (``http(s)://``), as opposed to an embedded store (sqlite, files)."""
    return tracking_uri.startswith(("http://", "https://"))


def check_server(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """An ``http(s)://`` tracking URI must answer ``GET /health`` (an embedded store has
    nothing to reach): checked before a launch creates anything, and by a dry run."""
    if not is_server(tracking_uri):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", exc)) or type(exc).__name__
    raise UserError(
        f"cannot reach the MLflow tracking server at {tracking_uri} ({reason}): start it "
        "(mlflow server --backend-store-uri ... --host 127.0.0.1) or fix --tracking-uri"
    )


def format_objectives(objectives: Iterable[tuple[str, str]]) -> str:
    """``[("val_psnr", "max"), ("val_sd", "min")]`` -> ``"val_psnr:max,val_sd:min"``."""
    return ",".join(f"{metric}:{mode}" for metric, mode in objectives)


def parse_objectives(text: str | None) -> list[tuple[str, str]]:
    """The inverse of :func:`format_objectives`; ``[]`` for a missing or malformed tag."""
    out = []
    for part in (text or "").split(","):
        metric, _, mode = part.strip().rpartition(":")
        if not metric or mode not in ("max", "min"):
            return []
        out.append((metric, mode))
    return out


def _retry(call: Callable[[], T], attempts: int = 6) -> T:
    """Retry a store call: concurrent sqlite writers from several trials can hit a lock."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - sqlite lock errors come wrapped variously
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


retry = _retry  #: for other modules' store calls


class TrackingUnreachable(UserError):
    """The MLflow server did not answer for longer than a write may wait."""


#: MLflow's client settings while :func:`fail_fast` holds: no retries of its own, and a
#: request that hangs (a partitioned server) given up after 30 s.
_FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@contextmanager
def fail_fast() -> Iterator[None]:
    """MLflow requests in this block fail at once when the server cannot be reached, instead
    of after the client's ~4 minutes of retries: for callers that retry themselves
    (:mod:`ablate.tracking_spool`). MLflow reads these variables at each request."""
    saved = {name: os.environ.get(name) for name in _FAIL_FAST}
    os.environ.update(_FAIL_FAST)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


#: MLflow error codes of a server that is up but cannot serve now (its database is away).
_TRANSIENT_CODES = {
    "INTERNAL_ERROR",
    "TEMPORARILY_UNAVAILABLE",
    "SERVICE_UNDER_MAINTENANCE",
    "DEADLINE_EXCEEDED",
    "REQUEST_LIMIT_EXCEEDED",
}


def is_unreachable(exc: BaseException) -> bool:
    """Whether a failed MLflow call means "the server is not answering now" (refused, reset or
    timed-out connections, a 5xx from a server whose database is away), as opposed to a
    request the server refused (a bad parameter, a missing run): worth sending again later."""
    if isinstance(exc, (requests.exceptions.RequestException, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, MlflowException):
        text = str(exc)
        if text.startswith("API request to") or "Max retries exceeded" in text:
            return True
        return exc.error_code in _TRANSIENT_CODES
    return False


def client(tracking_uri: str) -> MlflowClient:
    """A client whose runs and model registry are both the store at ``tracking_uri``."""
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def require_store(tracking_uri: str) -> None:
    """Refuse a sqlite store that does not exist: reading one must not create it empty."""
    db = sqlite_file(tracking_uri)
    if db is not None:
        if not db.is_file():
            raise UserError(
                f"no MLflow store at {db}: run `ablate demo` or `ablate run` first, "
                "or pass --workdir / --tracking-uri"
            )


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def global_store(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's *global* tracking and registry URIs at ``tracking_uri`` for a block.

    ``mlflow.pyfunc.log_model``, registering a logged model and resolving ``models:/`` URIs
    read the global URIs whatever client is used; left alone, they fall back to
    ``./mlflow.db`` (and create it). Everything else here passes URIs explicitly. The
    previous tracking URI and both environment variables are restored afterwards.
    """
    saved = {name: os.environ.get(name) for name in _URI_VARIABLES}
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        mlflow.set_registry_uri(None)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive lock on a sqlite store (a no-op for other stores): the first
    launches on a new work directory then create its tables and experiment exactly once,
    however many start at the same time."""
    db = sqlite_file(tracking_uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None) -> str:
    """Return the id of experiment ``name``, creating it (with its artifact root and
    :data:`EXPERIMENT_TAGS`) if new; the store itself is created on first use, under
    :func:`store_lock`."""
    with store_lock(tracking_uri):
        mlf = client(tracking_uri)
        exp = _retry(lambda: mlf.get_experiment_by_name(name))
        if exp is None:
            return _retry(
                lambda: mlf.create_experiment(
                    name, artifact_location=artifact_location, tags=EXPERIMENT_TAGS
                )
            )
    if exp.lifecycle_stage == "deleted":
        raise UserError(
            f"MLflow experiment '{name}' is deleted: restore it in the UI or pick --name"
        )
    missing = {key: value for key, value in EXPERIMENT_TAGS.items() if key not in exp.tags}
    for key, value in missing.items():  # an experiment made before these tags existed
        _retry(lambda k=key, v=value: mlf.set_experiment_tag(exp.experiment_id, k, v))
    return exp.experiment_id


def start_parent(
    tracking_uri: str,
    experiment_id: str,
    kind: str,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create the launch's parent run (``kind`` is ``launch`` or ``search``) and return its id."""
    mlf = client(tracking_uri)
    run = _retry(
        lambda: mlf.create_run(
            experiment_id, run_name=run_name, tags={TAG_KIND: kind, **(tags or {})}
        )
    )
    log_params(tracking_uri, run.info.run_id, params)
    return run.info.run_id


def find_or_start_child(
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str,
    trial_id: str,
    run_name: str,
    tags: Mapping[str, str],
) -> tuple[str, bool]:
    """The child run of Ray trial ``trial_id``: the existing one if any, else a new one.

    Returns ``(run_id, created)``.
    """
    mlf = client(tracking_uri)
    found = _retry(
        lambda: mlf.search_runs(
            [experiment_id],
            filter_string=run_filter({TAG_TRIAL_ID: trial_id, TAG_PARENT: parent_run_id}),
            max_results=2,
        )
    )
    if found:
        reopen_run(tracking_uri, found[0].info.run_id)
        return found[0].info.run_id, False
    all_tags = {
        TAG_PARENT: parent_run_id,
        TAG_TRIAL_ID: trial_id,
        TAG_KIND: "trial",
        TAG_STATUS: "running",
        **tags,
    }
    run = _retry(lambda: mlf.create_run(experiment_id, run_name=run_name, tags=all_tags))
    return run.info.run_id, True


def reopen_run(tracking_uri: str, run_id: str) -> None:
    """Mark an ended run RUNNING again (a resumed launch or trial), dropping the reason of its
    earlier end."""
    mlf = client(tracking_uri)
    run = _retry(lambda: mlf.get_run(run_id))
    _retry(lambda: mlf.update_run(run_id, status="RUNNING"))
    set_tags(tracking_uri, run_id, {TAG_STATUS: "running"})
    if TAG_ERROR in run.data.tags:
        _retry(lambda: mlf.delete_tag(run_id, TAG_ERROR))


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches (MLflow caps a batch at 100 params)."""
    items = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()]
    mlf = client(tracking_uri)
    for i in range(0, len(items), 100):
        chunk = items[i : i + 100]
        _retry(lambda chunk=chunk: mlf.log_batch(run_id, params=chunk, synchronous=True))


def log_metrics(
    tracking_uri: str, run_id: str, metrics: Mapping[str, float], step: int = 0
) -> None:
    """Log a dict of metrics at one step in a single batch call (never per value)."""
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    if items:
        mlf = client(tracking_uri)
        _retry(lambda: mlf.log_batch(run_id, metrics=items, synchronous=True))


def log_points(tracking_uri: str, run_id: str, points: Iterable[list[Any]]) -> None:
    """Log ``[name, value, timestamp_ms, step]`` points, stamped when they were measured, in
    batches of 1000."""
    items = [Metric(key, float(value), int(stamp), int(step)) for key, value, stamp, step in points]
    mlf = client(tracking_uri)
    for i in range(0, len(items), 1000):
        chunk = items[i : i + 1000]
        _retry(lambda chunk=chunk: mlf.log_batch(run_id, metrics=chunk, synchronous=True))


def log_dataset_input(tracking_uri: str, run_id: str, dataset: Mapping[str, Any]) -> None:
    """Log a dataset (the fields of an MLflow ``Dataset``) as the run's training input."""
    entity = DatasetInput(Dataset(**dataset), [InputTag(MLFLOW_DATASET_CONTEXT, "training")])
    mlf = client(tracking_uri)
    _retry(lambda: mlf.log_inputs(run_id, datasets=[entity]))


def log_image(tracking_uri: str, run_id: str, image: np.ndarray, key: str, step: int) -> None:
    mlf = client(tracking_uri)
    _retry(lambda: mlf.log_image(run_id, image, key=key, step=step, synchronous=True))


def set_tags(tracking_uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    mlf = client(tracking_uri)
    items = [RunTag(k, str(v)) for k, v in tags.items()]
    _retry(lambda: mlf.log_batch(run_id, tags=items, synchronous=True))


def log_artifacts(
    tracking_uri: str, run_id: str, local_path: Path, artifact_path: str | None = None
) -> None:
    mlf = client(tracking_uri)
    if local_path.is_dir():
        _retry(lambda: mlf.log_artifacts(run_id, str(local_path), artifact_path))
    else:
        _retry(lambda: mlf.log_artifact(run_id, str(local_path), artifact_path))


def finish_run(tracking_uri: str, run_id: str, status: str, error: str | None = None) -> None:
    """End a run: ``status`` is completed / failed / pruned / interrupted (also mirrored as
    a tag; MLflow's status is FINISHED, FAILED, KILLED or KILLED)."""
    tags = {TAG_STATUS: status}
    if error is not None:
        tags[TAG_ERROR] = error[:_MAX_PARAM_LEN]
    set_tags(tracking_uri, run_id, tags)
    mlflow_status = _MLFLOW_STATUS.get(status, "FAILED")
    _retry(lambda: client(tracking_uri).set_terminated(run_id, status=mlflow_status))
