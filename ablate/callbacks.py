"""Driver-side Ray Tune callbacks: a live progress display, MLflow end states, and a guard
that keeps a restored trial off a deleted checkpoint.

The trainable ends its own MLflow run when it completes or raises. Two ends it never sees
are handled here, on the driver: a trial stopped early by ASHA (its run is marked
``pruned``) and a trial whose worker died for good (marked ``failed``).
"""

from __future__ import annotations

import logging
from typing import Any

from pyarrow.fs import FileType
from ray.train import Checkpoint
from ray.tune import Callback
from ray.tune.experiment import Trial
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ablate import tracking
from ablate.ray_internals import keep_checkpoints

log = logging.getLogger(__name__)


class TrialProgress(Callback):
    """Shows trials done / running / failed and the latest reported metrics."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._progress: Progress | None = None
        self._task: Any = None
        self._done = 0
        self._errors = 0

    def __getstate__(self) -> dict[str, Any]:  # the live display does not survive pickling
        return {**self.__dict__, "_progress": None, "_task": None}

    def _ensure(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]trials"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("starting", total=self.total or None)
        return self._progress

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._describe(trials, f"started {trial.trial_id}")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        name = (trial.config.get("trial") or {}).get("row_name", trial.trial_id)
        shown = ", ".join(
            f"{k}={result[k]:.3f}" for k in ("step", "val_psnr", "psnr") if k in result
        )
        self._describe(trials, f"{name}: {shown}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done += 1
        self._describe(trials, f"finished {trial.trial_id}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done += 1
        self._errors += 1
        self._describe(trials, f"[red]failed {trial.trial_id}")

    def _describe(self, trials: list, text: str) -> None:
        progress = self._ensure()
        running = sum(1 for t in trials if t.status == "RUNNING")
        failed = f", [red]{self._errors} failed[/]" if self._errors else ""
        progress.update(
            self._task,
            completed=self._done,
            total=max(self.total, len(trials)) or None,
            description=f"{running} running{failed} | {text}",
        )

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class MlflowTrialStates(Callback):
    """Records ends the trainable cannot record itself: pruned trials and dead workers."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id

    def _run_of(self, trial: Any) -> Any | None:
        runs = tracking.client(self.tracking_uri).search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{tracking.TAG_TRIAL_ID}` = '{trial.trial_id}' and "
            f"tags.`{tracking.TAG_PARENT}` = '{self.parent_run_id}'",
            max_results=1,
        )
        return runs[0] if runs else None

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if (trial.last_result or {}).get("final") == 1:
            return
        run = self._run_of(trial)
        if run is not None:
            tracking.finish_run(self.tracking_uri, run.info.run_id, "pruned")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run = self._run_of(trial)
        if run is None or run.data.tags.get(tracking.TAG_STATUS) == "failed":
            return
        tracking.finish_run(
            self.tracking_uri,
            run.info.run_id,
            "failed",
            f"the trial's worker died (node lost or killed); Ray logs: {trial.local_path}",
        )


def _exists(checkpoint: Checkpoint) -> bool:
    return checkpoint.filesystem.get_file_info(checkpoint.path).type != FileType.NotFound


class CheckpointGuard(Callback):
    """Points a pending trial whose last checkpoint is gone at the newest one that exists.

    The driver deletes checkpoints beyond ``num_to_keep`` as new ones arrive, and saves its
    state every few seconds. A driver killed between the two leaves a saved state naming a
    deleted checkpoint; restored from it, the trial would fail on every retry. Before such
    a trial starts, this drops the missing checkpoints from its bookkeeping, so it resumes
    from the newest surviving one, or from step 0 (into the same MLflow run) if none is
    left. Ray has no public way to drop them: :mod:`ablate.ray_internals` does it.
    """

    def __init__(self) -> None:
        self._checked: set[tuple[str, str | None]] = set()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        for trial in trials:
            if trial.status != Trial.PENDING:
                continue
            latest = trial.checkpoint
            key = (trial.trial_id, None if latest is None else latest.path)
            if key in self._checked:
                continue
            self._checked.add(key)
            if latest is not None and not _exists(latest):
                survivor = keep_checkpoints(trial, _exists)
                log.warning(
                    "trial %s: its last checkpoint %s was deleted after the driver's last "
                    "saved state; resuming from %s",
                    trial,
                    latest.path,
                    "step 0" if survivor is None else survivor.path,
                )
