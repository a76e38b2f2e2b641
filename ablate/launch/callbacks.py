"""Driver-side Ray Tune callbacks: a live progress display (per trial step, it/s and ETA,
and the launch's ETA), the plan against the actual time, MLflow end states, and a guard
that keeps a restored trial off a deleted checkpoint.

The trainable ends its own MLflow run when it completes or raises. Two ends it never sees
are handled here, on the driver: a trial stopped early by ASHA (its run is marked
``pruned``) and a trial whose worker died for good (marked ``failed``). While the tracking
server cannot be reached, those ends wait in the callback and are recorded when it answers
(the launch's end waits for them, the launch's ``outage_wait_s`` at most).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import ray
from pyarrow.fs import FileType
from ray.train import Checkpoint
from ray.tune import Callback
from ray.tune.experiment import Trial
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from ablate import run_queries, tracking
from ablate.launch.ray_internals import keep_checkpoints
from ablate.tracking_spool import RETRY_EVERY_S, wait_for_server
from ablate.training import progress as progress_board
from ablate.training.context import LaunchContext
from ablate.trials import ANY_TRIAL, lookup_estimate

log = logging.getLogger(__name__)

#: Seconds between the driver's looks at the progress board.
POLL_EVERY_S = 1.0
#: Seconds between two printed progress lines of one trial when stderr is not a terminal.
LINE_EVERY_S = 30.0


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-:--"
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _trial_label(trial: Any) -> str:
    config = trial.config or {}
    if "row" in config:
        return f"{config['row']}-s{config.get('seed', '')}"
    return str(trial.trial_id)


class TrialProgress(Callback):
    """The launch's live view on the driver: trials done / running / failed and the launch's
    ETA, and one line per running trial with its row, seed, step / steps, it/s and ETA.

    Trials post step, steps and it/s to the launch's progress board every few seconds
    (:mod:`ablate.training.progress`, read here at most every ``POLL_EVERY_S`` without waiting), and
    their validation results carry step and steps. The launch ETA schedules
    the remaining work on as many slots as trials run at once: each running trial's
    remaining steps at its it/s, then each pending trial at the plan's estimate
    (``estimates``, by :func:`ablate.trials.trial_key`) scaled by how the finished and
    running trials compare with theirs.
    """

    def __init__(
        self, total: int, estimates: dict[str, float] | None = None, parent_run_id: str = ""
    ) -> None:
        self.total = total
        self.estimates = dict(estimates or {})
        self.parent_run_id = parent_run_id  # names the progress board ("": no board)
        self._board: Any = None
        self._pending: Any = None  # the board's answer still on its way
        self._seen = 0  # the board's version already applied
        self._polled = 0.0
        self._printed: dict[str, float] = {}  # trial id -> when its line was last printed
        self._progress: Progress | None = None
        self._task: Any = None
        self._rows: dict[str, Any] = {}  # trial id -> its progress task
        self._state: dict[str, dict[str, float]] = {}  # trial id -> step, steps, it/s, start
        self._ratios: list[float] = []  # actual / estimated seconds of finished trials
        self._finished: set[str] = set()  # (Tune marks them so only after the callbacks)
        self._slots = 1
        self._done = 0
        self._errors = 0

    def __getstate__(self) -> dict[str, Any]:  # the live display does not survive pickling
        return {
            **self.__dict__,
            "_progress": None,
            "_task": None,
            "_rows": {},
            "_board": None,  # a resumed driver opens its own board (same name)
            "_pending": None,
            "_seen": 0,
        }

    def setup(self, **info: Any) -> None:
        if self.parent_run_id:
            self._board = progress_board.open_board(self.parent_run_id)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """Apply what trials posted to the board since the last look; never waits on it."""
        if self._board is None:
            return
        if self._pending is None:
            if time.monotonic() - self._polled < POLL_EVERY_S:
                return
            self._polled = time.monotonic()
            self._pending = self._board.since.remote(self._seen)
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return
        try:
            self._seen, fresh = ray.get(self._pending)
        except ray.exceptions.RayError as exc:  # display only: the launch goes on without it
            log.warning("progress board unreachable, live progress stops: %s", exc)
            self._board = None
            return
        finally:
            self._pending = None
        by_id = {t.trial_id: t for t in trials}
        for trial_id, posted in fresh.items():
            trial = by_id.get(trial_id)
            if trial is not None and trial_id not in self._finished:
                self._show(trials, trial, posted, posted=True)

    def _ensure(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[detail]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "[bold]trials", total=self.total or None, detail="starting"
            )
            self._rows = {}
        return self._progress

    def _estimate(self, trial: Any) -> float | None:
        return lookup_estimate(self.estimates, trial.config or {})

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        state = self._state.setdefault(trial.trial_id, {})
        state.setdefault("start", time.monotonic())
        self._finished.discard(trial.trial_id)  # a retried trial runs again
        self._describe(trials)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._show(trials, trial, result)

    def _show(self, trials: list, trial: Any, result: dict, posted: bool = False) -> None:
        """Update the trial's line from a result or a board post (step, steps, it/s)."""
        state = self._state.setdefault(trial.trial_id, {"start": time.monotonic()})
        for key in ("step", "steps", "it_per_s"):
            if key in result:
                state[key] = float(result[key])
        progress = self._ensure()
        if "step" in state and "steps" in state:
            if trial.trial_id not in self._rows:
                self._rows[trial.trial_id] = progress.add_task(
                    f"  {_trial_label(trial)}", total=state["steps"], detail=""
                )
            rate = state.get("it_per_s") or 0.0
            eta = (state["steps"] - state["step"]) / rate if rate > 0 else None
            detail = (
                f"step {int(state['step'])}/{int(state['steps'])}  "
                f"{rate:.3g} it/s  ETA {_clock(eta)}"
            )
            progress.update(
                self._rows[trial.trial_id],
                completed=state["step"],
                total=state["steps"],
                detail=detail,
            )
            if posted:
                self._print_line(trial, detail)
        self._describe(trials)

    def _print_line(self, trial: Any, detail: str) -> None:
        """Without a terminal (a log file, ``ray job logs``) the live display only shows
        its last state: print the trial's line at its first progress post, then at most
        every ``LINE_EVERY_S`` (validations are in MLflow)."""
        console = self._progress.console if self._progress is not None else None
        if console is None or console.is_terminal:
            return
        now = time.monotonic()
        last = self._printed.get(trial.trial_id)
        if last is None or now - last >= LINE_EVERY_S:
            self._printed[trial.trial_id] = now
            console.print(f"  {_trial_label(trial)} {trial.trial_id}  {detail}", highlight=False)

    def _running(self, trials: list) -> list:
        return [t for t in trials if t.status == "RUNNING" and t.trial_id not in self._finished]

    def _finish(self, trial: Any) -> None:
        self._finished.add(trial.trial_id)
        state = self._state.pop(trial.trial_id, {})
        estimate = self._estimate(trial)
        if "start" in state and estimate:
            self._ratios.append((time.monotonic() - state["start"]) / estimate)
        task = self._rows.pop(trial.trial_id, None)
        if task is not None and self._progress is not None:
            self._progress.remove_task(task)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done += 1
        self._finish(trial)
        self._describe(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done += 1
        self._errors += 1
        self._finish(trial)
        self._describe(trials)

    def launch_eta(self, trials: list) -> float | None:
        """Seconds until every trial has finished, or None while nothing is known."""
        running = self._running(trials)
        self._slots = max(self._slots, len(running), 1)
        now = time.monotonic()
        ratios = list(self._ratios)
        loads = []
        for t in running:
            state = self._state.get(t.trial_id, {})
            rate, estimate = state.get("it_per_s"), self._estimate(t)
            if rate and "steps" in state:
                left = (state["steps"] - state["step"]) / rate
                if estimate and not self._ratios:
                    ratios.append((now - state.get("start", now) + left) / estimate)
            elif estimate:
                left = max(estimate - (now - state.get("start", now)), 0.0)
            else:
                return None
            loads.append(left)
        scale = statistics.median(ratios) if ratios else 1.0
        pending = [t for t in trials if t.status == "PENDING" and t.trial_id not in self._finished]
        pending += [None] * max(0, self.total - len(trials))  # not created yet (searches)
        durations = []
        for t in pending:
            estimate = self._estimate(t) if t is not None else self.estimates.get(ANY_TRIAL)
            if estimate is None:
                return None if pending else max(loads, default=0.0)
            durations.append(estimate * scale)
        loads += [0.0] * (self._slots - len(loads))
        for d in sorted(durations, reverse=True):
            i = loads.index(min(loads))
            loads[i] += d
        return max(loads, default=0.0)

    def _describe(self, trials: list) -> None:
        progress = self._ensure()
        running = len(self._running(trials))
        failed = f", [red]{self._errors} failed[/]" if self._errors else ""
        progress.update(
            self._task,
            completed=self._done,
            total=max(self.total, len(trials)) or None,
            detail=f"{self._done}/{max(self.total, len(trials))} done, {running} running"
            f"{failed}  launch ETA {_clock(self.launch_eta(trials))}",
        )

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class PlanVsActual(Callback):
    """Logs to the launch's parent run how long its trials took beside the plan's estimate:
    ``actual.trial_s`` (sum over finished trials, as the driver saw them), ``plan.done_s``
    (their estimates), ``plan.error`` (actual / estimated - 1) and ``actual.wall_s``."""

    def __init__(self, ctx: LaunchContext) -> None:
        self.tracking_uri = ctx.tracking_uri
        self.parent_run_id = ctx.parent_run_id
        self.estimates = dict(ctx.estimates)
        self.wait_s = ctx.outage_wait_s
        self._start: dict[str, float] = {}
        self._actual = 0.0
        self._planned = 0.0
        self._began: float | None = None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self._began is None:
            self._began = time.time()
        self._start.setdefault(trial.trial_id, time.time())

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        started = self._start.pop(trial.trial_id, None)
        estimate = lookup_estimate(self.estimates, trial.config or {})
        if started is not None and estimate:
            self._actual += time.time() - started
            self._planned += estimate

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        metrics = {}
        if self._began is not None:
            metrics["actual.wall_s"] = time.time() - self._began
        if self._planned:
            metrics.update(
                {
                    "actual.trial_s": self._actual,
                    "plan.done_s": self._planned,
                    "plan.error": self._actual / self._planned - 1,
                }
            )

        def write() -> None:  # one step per driver session: a resumed launch adds a point
            history = tracking.client(self.tracking_uri).get_metric_history(
                self.parent_run_id, "actual.wall_s"
            )
            tracking.log_metrics(self.tracking_uri, self.parent_run_id, metrics, step=len(history))

        try:
            wait_for_server(write, "log plan vs actual", self.tracking_uri, self.wait_s)
        except Exception as exc:  # noqa: BLE001 - bookkeeping must not fail a finished launch
            log.warning("could not log plan vs actual to the parent run: %s", exc)


class MlflowTrialStates(Callback):
    """Records ends the trainable cannot record itself: pruned trials and dead workers.

    An end the tracking server cannot take now waits, in order, and is tried again at most
    every :data:`~ablate.tracking_spool.RETRY_EVERY_S` (Tune's loop goes on meanwhile); the
    experiment's end waits for what is left, the launch's ``outage_wait_s`` at most."""

    def __init__(self, ctx: LaunchContext) -> None:
        self.tracking_uri = ctx.tracking_uri
        self.experiment_id = ctx.experiment_id
        self.parent_run_id = ctx.parent_run_id
        self.wait_s = ctx.outage_wait_s
        self.pending: list[Callable[[], None]] = []
        self._failed_at: float | None = None

    def _record(self, write: Callable[[], None]) -> None:
        self.pending.append(write)
        self._send()

    def _send(self) -> bool:
        """Send the waiting ends in order until one cannot reach the server; True when none
        is left."""
        while self.pending:
            try:
                with tracking.fail_fast():
                    self.pending[0]()
            except Exception as exc:
                if not tracking.is_unreachable(exc):
                    raise
                self._failed_at = time.monotonic()
                return False
            self.pending.pop(0)
        return True

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.pending and time.monotonic() - (self._failed_at or 0.0) >= RETRY_EVERY_S:
            self._send()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        deadline = time.monotonic() + self.wait_s
        while not self._send() and time.monotonic() < deadline:
            time.sleep(RETRY_EVERY_S)
        if self.pending:
            log.warning(
                "%d trial ends could not reach the MLflow server at %s: the launch's end "
                "marks those runs failed",
                len(self.pending),
                self.tracking_uri,
            )

    def _run_of(self, trial: Any) -> Any | None:
        return run_queries.trial_run(
            self.tracking_uri, self.experiment_id, self.parent_run_id, trial.trial_id
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if (trial.last_result or {}).get("final") == 1:
            return

        def pruned() -> None:
            run = self._run_of(trial)
            if run is not None:
                tracking.finish_run(self.tracking_uri, run.info.run_id, "pruned")

        self._record(pruned)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        def failed() -> None:
            run = self._run_of(trial)
            if run is None or run.data.tags.get(tracking.TAG_STATUS) == "failed":
                return
            tracking.finish_run(
                self.tracking_uri,
                run.info.run_id,
                "failed",
                f"the trial's worker died (node lost or killed); Ray logs: {trial.local_path}",
            )

        self._record(failed)


def _exists(checkpoint: Checkpoint) -> bool:
    return checkpoint.filesystem.get_file_info(checkpoint.path).type != FileType.NotFound


class CheckpointGuard(Callback):
    """Points a pending trial whose last checkpoint is gone at the newest one that exists.

    The driver deletes checkpoints beyond ``num_to_keep`` as new ones arrive, and saves its
    state every few seconds. A driver killed between the two leaves a saved state naming a
    deleted checkpoint; restored from it, the trial would fail on every retry. Before such
    a trial starts, this drops the missing checkpoints from its bookkeeping, so it resumes
    from the newest surviving one, or from step 0 (into the same MLflow run) if none is
    left. Ray has no public way to drop them: :mod:`ablate.launch.ray_internals` does it.

    While the storage is unreachable nothing is decided (the trial itself waits for the
    storage when it restores, see ``trainables.ablation``); the driver must not die of it.
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
            try:
                if latest is None or _exists(latest):
                    self._checked.add(key)
                    continue
                survivor = keep_checkpoints(trial, _exists)
            except OSError as exc:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("trial %s: storage unreachable, checkpoint unchecked: %s", trial, why)
                continue
            self._checked.add(key)
            log.warning(
                "trial %s: its last checkpoint %s was deleted after the driver's last "
                "saved state; resuming from %s",
                trial,
                latest.path,
                "step 0" if survivor is None else survivor.path,
            )
