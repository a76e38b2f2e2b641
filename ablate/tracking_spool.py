"""A run's tracking writes, kept while the MLflow server cannot be reached and sent when it can.

MLflow's client retries a failed request for about four minutes (7 retries, backoff 2) and
then raises: a trial would fail, or lose its metrics, whenever a server restart, a database
failover or a partition lasts longer. A trial writes through a :class:`Spool` instead:

- every write (metrics, params, tags, the dataset input, artifacts, images, the run's end)
  is appended to the spool, in order, and the spool sends what it holds at once;
- a send that cannot reach the server leaves it, and everything after it, in the spool, and
  training goes on; the spool tries again at the next write, at most every
  :data:`RETRY_EVERY_S`;
- the spool rides in the trial's checkpoint (:meth:`Spool.save` / :meth:`Spool.load`), so a
  trial restarted on another node sends what its dead predecessor could not;
- a metric point is sent only when the run holds nothing at or after its step: a request
  whose answer was lost may have been stored, so after any failed send the spool reads the
  run's last logged steps (:func:`ablate.run_queries.logged_steps`) before it sends more.
  That is also what keeps a restarted trial, which replays the steps after its checkpoint,
  from logging a (metric, step) twice;
- the trial's end waits for the spool to drain (:meth:`Spool.drain`, bounded by
  the launch's ``outage_wait_s``); past the bound the trial fails in one line with the spool in its
  checkpoint, and a retry or ``ablate resume`` sends the rest.

Sends use MLflow's client with its own retries off (:func:`ablate.tracking.fail_fast`): the
spool is the retry, and a write must not block training for four minutes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ablate import run_queries, tracking

#: Seconds between two attempts to reach an unreachable server: a write in between only
#: appends (a partitioned server would cost a request timeout per attempt).
RETRY_EVERY_S = 10.0
#: The spool's file in a checkpoint folder; the files its writes name lie beside it.
SPOOL_FILE = "tracking_spool.json"
SPOOL_FOLDER = "tracking_spool"


class Spool:
    """The pending tracking writes of one MLflow run, oldest first.

    ``known_steps`` is the last step the run holds of each metric, or None when it must be
    read from the server before the next metric is sent (a new run holds none)."""

    def __init__(self, tracking_uri: str, run_id: str, *, new_run: bool) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.pending: list[dict[str, Any]] = []
        self.folder = Path(tempfile.mkdtemp(prefix="ablate-spool-"))
        self.known_steps: dict[str, int] | None = {} if new_run else None
        self.last_failure: float | None = None
        self.unreachable_since: float | None = None
        self.last_error = ""

    # -- writes -----------------------------------------------------------------------------

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_history([(step, metrics)])

    def log_history(self, history: Iterable[tuple[int, Mapping[str, float]]]) -> None:
        """Per-step metrics ``[(step, {name: value})]``, stamped now."""
        now = int(time.time() * 1000)
        points = [[k, float(v), now, step] for step, values in history for k, v in values.items()]
        if points:
            self._append({"op": "metrics", "points": points})

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._append({"op": "params", "params": {k: str(v) for k, v in params.items()}})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._append({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def reopen(self) -> None:
        """The run is RUNNING again (a restarted trial), its earlier end's reason dropped."""
        self._append({"op": "reopen"})

    def log_dataset(self, dataset: Mapping[str, str]) -> None:
        """An MLflow dataset input (context ``training``): the fields of
        :func:`ablate.mlflow_ui.dataset_entity`."""
        self._append({"op": "dataset", "dataset": dict(dataset)})

    def log_artifacts(self, local_path: Path, artifact_path: str | None = None) -> None:
        """A file or folder, copied into the spool now (its source may be a temporary one)."""
        name = f"{len(self.pending)}-{time.time_ns()}"
        target = self.folder / name
        if local_path.is_dir():
            shutil.copytree(local_path, target)
        else:
            target.mkdir()
            shutil.copy2(local_path, target / local_path.name)
        self._append({"op": "artifacts", "name": name, "artifact_path": artifact_path})

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        name = f"{len(self.pending)}-{time.time_ns()}.npy"
        np.save(self.folder / name, image)
        self._append({"op": "image", "name": name, "key": key, "step": step})

    def finish(self, status: str, error: str | None = None) -> None:
        """End the run (:func:`ablate.tracking.finish_run`'s statuses)."""
        self._append({"op": "finish", "status": status, "error": error})

    # -- sending ----------------------------------------------------------------------------

    def _append(self, op: dict[str, Any]) -> None:
        self.pending.append(op)
        if self.last_failure is None or time.monotonic() - self.last_failure >= RETRY_EVERY_S:
            self.flush()

    def flush(self) -> bool:
        """Send what the spool holds, in order, until a send cannot reach the server; True
        when it is empty. Any other error is the caller's (a bad write is a bug)."""
        while self.pending:
            try:
                with tracking.fail_fast():
                    self._send(self.pending[0])
            except Exception as exc:
                if not tracking.is_unreachable(exc):
                    raise
                self._failed(exc)
                return False
            self._sent(self.pending.pop(0))
            self.last_failure = self.unreachable_since = None
        return True

    def drain(self, wait_s: float) -> bool:
        """Flush until empty or ``wait_s`` has passed; True when empty."""
        deadline = time.monotonic() + wait_s
        while not self.flush():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(RETRY_EVERY_S, left))
        return True

    def unreachable_for(self) -> str:
        """How long the server has not answered, and its last error, for a one-line reason."""
        since = self.unreachable_since
        return f"{duration(0.0 if since is None else time.monotonic() - since)} ({self.last_error})"

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.last_failure = now
        if self.unreachable_since is None:
            self.unreachable_since = now
        self.last_error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        # the failed request may have been stored: read the run before sending metrics again
        self.known_steps = None

    def _sent(self, op: dict[str, Any]) -> None:
        if op["op"] == "metrics" and self.known_steps is not None:
            for key, _, _, step in op["points"]:
                self.known_steps[key] = max(step, self.known_steps.get(key, step))
        if op.get("name"):
            path = self.folder / op["name"]
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _send(self, op: dict[str, Any]) -> None:
        uri, run_id = self.tracking_uri, self.run_id
        kind = op["op"]
        if kind == "metrics":
            if self.known_steps is None:
                self.known_steps = run_queries.logged_steps(uri, run_id)
            known = self.known_steps
            points = [p for p in op["points"] if p[3] > known.get(p[0], -1)]
            tracking.log_points(uri, run_id, points)
        elif kind == "params":
            tracking.log_params(uri, run_id, op["params"])
        elif kind == "tags":
            tracking.set_tags(uri, run_id, op["tags"])
        elif kind == "reopen":
            tracking.reopen_run(uri, run_id)
        elif kind == "dataset":
            tracking.log_dataset_input(uri, run_id, op["dataset"])
        elif kind == "artifacts":
            tracking.log_artifacts(uri, run_id, self.folder / op["name"], op["artifact_path"])
        elif kind == "image":
            image = np.load(self.folder / op["name"])
            tracking.log_image(uri, run_id, image, op["key"], op["step"])
        elif kind == "finish":
            tracking.finish_run(uri, run_id, op["status"], op["error"])
        else:
            raise ValueError(f"unknown spooled write {kind!r}")

    # -- in a checkpoint --------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write the pending writes and their files into a checkpoint ``folder``."""
        (folder / SPOOL_FILE).write_text(json.dumps({"run_id": self.run_id, "ops": self.pending}))
        files = folder / SPOOL_FOLDER
        files.mkdir(exist_ok=True)
        for op in self.pending:
            if op.get("name"):
                _copy(self.folder / op["name"], files / op["name"])

    def load(self, folder: Path) -> None:
        """Add a checkpoint's pending writes after those this spool holds: a restored trial
        reopens its run first, then sends what its predecessor could not (its run's end
        included)."""
        path = folder / SPOOL_FILE
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        if saved["run_id"] != self.run_id:
            return
        for op in saved["ops"]:
            if op.get("name"):
                _copy(folder / SPOOL_FOLDER / op["name"], self.folder / op["name"])
        self.pending.extend(saved["ops"])

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def duration(seconds: float) -> str:
    """``45 s`` or ``15 min``: how long a server was waited for, in a one-line reason."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)


def wait_for_server(call: Callable[[], Any], what: str, tracking_uri: str, wait_s: float) -> Any:
    """``call()`` (MLflow requests) tried until the server answers or ``wait_s`` has passed:
    a trial that starts while the server is down waits for it (it cannot spool the creation
    of its run: the run's id names every write). Raises a one-line error past the bound."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with tracking.fail_fast():
                return call()
        except Exception as exc:
            if not tracking.is_unreachable(exc):
                raise
            if time.monotonic() >= deadline:
                first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                raise tracking.TrackingUnreachable(
                    f"could not {what}: the MLflow server at {tracking_uri} did not answer for "
                    f"{duration(wait_s)} ({first})"
                ) from None
            time.sleep(min(RETRY_EVERY_S, max(deadline - time.monotonic(), 0.1)))
