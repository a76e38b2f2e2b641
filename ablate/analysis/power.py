"""Seeds and test subjects a contrast needs, before launch, from variance measured earlier.

A contrast's values over training seeds and test subjects vary by three components
(``ablate.analysis.estimates``): the seed's (the unit of replication), the subject's and the
residual. Measured on an earlier launch (a *pilot*: its tidy frame) or on a committed record
(``benchmarks/results/pilot-demo.json``, the toy study's demo rows), they say how many seeds
detect a given effect at 80% power (:func:`ablate.analysis.estimates.seeds_needed`, the MDE of
the same union of intervals the table tests with) and how many test subjects. More test
subjects lower the seeds needed down to what the seed component alone allows (``S_inf``, with
unlimited subjects); the plan takes the fewest subjects, never fewer than the launch's, at
which the seeds needed are within :data:`WITHIN` of ``S_inf`` (the seeds on the launch's own
test subjects are shown beside it). With few subjects the subject-level interval has few
degrees of freedom, and the seeds needed there can be thousands.

A contrast whose rows the pilot ran gets the pilot's own components. Any other (a design's
new rows, a factorial's effects) gets the pilot's *per-row* components scaled by the
contrast's sum of squared weights: a row's seed x row, subject x row and residual variation,
pooled over every pair of the pilot's rows (a difference of two rows has twice a row's).
A pilot that logged trial means only (the record) has a seed component that already holds
its test set's subject variation: its seeds are counted at that test set, and more subjects
cannot be traded for seeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from ablate.analysis import estimates
from ablate.analysis.cells import metric_cells, paired_cube
from ablate.analysis.estimates import POWER

#: The most test subjects a plan considers (beyond them: "out of reach").
MOST_SUBJECTS = 10_000
#: Planned seeds are at most this factor above the fewest any number of subjects allows.
WITHIN = 1.25


@dataclass(frozen=True)
class Components:
    """Variance components of one contrast (or of one row: ``weight`` 1) and where from."""

    seed: float
    subject: float
    error: float
    n_seeds: int
    n_subjects: int
    over: str  # "subjects" or "trial means"
    source: str

    def scaled(self, factor: float, source: str) -> Components:
        return replace(
            self,
            seed=self.seed * factor,
            subject=self.subject * factor,
            error=self.error * factor,
            source=source,
        )


@dataclass(frozen=True)
class Need:
    """What one contrast needs to detect ``effect`` at ``power``: ``seeds`` on ``subjects``
    test subjects (None: out of reach below :data:`MOST_SUBJECTS`); ``at_launch``, the seeds
    on the launch's own test subjects (None: no number of seeds there)."""

    name: str
    effect: float
    components: Components
    seeds: int | None
    subjects: int
    at_launch: int | None
    alpha: float


def frame_from_record(record: Mapping[str, Any]) -> pd.DataFrame:
    """A record's per-seed trial means (``{"trials": {row: {metric: [per seed]}}}``) as the
    trial lines of a tidy frame."""
    seeds = list(record["seeds"])
    lines = []
    for index, (row, metrics) in enumerate(record["trials"].items()):
        for i, seed in enumerate(seeds):
            values = {m: v[i] for m, v in metrics.items()}
            lines.append(
                {"row": row, "row_index": index, "seed": seed, "subject": None, "level": "trial",
                 "status": "completed", **values}
            )  # fmt: skip
    return pd.DataFrame(lines)


def _of(frame: pd.DataFrame, weights: Mapping[str, float], metric: str) -> Components | None:
    """The components of one contrast on ``frame`` (None below 2 paired seeds)."""
    rows = list(weights)
    cells, over = metric_cells(frame, metric, rows)
    if cells.empty or set(cells["row"]) != set(rows):
        return None
    cube = paired_cube(cells, rows)
    if cube.shape[1] < 2:
        return None
    w = np.array([weights[r] for r in rows])
    est = estimates.crossed(np.tensordot(w, cube, 1))
    n_subjects = cube.shape[2] if over == "subjects" else 1
    return Components(
        float(est.var_seed), float(est.var_subject), float(est.var_error),
        cube.shape[1], n_subjects, over, "",
    )  # fmt: skip


def per_row(frame: pd.DataFrame, metric: str) -> Components | None:
    """A row's components, pooled over every pair of the frame's rows (half a difference's),
    or None when no pair has 2 paired seeds."""
    rows = list(dict.fromkeys(frame.sort_values("row_index", kind="stable")["row"]))
    found = [
        c
        for a, b in itertools.combinations(rows, 2)
        if (c := _of(frame, {a: 1.0, b: -1.0}, metric)) is not None
    ]
    if not found:
        return None
    mean = lambda attr: float(np.mean([getattr(c, attr) for c in found])) / 2  # noqa: E731
    return Components(
        mean("seed"),
        mean("subject"),
        mean("error"),
        min(c.n_seeds for c in found),
        min(c.n_subjects for c in found),
        found[0].over,
        f"a row's share (pooled over {len(found)} pairs)",
    )


def components(
    frame: pd.DataFrame, weights: Mapping[str, float], metric: str, row: Components | None
) -> Components | None:
    """The contrast's own components when ``frame`` ran its rows, else ``row``'s scaled by
    the contrast's sum of squared weights (None when neither)."""
    own = _of(frame, weights, metric)
    if own is not None:
        return replace(own, source="its own rows")
    if row is None:
        return None
    factor = float(sum(w * w for w in weights.values()))
    return row.scaled(factor, f"{row.source} x {factor:.3g}")


def need(
    name: str,
    effect: float,
    comps: Components,
    subjects: int,
    alpha: float,
    power: float = POWER,
) -> Need:
    """Seeds and test subjects that detect ``effect``: the fewest subjects (at least the
    launch's) whose seeds are within :data:`WITHIN` of the fewest possible (module docstring)."""
    if comps.over == "trial means":  # the seed component holds the pilot's test set
        seeds = estimates.seeds_needed(effect, comps.seed, 0.0, 0.0, 1, alpha, power)
        return Need(name, effect, comps, seeds, subjects, seeds, alpha)

    def seeds_at(n_subjects: int) -> int | None:
        return estimates.seeds_needed(
            effect, comps.seed, comps.subject, comps.error, n_subjects, alpha, power
        )

    subjects = max(subjects, 1)
    at_launch = seeds_at(subjects)
    fewest = seeds_at(MOST_SUBJECTS)
    if fewest is None:
        return Need(name, effect, comps, None, subjects, at_launch, alpha)
    enough = math.ceil(WITHIN * fewest)
    low, high = subjects, MOST_SUBJECTS  # seeds_at falls as subjects grow: bisect
    while low < high:
        mid = (low + high) // 2
        found = seeds_at(mid)
        low, high = (mid + 1, high) if found is None or found > enough else (low, mid)
    return Need(name, effect, comps, seeds_at(low), low, at_launch, alpha)
