"""What a launch runs and what it reports when it ends, handed to the driver by its caller.

The driver (:mod:`ablate.launch.driver`) starts Ray Tune, keeps the launch record and ends the
MLflow runs; the trainable that runs each trial (``trainables/``) and the reports read back
from MLflow (``dashboards/``) sit in the layers above it. The caller (the CLI, a test, a
benchmark) hands both in as one :class:`Job`, the way Hydra's sweeper is handed the job it
launches, so the driver never imports them and the layers stay one-way
(``tests/test_structure.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Job:
    """The parts of a launch that live above the driver."""

    #: The Ray Tune function trainable, called per trial as
    #: ``train(config, *, context=..., experiment=...)`` (see ``trainables.ablation``).
    train: Callable[..., None]
    #: Attaches the launch's report to its parent run when the launch ends without a signal:
    #: ``attach_report(tracking_uri, experiment, parent_run_id, launch_name)``; it must never
    #: raise (a report does not decide how a launch ended).
    attach_report: Callable[[str, str, str, str], Any]
    #: The launch's analysis as the table prints it, read after each seed wave by
    #: ``--until-resolved``: ``analyse(tracking_uri, experiment, parent_run_id)``.
    analyse: Callable[[str, str, str], Any]

    @property
    def module(self) -> str:
        """The module every node must import to run a trial (checked before a launch)."""
        return self.train.__module__
