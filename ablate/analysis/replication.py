"""Which rows the next seed wave replicates, and when replication stops (issue 28, part 4).

After each wave, ``ablate run --until-resolved`` (:mod:`ablate.launch.replicate`) analyses
the launch as ``ablate table`` does (:func:`ablate.analysis.analyse`) and :func:`decide`
reads it. The *targets* are the YAML's claims and the table's contrasts on the launch's
metric. A target is

- ``resolved``: a claim or a contrast whose corrected p (Holm by default, as the table
  prints it) is below alpha / K, where K is the number of looks the launch may take (one per
  wave: :func:`planned_looks`). Stopping a target at the first look where it passes would
  otherwise spend alpha at every look (optional stopping: ``benchmarks/optional_stopping.py``
  finds 15.9% of null contrasts "resolved" over 5 looks of 2 seeds at a nominal 5%, 3.6% at
  5%/5); Bonferroni over the planned looks keeps the chance that any look resolves a null
  target at or below alpha, whatever the waves turn out to be;
- ``capped``: unresolved, but a row of it has ``max_seeds`` seeds already;
- ``futile``: unresolved, and by the MDE rule it cannot resolve within what is left: with its
  variance components as measured now, detecting its observed effect with 80% power at Holm's
  strictest level over the looks (alpha / (the family's tests x K)) needs more seeds
  (:func:`ablate.analysis.estimates.seeds_needed`, on the launch's test subjects) than the seed
  cap and the budget allow. Judged from :data:`MIN_SEEDS_TO_PROJECT` paired seeds on: with 2
  seeds a variance has 1 degree of freedom, too few to project anything from;
- ``unresolved``: the next wave replicates it.

The next wave adds the same new seeds (the next unused seed numbers) to every row of an
``unresolved`` target and to no other row: as many seeds as the first wave had, fewer where a
row would pass the cap or the wave would pass the budget. Replication stops when every target
is resolved, when none is left to replicate (each capped or futile: the reason names which),
or when the budget cannot pay one more seed of those rows. The budget is in trial-hours: the
summed wall time (``wall_s``) of the launch's finished trials; the next wave's cost is its
trials times each row's mean trial wall time so far.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from ablate.analysis import estimates
from ablate.analysis.study import Analysis, Effect, format_value

State = Literal["resolved", "unresolved", "capped", "futile"]
StopKind = Literal["resolved", "seed_cap", "mde", "budget"]
#: Paired seeds a target needs before the MDE rule may call it futile.
MIN_SEEDS_TO_PROJECT = 3


@dataclass
class Target:
    """One claim or contrast after a wave, and what the decision made of it."""

    name: str
    kind: Literal["claim", "contrast"]
    metric: str
    rows: list[str]
    state: State
    effect: float | None
    low: float | None
    high: float | None
    p_adjusted: float | None
    n_seeds: int
    seeds_needed: int | None = None
    why: str = ""


@dataclass
class Decision:
    """What follows wave ``wave``: the next wave's rows and new seeds, or why it stops."""

    wave: int
    spent_hours: float
    budget_hours: float | None
    targets: list[Target]
    next_rows: list[str] = field(default_factory=list)
    next_seeds: list[int] = field(default_factory=list)
    stop: StopKind | None = None
    reason: str = ""
    #: The corrected p a target must be below to resolve: alpha over the planned looks.
    level: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)


def _target(effect: Effect, name: str, kind: str, resolved: bool) -> Target:
    return Target(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        metric=effect.metric,
        rows=list(effect.contrast.weights),
        state="resolved" if resolved else "unresolved",
        effect=effect.effect,
        low=effect.low,
        high=effect.high,
        p_adjusted=effect.p_adjusted,
        n_seeds=effect.n_seeds,
    )


def planned_looks(max_seeds: int, wave_size: int) -> int:
    """How many waves (looks at the data) a launch may take: the first wave's ``wave_size``
    seeds, then at most ``wave_size`` more per wave up to ``max_seeds``."""
    return max(math.ceil(max_seeds / max(wave_size, 1)), 1)


def _passes(effect: Effect, level: float) -> bool:
    return effect.tested and effect.p_adjusted is not None and effect.p_adjusted < level


def targets_of(analysis: Analysis, metric: str, looks: int = 1) -> list[tuple[Target, Effect, int]]:
    """The claims and the contrasts on ``metric``, each with its effect and the size of the
    family it was corrected in (for Holm's strictest level); resolved at alpha / ``looks``."""
    level = analysis.alpha / looks
    contrast_family = sum(e.tested for e in analysis.effects)
    out = []
    for c in analysis.claims:
        target = _target(c.effect, c.text, "claim", _passes(c.effect, level))
        out.append((target, c.effect, len(analysis.claims)))
    for e in analysis.effects:
        if e.metric != metric:
            continue
        target = _target(e, e.contrast.name, "contrast", _passes(e, level))
        out.append((target, e, contrast_family))
    return out


def _seed_cost(rows: Sequence[str], hours_per_trial: Mapping[str, float]) -> float:
    """Trial-hours one more seed of ``rows`` costs (a row without a finished trial yet costs
    the mean of the others)."""
    known = [h for h in hours_per_trial.values() if h > 0]
    fallback = sum(known) / len(known) if known else 0.0
    return sum(hours_per_trial.get(r, fallback) or fallback for r in rows)


def decide(
    analysis: Analysis,
    *,
    wave: int,
    metric: str,
    seeds_by_row: Mapping[str, Sequence[int]],
    max_seeds: int,
    wave_size: int,
    spent_hours: float,
    budget_hours: float | None,
    hours_per_trial: Mapping[str, float],
) -> Decision:
    """The decision after wave ``wave`` (the module's rule). ``seeds_by_row``: the seeds each
    row has run so far, in the YAML's row order; ``hours_per_trial``: each row's mean trial
    wall time in hours."""
    left = math.inf if budget_hours is None else budget_hours - spent_hours
    looks = planned_looks(max_seeds, wave_size)
    out = Decision(wave, spent_hours, budget_hours, [], level=analysis.alpha / looks)
    for target, effect, family in targets_of(analysis, metric, looks):
        out.targets.append(target)
        if target.state == "resolved":
            continue
        counts = [len(seeds_by_row.get(r, ())) for r in target.rows]
        if max(counts) >= max_seeds:
            target.state, target.why = "capped", f"a row has the cap's {max_seeds} seeds"
            continue
        if effect.tested and effect.n_seeds >= MIN_SEEDS_TO_PROJECT:
            level = out.level / max(family, 1)
            target.seeds_needed = estimates.seeds_needed(
                effect.effect, *effect.components, max(effect.n_subjects, 1), level
            )
            cost = _seed_cost(target.rows, hours_per_trial)
            finite = cost > 0 and left < math.inf
            affordable = max(math.floor(left / cost), 0) if finite else math.inf
            reachable = min(max_seeds, effect.n_seeds + affordable)
            if target.seeds_needed is None or target.seeds_needed > reachable:
                needed = target.seeds_needed or "more than 10000"
                size = format_value(effect.metric, effect.effect, signed=True)
                target.state = "futile"
                target.why = f"its {size} needs {needed} seeds at 80% power, {reachable} reachable"
                continue
        target.why = "replicated next"
    out = _next_wave(out, seeds_by_row, max_seeds, wave_size, left, hours_per_trial)
    if out.stop is not None:
        out.reason += (
            f" (resolved: corrected p < {out.level:.3g}, alpha {analysis.alpha:g} over {looks} "
            "planned looks, Bonferroni; the table's p values are each one look's)"
        )
    return out


def _next_wave(
    out: Decision,
    seeds_by_row: Mapping[str, Sequence[int]],
    max_seeds: int,
    wave_size: int,
    left: float,
    hours_per_trial: Mapping[str, float],
) -> Decision:
    states = [t.state for t in out.targets]
    growing = [t for t in out.targets if t.state == "unresolved"]
    if all(s == "resolved" for s in states):
        out.stop = "resolved"
        out.reason = f"after wave {out.wave}, every claim and contrast resolved"
        return out
    if left <= 0:
        out.stop = "budget"
        out.reason = (
            f"after wave {out.wave}, the budget is spent: {out.spent_hours:.3g} of "
            f"{out.budget_hours:.3g} trial-hours"
        )
        return out
    if not growing:
        capped = [t.name for t in out.targets if t.state == "capped"]
        futile = [t.name for t in out.targets if t.state == "futile"]
        out.stop = "mde" if futile else "seed_cap"
        parts = [f"at the seed cap ({max_seeds}): {', '.join(capped)}"] if capped else []
        if futile:
            parts.append(
                f"cannot resolve within the cap and budget (MDE rule): {', '.join(futile)}"
            )
        out.reason = f"after wave {out.wave}, unresolved " + "; ".join(parts)
        return out
    rows = [r for r in seeds_by_row if any(r in t.rows for t in growing)]
    room = min(max_seeds - len(seeds_by_row[r]) for r in rows)
    size = min(wave_size, room)
    cost = _seed_cost(rows, hours_per_trial)
    if cost > 0 and left < math.inf:
        size = min(size, math.floor(left / cost))
    if size < 1:
        out.stop = "budget"
        out.reason = (
            f"after wave {out.wave}, the budget cannot pay another seed: {out.spent_hours:.3g} "
            f"of {out.budget_hours:.3g} trial-hours spent, one more seed of the unresolved "
            f"rows costs {cost:.3g}"
        )
        return out
    first = max(s for seeds in seeds_by_row.values() for s in seeds) + 1
    out.next_rows, out.next_seeds = rows, list(range(first, first + size))
    return out
