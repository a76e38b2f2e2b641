"""Main effects and two-way interactions of a factorial or fractional design, per metric.

The design's rows are on/off combinations of factors (``ablate.designs``). Within each block of
one training seed and one test subject, the rows' values are fitted by least squares::

    y[r] = b0 + sum_i b_i x[r, i] + sum_{i<j} b_ij x[r, i] x[r, j]      x = -1/2 (off), +1/2 (on)

With this coding ``b_i`` is the factor's main effect, the change from switching it on averaged
over the other factors (in the metric's units), and ``b_ij`` the interaction, how much the
effect of one factor changes when the other is on. Three-factor and higher interactions are
assumed absent. The seed and the subject are blocks: whatever a seed or a subject adds to every
row falls into ``b0`` and cancels from each effect, and the estimate is the same as statsmodels'
OLS of ``value ~ C(seed) + C(subject) + terms`` on complete data
(``tests/unit/core/test_designs.py`` checks that). The CI is not OLS's: its residual pools what
a seed does to one row but not another with per-subject noise and counts every subject of every
seed as a replicate, the slice-as-replicate error one level up. Each effect is a contrast of
the rows (a row of the design matrix's pseudo-inverse), so its block values ``b[s, j]`` go
through the same crossed seed x subject estimator as every contrast of the table
(``ablate.analysis.estimates``), and the effects x metrics are one family for the correction.

A term the rows cannot separate from the terms before it (main effects first, then
interactions in order) is not estimated: the notes say which terms it is aliased with on
these rows. In a resolution-IV fraction each two-factor interaction is aliased with another
(the first one's estimate holds both); a switch that needs another (``contrastive`` without
``irm``) leaves their interaction inseparable from the switch's main effect, which is then
its effect where it can be switched on.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ablate.analysis import estimates
from ablate.analysis.cells import metric_cells, paired_cube
from ablate.analysis.estimates import Correction, Tested

#: How captions name the model (one owner for the words).
MODEL = (
    "least-squares fit of main effects and two-way interactions (levels coded ±1/2) within "
    "each seed × test subject block; CIs and p from the crossed seed × subject estimator"
)
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Layout:
    """The design the effects are of: each row's factor levels (True: on), the design's kind
    and a fraction's nominal alias structure (``ablate.designs.Design``)."""

    factors: list[str]
    levels: dict[str, dict[str, bool]]
    kind: str = "factorial"
    aliases: list[str] = field(default_factory=list)


@dataclass
class FactorEffect(Tested):
    """One term (``nas`` or ``irm:nas``) on one metric; ``effect`` None when untested."""

    term: str
    metric: str
    n_rows: int = 0

    @property
    def kind(self) -> str:
        return "interaction" if ":" in self.term else "main effect"


@dataclass
class Factorial:
    layout: Layout
    effects: list[FactorEffect]
    #: One line per term the rows cannot separate (metric-independent when every metric has
    #: the same rows), then the fraction's nominal aliases.
    notes: list[str]
    correction: Correction

    @property
    def model(self) -> str:
        return MODEL


def terms(factors: Sequence[str]) -> list[tuple[str, ...]]:
    """The model's terms: main effects in the factors' order, then two-way interactions."""
    return [(f,) for f in factors] + list(itertools.combinations(factors, 2))


def term_name(term: tuple[str, ...]) -> str:
    return ":".join(term)


def model_matrix(
    levels: Mapping[str, Mapping[str, bool]], rows: Sequence[str], model: Sequence[tuple[str, ...]]
) -> np.ndarray:
    """``[rows, 1 + terms]``: the intercept, then each term's ±1/2-coded column."""
    x = {r: {f: 0.5 if on else -0.5 for f, on in levels[r].items()} for r in rows}
    cols = [np.ones(len(rows))]
    cols += [np.array([np.prod([x[r][f] for f in t]) for r in rows]) for t in model]
    return np.column_stack(cols)


def separable(
    matrix: np.ndarray, names: Sequence[str]
) -> tuple[list[int], dict[int, list[tuple[str, float]]]]:
    """The columns kept (greedily, in order, each independent of those before it; column 0 is
    the intercept) and, for each other column, the kept columns it is a combination of."""
    kept = [0]
    aliased: dict[int, list[tuple[str, float]]] = {}
    for j in range(1, matrix.shape[1]):
        base = matrix[:, kept]
        coef, *_ = np.linalg.lstsq(base, matrix[:, j], rcond=None)
        if np.abs(base @ coef - matrix[:, j]).max() > _TOLERANCE:
            kept.append(j)
        else:
            aliased[j] = [
                (["intercept", *names][k], float(c))
                for k, c in zip(kept, coef, strict=True)
                if abs(c) > _TOLERANCE
            ]
    return kept, aliased


def alias_lines(layout: Layout, rows: Sequence[str]) -> list[str]:
    """What the rows cannot separate, one line per term (empty for a full factorial)."""
    model = terms(layout.factors)
    names = [term_name(t) for t in model]
    _, aliased = separable(model_matrix(layout.levels, rows, model), names)
    out = []
    for j, combo in aliased.items():
        name = names[j - 1]
        if len(combo) == 1 and combo[0][0] != "intercept":
            other, c = combo[0]
            scale = "" if abs(abs(c) - 1) < 1e-6 else f"{abs(c):g}·"
            sign = "+" if c > 0 else "−"
            out.append(
                f"{name} is aliased with {other} on these rows: the {other} estimate is "
                f"{other} {sign} {scale}{name}"
            )
        elif [n for n, _ in combo] == ["intercept"]:
            out.append(f"{name}: not estimated, the same on every one of these rows")
        else:
            parts = ", ".join(n for n, _ in combo)
            out.append(f"{name}: not estimated, a combination of {parts} on these rows")
    return out


def term_weights(layout: Layout, rows: Sequence[str]) -> dict[str, dict[str, float]]:
    """Each separable term's estimate as a contrast of ``rows`` (a row of the pseudo-inverse
    of the model matrix): term -> row -> weight."""
    model = terms(layout.factors)
    names = [term_name(t) for t in model]
    matrix = model_matrix(layout.levels, rows, model)
    kept, _ = separable(matrix, names)
    solve = np.linalg.pinv(matrix[:, kept])
    return {
        names[j - 1]: dict(zip(rows, map(float, solve[i + 1]), strict=True))
        for i, j in enumerate(kept[1:])
    }


def _fit(
    frame: pd.DataFrame, layout: Layout, metric: str, model: Sequence[tuple[str, ...]]
) -> list[FactorEffect]:
    names = [term_name(t) for t in model]
    rows = [r for r in layout.levels if r in set(frame["row"])]
    out = [FactorEffect(n, metric) for n in names]
    cells, over = metric_cells(frame, metric, rows)
    rows = [r for r in rows if r in set(cells["row"])]
    for e in out:
        e.over, e.n_rows = over, len(rows)
    if not rows:
        for e in out:
            e.note = f"no completed trial of the design's rows logged '{metric}'"
        return out
    cube = paired_cube(cells, rows)
    matrix = model_matrix(layout.levels, rows, model)
    kept, aliased = separable(matrix, names)
    for j in aliased:
        out[j - 1].note = "not separable on these rows (see the notes)"
    n_seeds, n_subjects = cube.shape[1], cube.shape[2]
    for e in out:
        e.n_seeds, e.n_subjects = n_seeds, n_subjects
    if n_seeds < 2:
        for j in kept[1:]:
            out[j - 1].note = f"fewer than 2 paired seeds ({n_seeds}): no CI or p"
        return out
    if len(kept) == 1:  # one row with data: nothing but its mean
        return out
    solve = np.linalg.pinv(matrix[:, kept])  # [kept, rows]: each coefficient, a row contrast
    blocks = np.tensordot(solve, cube, 1)[1:]  # [kept terms, seeds, subjects]
    est = estimates.crossed(blocks)
    low, high = est.interval()
    for i, j in enumerate(kept[1:]):
        e = out[j - 1]
        e.effect, e.low, e.high = float(est.effect[i]), float(low[i]), float(high[i])
        e.se, e.df, e.p = float(est.se[i]), float(est.df[i]), float(est.p[i])
    return out


def effects(
    frame: pd.DataFrame,
    layout: Layout,
    metrics: Sequence[str],
    correction: Correction = "holm",
) -> Factorial:
    """Every main effect and two-way interaction of ``layout`` on each of ``metrics`` (those a
    completed trial logged), with 95% CIs; p corrected across all of them as one family."""
    model = terms(layout.factors)
    logged = [m for m in metrics if m in frame and frame[m].notna().any()]
    found = [e for m in logged for e in _fit(frame, layout, m, model)]
    p = np.array([e.p if e.p is not None else np.nan for e in found], dtype=float)
    if len(p):
        for e, q in zip(found, estimates.adjust(p, correction), strict=True):
            e.p_adjusted = float(q) if np.isfinite(q) else None
    rows = [r for r in layout.levels if r in set(frame["row"])]
    notes = alias_lines(layout, rows) if rows else []
    if layout.aliases:
        notes.append(
            "the fraction's aliases (pyDOE3; three-factor and higher interactions assumed "
            "absent): " + "; ".join(layout.aliases)
        )
    return Factorial(layout, found, notes, correction)
