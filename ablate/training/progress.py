"""The live-progress side channel: trials post step / steps / it/s to a board the driver owns.

Why not a Tune result: Ray Tune checks every result for the metric the searcher and the
scheduler expect (``val_psnr`` for ASHA), and a progress report between validations has no
such metric; a report that carried a stale or made-up metric would feed ASHA and Optuna a
value that was never measured. So Tune results are validations only, and progress goes here.

Why a Ray actor found by name: the driver creates it (``num_cpus=0``, owned by the driver,
so it goes with the driver) and every trial looks it up by a name made from the launch's
parent MLflow run id. Nothing touches a disk, so it works on a cluster with no shared disk;
and since ``ablate resume`` keeps the parent run, the resumed driver's board has the same
name, so restored trials (which look the board up again, they never carry a handle) find it.
Progress is display only: a trial that cannot reach the board trains on without it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

log = logging.getLogger(__name__)

NAMESPACE = "ablate"
#: Seconds between a trial's lookups of a board it has not found (its driver not up yet).
LOOKUP_EVERY_S = 10.0


def board_name(parent_run_id: str) -> str:
    """The board of the launch whose parent MLflow run is ``parent_run_id``."""
    return f"ablate-progress-{parent_run_id}"


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest progress of each trial: trial id -> (step, steps, it/s), and a counter
    the driver uses to take only what changed."""

    def __init__(self) -> None:
        self._latest: dict[str, dict[str, float]] = {}
        self._version = 0

    def post(self, trial_id: str, step: int, steps: int, it_per_s: float) -> None:
        self._version += 1
        self._latest[trial_id] = {
            "step": float(step),
            "steps": float(steps),
            "it_per_s": float(it_per_s),
            "version": float(self._version),
        }

    def since(self, version: int) -> tuple[int, dict[str, dict[str, float]]]:
        """The current version and every trial's progress posted after ``version``."""
        fresh = {k: v for k, v in self._latest.items() if v["version"] > version}
        return self._version, fresh


def open_board(parent_run_id: str) -> Any:
    """The driver's board for this launch (created, or the one this driver made already)."""
    return ProgressBoard.options(
        name=board_name(parent_run_id), namespace=NAMESPACE, get_if_exists=True
    ).remote()


class ProgressPoster:
    """A trial's end of the channel: looks the board up by name and posts without waiting."""

    def __init__(self, parent_run_id: str, trial_id: str) -> None:
        self.name, self.trial_id = board_name(parent_run_id), trial_id
        self._board: Any = None
        self._looked_at: float | None = None

    def _find(self) -> Any:
        now = time.monotonic()
        if self._board is None and (
            self._looked_at is None or now - self._looked_at >= LOOKUP_EVERY_S
        ):
            self._looked_at = now
            try:
                self._board = ray.get_actor(self.name, namespace=NAMESPACE)
            except ValueError:
                log.warning("no progress board %s yet: progress not shown", self.name)
        return self._board

    def post(self, step: int, steps: int, it_per_s: float) -> None:
        board = self._find()
        if board is not None:
            board.post.remote(self.trial_id, step, steps, it_per_s)
