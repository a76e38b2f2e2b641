"""What a trial is: one row, one seed (and one fold) of an experiment, with dotted overrides.

A launch's Ray ``param_space`` holds flat dotted axes, ``row``, ``seed``, with ``data.folds``
``fold`` (:mod:`ablate.data.folds`), and any grid axis or
searched setting (``loss.k``), so Ray's trial table, the MLflow params and the dashboards all
see the same names. :func:`trial_config` turns one point of that space back into a validated
:class:`TrialConfig`, on the driver (to check every trial before anything starts) and in the
worker (to run it), through :func:`ablate.overrides.apply_overrides`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

from ablate.config import (
    SHARED_SECTIONS,
    ConfigError,
    ExperimentConfig,
    SearchParam,
    TrialConfig,
    flatten,
)
from ablate.overrides import apply_overrides, check_key

#: The axes every launch has, besides the experiment's grid axes and searched settings;
#: ``fold`` only with ``data.folds``.
ROW, SEED, FOLD = "row", "seed", "fold"


def fold_values(exp: ExperimentConfig) -> list[int]:
    """The folds a launch runs: ``run_folds`` (``--folds``), else all ``data.folds`` of
    them; none without cross-validation."""
    if exp.data.folds is None:
        return []
    return list(exp.run_folds) if exp.run_folds is not None else list(range(exp.data.folds))


def grid_axes(exp: ExperimentConfig) -> dict[str, list[Any]]:
    """The values each axis of a grid launch takes: rows, seeds, folds, then ``exp.grid``."""
    folds = fold_values(exp)
    return {
        ROW: list(exp.rows),
        SEED: list(exp.seeds),
        **({FOLD: folds} if folds else {}),
        **exp.grid,
    }


#: The key of an estimate that every sample of a search shares (their points differ).
ANY_TRIAL = "*"


def trial_key(point: Mapping[str, Any]) -> str:
    """A stable text key of a point of a launch's param space (``row``, ``seed``, grid
    axes): how the plan's per-trial estimates are found by the trials and ``ablate status``."""
    return json.dumps({k: point[k] for k in sorted(point)}, sort_keys=True, default=str)


def lookup_estimate(estimates: Mapping[str, float], point: Mapping[str, Any]) -> float | None:
    """The estimated seconds of the trial at ``point``, if the plan has one."""
    return estimates.get(trial_key(point), estimates.get(ANY_TRIAL))


def trial_config(exp: ExperimentConfig, point: Mapping[str, Any]) -> TrialConfig:
    """The trial at ``point`` of a launch's param space (``{"row": "full", "seed": 0,
    "loss.k": 3e-5}``): the row and the experiment's shared settings, then every other key
    of ``point`` as a dotted override of the trial (``row.<switch>`` addresses the row)."""
    row_name, seed, fold = point[ROW], point[SEED], point.get(FOLD)
    if (fold is None) != (exp.data.folds is None):
        raise ConfigError(
            f"row '{row_name}' seed {seed}: a trial has a fold exactly when data.folds is set"
        )
    if row_name not in exp.rows:
        raise ConfigError(f"experiment '{exp.name}' has no row '{row_name}'")
    base = {
        "experiment": exp.name,
        "row_name": row_name,
        "row": exp.rows[row_name].model_dump(mode="json"),
        "seed": seed,
        "fold": fold,
        **{section: getattr(exp, section).model_dump(mode="json") for section in SHARED_SECTIONS},
    }
    overrides = {key: value for key, value in point.items() if key not in (ROW, SEED, FOLD)}
    where = f"row '{row_name}' seed {seed}" + ("" if fold is None else f" fold {fold}")
    return apply_overrides(TrialConfig, base, overrides, where)


def expand(exp: ExperimentConfig) -> list[TrialConfig]:
    """Every trial of a grid launch (rows x seeds x grid axes), validated."""
    axes = grid_axes(exp)
    return [
        trial_config(exp, dict(zip(axes, values, strict=True)))
        for values in itertools.product(*axes.values())
    ]


def search_base(exp: ExperimentConfig) -> dict[str, Any]:
    """The fixed axes of a search: its row, the experiment's first seed and first fold (whose
    validation subjects, from its training folds, are what the search optimises)."""
    if exp.search is None:
        raise ConfigError(f"experiment '{exp.name}' has no 'search' section: add one to search")
    return {ROW: exp.search.row, SEED: exp.seeds[0], **_first_fold(exp)}


def _first_fold(exp: ExperimentConfig) -> dict[str, int]:
    folds = fold_values(exp)
    return {FOLD: folds[0]} if folds else {}


def check_search(exp: ExperimentConfig) -> TrialConfig:
    """Check every searched key and the ends of its range on the searched row, and that the
    trials validate (ASHA prunes at validations), before a search starts (not inside its
    trials); return the search's base trial."""
    base = search_base(exp)
    trial = trial_config(exp, base)
    assert exp.search is not None
    for key, param in exp.search.params.items():
        check_key(trial, key, f"search parameter '{key}'")
        for value in _representatives(param):
            trial_config(exp, {**base, key: value})
    if trial.train.eval_every == 0:
        raise ConfigError("a search needs train.eval_every > 0 so that ASHA can prune early")
    return trial


def search_trials(exp: ExperimentConfig) -> list[TrialConfig]:
    """The base trial of a search and, per searched setting, the trial at each end of its
    range (at each choice): the trials whose networks a launch checks before it starts."""
    base = search_base(exp)
    assert exp.search is not None
    trials = [trial_config(exp, base)]
    for key, param in exp.search.params.items():
        trials += [trial_config(exp, {**base, key: value}) for value in _representatives(param)]
    return trials


def _representatives(param: SearchParam) -> list[Any]:
    if param.type == "choice":
        return list(param.values or [])
    if param.type == "int":
        return [int(param.low or 0), int(param.high or 0)]
    return [param.low, param.high]


def select_rows(exp: ExperimentConfig, names: list[str]) -> ExperimentConfig:
    """``exp`` restricted to the rows ``names`` (``--rows cpm,full``), in the given order."""
    unknown = [name for name in names if name not in exp.rows]
    if unknown:
        raise ConfigError(
            f"--rows: no row '{unknown[0]}' in experiment '{exp.name}': "
            f"its rows are {', '.join(exp.rows)}"
        )
    if not names:
        raise ConfigError("--rows is empty: name at least one row, e.g. --rows cpm,full")
    return exp.model_copy(update={"rows": {name: exp.rows[name] for name in names}})


def row_trials(exp: ExperimentConfig) -> dict[str, TrialConfig]:
    """Each row's trial at the experiment's first seed, grid axes left at their base values
    (what counting and benchmarks measure)."""
    first = {SEED: exp.seeds[0], **_first_fold(exp)}
    return {name: trial_config(exp, {ROW: name, **first}) for name in exp.rows}


def trial_params(trial: TrialConfig) -> dict[str, Any]:
    """A trial's MLflow params: ``row``, ``seed``, ``fold`` (cross-validated) and every
    setting as a dotted key."""
    params: dict[str, Any] = {"row": trial.row_name, "seed": trial.seed}
    if trial.fold is not None:
        params["fold"] = trial.fold
    params.update(flatten(trial.model_dump(mode="json", exclude={"row_name", "seed", "fold"})))
    return params
