"""The values one contrast is computed from: each row's metric per training seed and test subject.

A contrast (``ablate.analysis.study``) or a design's effects (``ablate.analysis.factorial``)
pair the rows on the seeds and subjects they share: :func:`metric_cells` picks the lines of the
tidy frame (subject lines, else trial means), :func:`paired_cube` lays them out as
``[rows, seeds, subjects]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def metric_cells(frame: pd.DataFrame, metric: str, rows: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """``row, seed, subject, value`` of completed trials: subject lines when every trial of
    these rows logged them, else trial means (one pseudo-subject)."""
    done = frame[(frame["status"] == "completed") & frame["row"].isin(rows)]
    if metric not in done:
        return pd.DataFrame(columns=["row", "seed", "subject", "value"]), "subjects"
    subj = done[(done["level"] == "subject") & done[metric].notna()]
    trials = done[(done["level"] == "trial") & done[metric].notna()]
    have = set(zip(subj["row"], subj["seed"], strict=True))
    want = set(zip(trials["row"], trials["seed"], strict=True))
    if have and want <= have:
        use, over = subj, "subjects"
    else:
        use, over = trials.assign(subject="(trial mean)"), "trial means"
    cells = use[["row", "seed", "subject"]].assign(value=use[metric].astype(float))
    return cells.groupby(["row", "seed", "subject"], as_index=False)["value"].mean(), over


def paired_cube(cells: pd.DataFrame, rows: Sequence[str]) -> np.ndarray:
    """``[rows, seeds, subjects]`` over the seeds every row has, and the subjects every
    (row, seed) has; empty along seeds when none pair."""
    cube = cells.pivot_table(index=["seed", "subject"], columns="row", values="value")
    cube = cube.reindex(columns=list(rows))
    seeds = [s for s, block in cube.groupby(level="seed") if block.notna().all(axis=1).any()]
    cube = cube.loc[cube.index.get_level_values("seed").isin(seeds)]
    complete = cube.notna().all(axis=1).groupby(level="subject").all()
    subjects = complete[complete].index.tolist()
    cube = cube.loc[cube.index.get_level_values("subject").isin(subjects)]
    values = cube.to_numpy().T  # [rows, seeds * subjects]
    return values.reshape(len(rows), len(seeds), len(subjects))
