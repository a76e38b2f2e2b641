"""What every trial of one launch shares, built by the driver and handed to each trial.

The driver (:mod:`ablate.launch.driver`) writes it into the launch record and passes it to
the trainable as a plain dict (Ray pickles it to every worker); a trial rebuilds it with
``LaunchContext(**context)``. It lives in the worker layer because the trial is what reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ablate.config import OUTAGE_WAIT_S
from ablate.trials import lookup_estimate


@dataclass(frozen=True)
class LaunchContext:
    """What every trial of one launch shares; created by the driver (``ablate.launch.driver``)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    dataset_root: str
    cache_dir: str
    kind: str  # "launch" (a grid) or "search"
    #: The launch's ``--storage``; with an object store, nodes rebuild or fetch the dataset
    #: (checked by ``dataset_sha256``; an imported one staged at ``dataset_staged``) and
    #: ``cache_dir`` is a location in the storage (see :mod:`ablate.data.staging`).
    storage: str = ""
    dataset_sha256: str = ""
    dataset_staged: str = ""
    dataset_name: str = ""  # with ``dataset_sha256``, tagged on every trial run
    #: With ``data.folds``: the hash of the dataset's frozen folds, tagged on every trial run
    #: and checked on each node (:func:`ablate.data.folds.trial_splits`).
    fold_hash: str = ""
    val_samples: int = 1  # K per validation slice: > 1 when a search optimises sd / ams_*
    #: The plan's estimated wall seconds per trial, by :func:`ablate.trials.trial_key`.
    estimates: dict[str, float] = field(default_factory=dict)
    #: The launch's ``outage_wait_s``: how long its trials and driver wait for an
    #: unreachable tracking server or object store.
    outage_wait_s: float = OUTAGE_WAIT_S

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def estimate(self, point: dict[str, Any]) -> float | None:
        return lookup_estimate(self.estimates, point)
