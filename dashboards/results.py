"""The one path from MLflow to pandas: every table and dashboard reads a study through here.

A study is an MLflow experiment holding parent runs (one per launch: ``ablate.kind`` =
``launch`` or ``search``) and one child run per trial (``ablate.kind`` = ``trial``). This
module turns the trial runs into one flat DataFrame (one line per trial: run ids, row, seed,
status, error, ``params.*`` and final ``metrics.*``) that can be saved as Parquet, and fetches
the few other things the dashboard needs (launches, loss histories, artifacts) the same way.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from ablate import tracking
from ablate.errors import UserError
from ablate.mlflow_internals import MLFLOW_GIT_COMMIT
from ablate.tracking import require_store
from ablate.ui_links import run_page_url
from ablate.workspace import Workspace

#: Columns every results frame has, in this order, before the ``params.*``/``metrics.*`` ones.
BASE_COLUMNS = [
    "experiment",
    "run_id",
    "parent_run_id",
    "run_name",
    "row",
    "row_index",
    "label",
    "seed",
    "fold",
    "fold_hash",
    "dataset",
    "dataset_sha256",
    "launch",
    "reference",
    "code_version",
    "status",
    "error",
    "start_time",
    "end_time",
    "artifact_uri",
]

_PARENT_KINDS = {"launch", "search"}
#: Where ``ablate ui`` serves a local store unless told otherwise (``--host`` / ``--port``).
UI_URL = "http://127.0.0.1:5000"
_TRIAL_STATUSES = {"completed", "failed", "pruned", "interrupted"}


@dataclass(frozen=True)
class Launch:
    """A parent run: one ``ablate run`` / ``ablate search`` / ``ablate demo`` launch.

    A search records its objectives (``[("val_psnr", "max")]``) and searched keys; a
    ``--confirm-seeds`` grid the parent run id of the search it confirms and its role
    (``best`` or ``defaults``). Launches made before these tags existed leave them empty."""

    run_id: str
    kind: str
    rows: list[str]
    start_time: pd.Timestamp
    optuna_storage: str | None
    optuna_study: str | None
    run_name: str = ""
    experiment_id: str = ""
    objectives: list[tuple[str, str]] = field(default_factory=list)
    search_params: list[str] = field(default_factory=list)
    confirms: str | None = None
    confirm_role: str | None = None
    #: The YAML's rows in its order and its declared reference row (empty: launched before
    #: they were recorded).
    row_order: list[str] = field(default_factory=list)
    reference: str | None = None
    #: Why a replicated launch's seed waves stopped (``--until-resolved``), with their count.
    replication_stop: str | None = None
    replication_waves: int = 0


def _client(tracking_uri: str) -> Any:
    """An MlflowClient on an existing store; never creates an empty sqlite file by reading."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in tables
    require_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client: Any, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        known = ", ".join(names) if names else "none yet"
        raise UserError(f"unknown experiment '{experiment}' (experiments in this store: {known})")
    return exp.experiment_id


def _all_runs(client: Any, experiment_id: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], max_results=1000, page_token=token, order_by=["start_time ASC"]
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _is_trial(run: Any) -> bool:
    tags = run.data.tags
    kind = tags.get(tracking.TAG_KIND)
    return kind == "trial" or (kind not in _PARENT_KINDS and tracking.TAG_PARENT in tags)


def _timestamp(ms: int | None) -> pd.Timestamp:
    return pd.Timestamp(ms, unit="ms", tz="UTC") if ms else pd.NaT


def _launch(run: Any) -> Launch:
    tags, params = run.data.tags, run.data.params
    rows = [r.strip() for r in params.get("rows", "").split(",") if r.strip()]
    searched = tags.get(tracking.TAG_SEARCH_PARAMS, "")
    return Launch(
        run_id=run.info.run_id,
        kind=tags.get(tracking.TAG_KIND, "launch"),
        rows=rows,
        start_time=_timestamp(run.info.start_time),
        optuna_storage=tags.get(tracking.TAG_OPTUNA_STORAGE),
        optuna_study=tags.get(tracking.TAG_OPTUNA_STUDY),
        run_name=run.info.run_name or "",
        experiment_id=run.info.experiment_id,
        objectives=tracking.parse_objectives(tags.get(tracking.TAG_SEARCH_OBJECTIVES)),
        search_params=[k.strip() for k in searched.split(",") if k.strip()],
        confirms=tags.get(tracking.TAG_CONFIRMS),
        confirm_role=tags.get(tracking.TAG_CONFIRM_ROLE),
        row_order=[r for r in tags.get(tracking.TAG_ROW_ORDER, "").split(",") if r],
        reference=tags.get(tracking.TAG_REFERENCE),
        replication_stop=tags.get(tracking.TAG_REPLICATION_STOP),
        replication_waves=int(tags.get(tracking.TAG_REPLICATION_WAVES, 0)),
    )


def _status(run: Any) -> tuple[str, str]:
    """The trial's status and error; MLflow's own run status when the trainable set none."""
    tags = run.data.tags
    status = tags.get(tracking.TAG_STATUS)
    error = tags.get(tracking.TAG_ERROR, "")
    if status not in _TRIAL_STATUSES:
        status = {"FINISHED": "completed", "RUNNING": "running", "SCHEDULED": "running"}.get(
            run.info.status, "failed"
        )
        if status == "failed" and not error:
            error = f"MLflow run status {run.info.status}"
    return status, error


def _row_order(launches: list[Launch], trial_rows: list[str]) -> list[str]:
    """Rows in the YAML's order, as each launch recorded it (all the YAML's rows, whichever
    the launch ran), so no launch's start time or ``--rows`` reorders a table. Only when
    launches recorded different YAMLs does the latest one's order come first; launches
    made before the order was recorded add their ``rows``, then come any other rows."""
    order: list[str] = []
    for launch in sorted(launches, key=lambda la: la.start_time, reverse=True):
        order += [r for r in launch.row_order if r not in order]
    for launch in sorted(launches, key=lambda la: la.start_time, reverse=True):
        order += [r for r in launch.rows if r not in order]
    return order + [r for r in dict.fromkeys(trial_rows) if r not in order]


def _label(value: str | None) -> str | None:
    """A row's label param; a row without one logged ``None`` (as a string): no label."""
    return None if value in (None, "", "None", "null") else value


def _trial_line(run: Any, experiment: str, launches: dict[str, Launch]) -> dict[str, Any]:
    tags, params = run.data.tags, run.data.params
    launch = launches.get(tags.get(tracking.TAG_PARENT, ""))
    status, error = _status(run)
    name = run.info.run_name or run.info.run_id
    row = params.get("row") or tags.get(tracking.TAG_ROW) or name.rsplit("-s", 1)[0]
    seed = params.get("seed", tags.get(tracking.TAG_SEED))
    fold = params.get("fold", tags.get(tracking.TAG_FOLD))
    line: dict[str, Any] = {
        "experiment": experiment,
        "run_id": run.info.run_id,
        "parent_run_id": tags.get(tracking.TAG_PARENT),
        "run_name": run.info.run_name,
        "row": row,
        "label": _label(params.get("row.label")),
        "seed": int(seed) if seed not in (None, "") else None,
        # a cross-validated trial's fold (ablate.data.folds); None: the dataset's own split
        "fold": int(fold) if fold not in (None, "") else None,
        "fold_hash": tags.get(tracking.TAG_FOLD_HASH, ""),
        # trials from before datasets were recorded: one unnamed dataset
        "dataset": tags.get(tracking.TAG_DATASET, ""),
        "dataset_sha256": tags.get(tracking.TAG_DATASET_SHA256, ""),
        "launch": launch.run_name if launch else "",
        "reference": launch.reference if launch else None,
        "code_version": tags.get(MLFLOW_GIT_COMMIT, ""),  # the git commit of ablate that ran it
        "status": status,
        "error": error,
        "start_time": _timestamp(run.info.start_time),
        "end_time": _timestamp(run.info.end_time),
        "artifact_uri": run.info.artifact_uri,
    }
    line.update({f"params.{k}": v for k, v in params.items()})
    line.update({f"metrics.{k}": float(v) for k, v in run.data.metrics.items()})
    return line


def load_launches(tracking_uri: str, experiment: str) -> list[Launch]:
    """The parent runs of a study, oldest first."""
    client = _client(tracking_uri)
    runs = _all_runs(client, _experiment_id(client, experiment))
    return [_launch(r) for r in runs if not _is_trial(r)]


def load_results(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """One line per trial of ``experiment``, rows in search-space order then by seed and fold.

    Columns: :data:`BASE_COLUMNS`, then ``params.<name>`` (strings, as logged) and
    ``metrics.<name>`` (final values, floats; NaN where a trial did not log one).
    ``row_index`` is the row's position in the YAML (see :func:`_row_order`); ``dataset`` and
    ``dataset_sha256`` say what each trial trained on, ``launch`` and ``reference`` the name
    of its launch (parent run) and the row that launch's YAML declares as the reference.
    Raises :class:`UserError` for a missing store, an unknown experiment or one without trials.
    """
    client = _client(tracking_uri)
    runs = _all_runs(client, _experiment_id(client, experiment))
    launches = [_launch(r) for r in runs if not _is_trial(r)]
    by_id = {launch.run_id: launch for launch in launches}
    trials = [_trial_line(r, experiment, by_id) for r in runs if _is_trial(r)]
    if not trials:
        raise UserError(
            f"experiment '{experiment}' has no trial runs yet: launch it with `ablate run` "
            "(or wait for its first trial to start)"
        )
    df = pd.DataFrame(trials)
    order = _row_order(launches, df["row"].tolist())
    df["row_index"] = df["row"].map({row: i for i, row in enumerate(order)}).astype(int)
    df["seed"] = df["seed"].astype("Int64")
    df["fold"] = df["fold"].astype("Int64")
    order = ["row_index", "seed", "fold", "start_time"]
    df = df.sort_values(order, kind="stable").reset_index(drop=True)
    extra = sorted(c for c in df.columns if c.startswith("params."))
    extra += sorted(c for c in df.columns if c.startswith("metrics."))
    return df[BASE_COLUMNS + extra]


def _dataset_labels(df: pd.DataFrame) -> dict[str, str]:
    """A results frame's datasets, oldest first (:func:`ablate.launches.dataset_labels`)."""
    from ablate.launches import dataset_labels

    if "dataset_sha256" not in df:  # a results file written before datasets were recorded
        return dataset_labels([("", "")])
    ordered = df.sort_values("start_time", kind="stable", na_position="last")
    found = zip(ordered["dataset_sha256"].fillna(""), ordered["dataset"].fillna(""), strict=True)
    return dataset_labels(list(found))


@dataclass(frozen=True)
class DatasetTrials:
    """The trials of one dataset of a study: ``label`` names it, ``others`` the study's
    other datasets (what ``--data`` would pick instead)."""

    trials: pd.DataFrame
    label: str
    sha256: str
    others: list[str]


def dataset_trials(df: pd.DataFrame, data: str | None, study: str) -> DatasetTrials:
    """The trials of the dataset ``data`` names (its name or the start of its content hash),
    else of the study's first dataset (the one its oldest trial trained on): a table or a
    dashboard is always of one dataset, never a mix, and a later launch on other data never
    changes what it shows."""
    from ablate.launches import pick_dataset

    labels = _dataset_labels(df)
    sha = pick_dataset(labels, data, study) if data is not None else next(iter(labels), "")
    shas = df["dataset_sha256"].fillna("") if "dataset_sha256" in df else pd.Series("", df.index)
    others = [label for key, label in labels.items() if key != sha]
    return DatasetTrials(df[shas == sha].reset_index(drop=True), labels.get(sha, ""), sha, others)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run: on the tracking server itself for an ``http(s)`` store,
    else where ``ablate ui`` serves a local store by default (http://127.0.0.1:5000)."""
    base = tracking_uri if tracking_uri.startswith(("http://", "https://")) else UI_URL
    return run_page_url(base, experiment_id, run_id)


def save_results(df: pd.DataFrame, out: str | Path) -> Path:
    """Write a results frame as Parquet (pyarrow), creating the parent folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out, engine="pyarrow", index=False)
    return out


def read_results(source: str, tracking_uri: str) -> pd.DataFrame:
    """A results frame from a ``.parquet`` file written by :func:`save_results`, else MLflow."""
    if source.endswith(".parquet"):
        path = Path(source)
        if not path.is_file():
            raise UserError(f"results file not found: {path} (write it with `ablate results`)")
        return pd.read_parquet(path, engine="pyarrow")
    return load_results(tracking_uri, source)


def load_histories(tracking_uri: str, run_ids: list[str], key: str = "loss") -> pd.DataFrame:
    """The per-step history of one metric for each run: columns run_id, step, value."""
    client = _client(tracking_uri)
    frames = []
    for run_id in run_ids:
        points = client.get_metric_history(run_id, key)
        if points:
            frames.append(
                pd.DataFrame(
                    {
                        "run_id": run_id,
                        "step": [p.step for p in points],
                        "value": [p.value for p in points],
                    }
                )
            )
    if not frames:
        return pd.DataFrame({"run_id": [], "step": [], "value": []})
    return pd.concat(frames, ignore_index=True).sort_values(["run_id", "step"], kind="stable")


def _local_dir(artifact_uri: str | None) -> Path | None:
    """The folder of a run's artifacts when they are on this machine's file system."""
    if not artifact_uri:
        return None
    parsed = urlparse(artifact_uri)
    if parsed.scheme not in ("", "file"):
        return None
    return Path(unquote(parsed.path))


def fetch_artifact(
    tracking_uri: str | None, run_id: str, path: str, artifact_uri: str | None = None
) -> Path | None:
    """A local path to one artifact of a run; ``None`` if the run did not log it.

    With the run's ``artifact_uri`` on the local file system the file is read in place (no
    tracking store needed, so results exported to Parquet keep working); otherwise it is
    downloaded through the tracking store into a temporary folder (``None`` without one).
    """
    local = _local_dir(artifact_uri)
    if local is not None:
        return local / path if (local / path).exists() else None
    if tracking_uri is None:
        return None
    client = _client(tracking_uri)
    parent = str(Path(path).parent) if Path(path).parent != Path(".") else None
    if path not in {f.path for f in client.list_artifacts(run_id, parent)}:
        return None
    dst = tempfile.mkdtemp(prefix="ablate-artifact-")
    return Path(client.download_artifacts(run_id, path, dst))


def load_slice_metrics(tracking_uri: str | None, runs: pd.DataFrame) -> pd.DataFrame:
    """Per-test-slice metrics (``test_metrics.parquet``) of some trials, with a run_id column.

    ``runs`` is a slice of a results frame (``run_id`` and ``artifact_uri`` columns). Trials
    that did not log the artifact (or, without a ``tracking_uri``, whose artifacts are not on
    this machine) are left out; an empty frame if none did.
    """
    frames = []
    for run_id, uri in zip(runs["run_id"], runs["artifact_uri"], strict=True):
        path = fetch_artifact(tracking_uri, run_id, "test_metrics.parquet", uri)
        if path is not None:
            frames.append(pd.read_parquet(path).assign(run_id=run_id))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"run_id": []})


def mlflow_ui_command(
    workdir: str | Path = "runs",
    host: str = "127.0.0.1",
    port: int = 5000,
    tracking_uri: str | None = None,
) -> list[str]:
    """The ``mlflow ui`` command line serving a work directory's store (artifacts included)."""
    import sys

    ws = Workspace.at(workdir, tracking_uri)
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        ws.tracking_uri,
        "--default-artifact-root",
        ws.artifacts.as_uri(),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",  # one user on a workstation; several uvicorn workers only cost memory and startup
    ]


def launch_yaml(tracking_uri: str, launch: Launch) -> dict[str, Any] | None:
    """The experiment YAML a launch logged on its parent run (``<name>.experiment.yaml``)."""
    import yaml

    try:
        files = _client(tracking_uri).list_artifacts(launch.run_id)
    except Exception:  # noqa: BLE001 - an unreachable artifact store only loses what it holds
        return None
    for info in files:
        if info.path.endswith(".experiment.yaml"):
            path = fetch_artifact(tracking_uri, launch.run_id, info.path)
            if path is not None:
                raw = yaml.safe_load(path.read_text())
                return raw if isinstance(raw, dict) else None
    return None
