"""An experiment as the command line sets it: the YAML, its dotted ``key=value`` overrides and
the shorthands (``--seeds``, ``--resources``, ``--steps``, ``--folds``, ``--rows``), checked
before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ablate.errors import UserError


def _parse_resources(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in ("cpu", "gpu") or not value:
            raise UserError(f"--resources '{text}': use e.g. cpu=1,gpu=0.25")
        try:
            out[f"resources.{key.strip()}"] = float(value)
        except ValueError:
            raise UserError(f"--resources '{text}': '{value}' is not a number") from None
    return out


def experiment_with_settings(
    space: Path,
    assignments: list[str] | None,
    *,
    rows: str | None = None,
    seeds: int | None = None,
    resources: str | None = None,
    steps: int | None = None,
    design: dict[str, Any] | None = None,
    folds: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The experiment of ``space`` with the command line's settings applied, and those
    settings as dotted overrides (recorded with the launch). ``--seeds``, ``--resources``
    and ``--steps`` are shorthands for ``seeds=``, ``resources.*=`` and ``train.steps=``;
    ``--folds 1,3`` runs those folds of ``data.folds`` (``run_folds=``);
    ``--rows`` keeps the named rows; ``design.*=`` (and ``design``) replace keys of the YAML's
    ``design:`` before its rows are generated. Everything is checked here, before anything
    starts."""
    from ablate.config import ExperimentConfig, check_row_names, load_experiment
    from ablate.data.folds import check_folds
    from ablate.overrides import apply_overrides, parse_assignments
    from ablate.trials import select_rows

    overrides = parse_assignments(assignments or [])
    if seeds is not None:
        if seeds < 1:
            raise UserError("--seeds must be at least 1")
        overrides["seeds"] = list(range(seeds))
    overrides.update(_parse_resources(resources))
    if folds is not None:
        overrides["run_folds"] = _parse_folds(folds)
    if steps is not None:
        overrides["train.steps"] = steps
    # design.* keys change which rows the YAML generates: applied where it is read
    keys = {k.removeprefix("design."): v for k, v in overrides.items() if k.startswith("design.")}
    settings = {k: v for k, v in overrides.items() if not k.startswith("design.")}
    loaded = load_experiment(space, design={**keys, **(design or {})} or None)
    exp = apply_overrides(ExperimentConfig, loaded, settings, "command line")
    check_row_names(exp, "command line")
    check_folds(exp.data)
    if rows is not None:
        exp = select_rows(exp, [name.strip() for name in rows.split(",") if name.strip()])
    return exp, overrides


def _parse_folds(text: str) -> list[int]:
    """``--folds 1,3``: fold numbers (0-based, like seeds)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--folds '{text}': name fold numbers, e.g. --folds 0,2") from None
