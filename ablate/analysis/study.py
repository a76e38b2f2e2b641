"""An ablation's contrasts, claims and variance shares, from its tidy frame.

:func:`analyse` is what ``ablate table`` shows under the ablation table, and what a notebook
calls on ``ablate table NAME --format parquet``'s output::

    import pandas as pd
    from ablate.analysis import analyse
    result = analyse(pd.read_parquet("demo.parquet"), contrasts="additive")

Per contrast and metric: the effect in the metric's units with its 95% CI and p
(``ablate.analysis.estimates``: seeds and subjects as crossed sources of variation, never a
slice as a replicate), the p corrected across the table's family (every contrast x metric;
Holm by default). Claims are a family of their own; each gets a verdict at the corrected level,
its minimum detectable effect at 80% power and the seeds the paper's effect would need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from ablate import metric_names
from ablate.analysis import estimates, factorial
from ablate.analysis.cells import metric_cells, paired_cube
from ablate.analysis.estimates import ALPHA, Correction, Tested
from ablate.paper import TABLE1, TABLE2, PaperRow

Verdict = Literal["supported", "contradicted", "unresolved"]
ContrastSpec = str | Sequence[Sequence[str]]

#: Units of a metric's effect, for captions and claim texts.
UNITS = {"psnr": "dB"}
#: The metrics of the contrasts table by default (those the runs logged are kept).
DEFAULT_METRICS = ("psnr", "ssim", "nmse")


def unit(metric: str) -> str:
    base = metric.removeprefix("ams_").removeprefix("paper_")
    return UNITS.get(base, "")


def format_value(metric: str, value: float, signed: bool = False) -> str:
    """An effect (or bound) in the metric's units, with digits that show its size."""
    sign = "+" if signed else ""
    size = abs(value)
    text = f"{value:{sign}.2f}" if size >= 0.1 else f"{value:{sign}.3g}"
    return f"{text} {unit(metric)}".rstrip()


@dataclass(frozen=True)
class Contrast:
    """A weighted sum over rows: ``a - b`` (weights +1, -1), or a trend's least-squares slope
    over the rows' positions (the metric's change per step along the listed rows)."""

    name: str
    weights: dict[str, float]
    kind: Literal["difference", "trend"] = "difference"

    @property
    def key(self) -> str:
        """The contrast in an MLflow metric name (``full-sr3``, ``trend.a.b.c``)."""
        rows = list(self.weights)
        return f"{rows[0]}-{rows[1]}" if self.kind == "difference" else "trend." + ".".join(rows)


def difference(a: str, b: str) -> Contrast:
    return Contrast(f"{a} − {b}", {a: 1.0, b: -1.0})


def trend(rows: Sequence[str]) -> Contrast:
    x = np.arange(len(rows), dtype=float)
    w = (x - x.mean()) / ((x - x.mean()) ** 2).sum()
    return Contrast(f"slope over {' → '.join(rows)}", dict(zip(rows, w, strict=True)), "trend")


def contrasts_for(rows: Sequence[str], spec: ContrastSpec, reference: str | None) -> list[Contrast]:
    """The contrasts a spec names: ``additive``, ``reference`` or explicit ``[a, b]`` pairs."""
    if spec == "additive":
        return [difference(b, a) for a, b in zip(rows, rows[1:], strict=False)]
    if spec == "reference":
        ref = reference or rows[0]
        return [difference(r, ref) for r in rows if r != ref]
    if isinstance(spec, str):
        raise ValueError(f"unknown contrasts '{spec}': use additive, reference or [a, b] pairs")
    return [difference(a, b) for a, b in spec if a in rows and b in rows]


READINGS = {
    "additive": "each row against the one before it",
    "reference": "each row against the reference row",
}


@dataclass
class Effect(Tested):
    """One contrast on one metric. ``effect`` is None (and ``note`` says why) when fewer
    than 2 seeds pair."""

    contrast: Contrast
    metric: str
    components: tuple[float, float, float] = (0.0, 0.0, 0.0)  # seed, subject, error variance


@dataclass
class ClaimResult:
    text: str
    effect: Effect
    expected_sign: int
    verdict: Verdict = "unresolved"
    mde: float | None = None
    paper_effect: float | None = None
    seeds_needed: int | None = None
    explanation: str = ""


@dataclass
class Share:
    """Where a row's metric varies: shares of the variance of one subject's value."""

    row: str
    metric: str
    n_seeds: int
    n_subjects: int
    n_samples: int
    seeds: float | None
    subjects: float | None
    seed_x_subject: float | None
    sampling: float | None


@dataclass
class Analysis:
    effects: list[Effect]
    claims: list[ClaimResult]
    shares: list[Share]
    reading: str
    correction: Correction
    alpha: float = ALPHA
    notes: list[str] = field(default_factory=list)
    #: A factorial or fractional design's main effects and interactions (else None).
    factorial: factorial.Factorial | None = None

    @property
    def method(self) -> str:
        return estimates.METHOD

    @property
    def correction_name(self) -> str:
        return estimates.CORRECTIONS[self.correction]


def estimate(frame: pd.DataFrame, contrast: Contrast, metric: str) -> Effect:
    """The effect of one contrast on one metric (untested, with a note, below 2 seeds)."""
    rows = list(contrast.weights)
    cells, over = metric_cells(frame, metric, rows)
    out = Effect(contrast, metric, over=over)
    if cells.empty:
        out.note = f"no completed trial logged '{metric}'"
        return out
    cube = paired_cube(cells, rows)
    out.n_seeds, out.n_subjects = cube.shape[1], cube.shape[2]
    w = np.array([contrast.weights[r] for r in rows])
    if out.n_seeds < 2:
        out.note = f"fewer than 2 paired seeds ({out.n_seeds}): no CI or p"
        if out.n_seeds:
            out.effect = float(np.tensordot(w, cube, 1).mean())
        return out
    est = estimates.crossed(np.tensordot(w, cube, 1))
    low, high = est.interval()
    out.effect, out.low, out.high = float(est.effect), float(low), float(high)
    out.se, out.df, out.p = float(est.se), float(est.df), float(est.p)
    out.components = (float(est.var_seed), float(est.var_subject), float(est.var_error))
    return out


def _correct(effects: list[Effect], correction: Correction) -> None:
    p = np.array([e.p if e.p is not None else np.nan for e in effects], dtype=float)
    if not len(p):
        return
    for e, q in zip(effects, estimates.adjust(p, correction), strict=True):
        e.p_adjusted = float(q) if np.isfinite(q) else None


# --- claims --------------------------------------------------------------------------------


def _paper(row: str) -> PaperRow | None:
    return TABLE2.get(row) or TABLE1.get(row)


def paper_effect(contrast: Contrast, metric: str) -> float | None:
    """The contrast on the published numbers (``ablate.paper``), in the paper's convention."""
    attr = metric.replace("paper_", "")
    total = 0.0
    for row, w in contrast.weights.items():
        paper = _paper(row)
        value = getattr(paper, attr, None) if paper is not None else None
        if value is None:
            return None
        total += w * value
    return total


def _claim(claim: Any) -> tuple[str, Contrast, int]:
    """A config claim as (text, contrast, the effect's sign when the claim holds)."""
    if hasattr(claim, "better"):
        sign = 1 if metric_names.better(claim.metric) == "max" else -1
        text = f"{claim.better} better than {claim.than} in {claim.metric}"
        return text, difference(claim.better, claim.than), sign
    sign = 1 if claim.direction == "increasing" else -1
    text = f"{claim.metric} {claim.direction} over {' → '.join(claim.trend)}"
    return text, trend(claim.trend), sign


def _judge(result: ClaimResult, alpha: float, family: int) -> None:
    e = result.effect
    metric = e.metric
    level = alpha / max(family, 1)  # Holm's first step: the MDE at the strictest level
    if e.tested and e.p_adjusted is not None and e.p_adjusted < alpha:
        agrees = np.sign(e.effect) == result.expected_sign
        result.verdict = "supported" if agrees else "contradicted"
    if e.tested:
        result.mde = estimates.mde(e.se, e.df, level)
    design = f"{e.n_seeds} seeds × {e.n_subjects} test subjects"
    if e.over == "trial means":
        design = f"{e.n_seeds} seeds (trial means: no per-subject metrics)"
    if not e.tested:
        result.explanation = e.note or "untested"
        return
    parts = [f"MDE {format_value(metric, result.mde)} with {design}"]
    if result.paper_effect is not None:
        paper = format_value(metric, result.paper_effect, signed=True)
        result.seeds_needed = estimates.seeds_needed(
            result.paper_effect, *e.components, max(e.n_subjects, 1), level
        )
        if result.seeds_needed is None:
            parts.append(f"the paper's {paper} is out of reach at {e.n_subjects} subjects")
        else:
            parts.append(f"the paper's {paper} needs ≈ {result.seeds_needed} seeds")
    result.explanation = "; ".join(parts)


# --- variance shares -------------------------------------------------------------------------


def shares_for(frame: pd.DataFrame, row: str, metric: str) -> Share | None:
    """Variance components of one row's subject values (two-way ANOVA moments, truncated at
    0): training seeds, test subjects, their interaction, and AMS sampling (the variance over
    a subject's K samples, from the sample lines); None without per-subject values."""
    done = frame[(frame["status"] == "completed") & (frame["row"] == row)]
    if metric not in done:
        return None
    subj = done[(done["level"] == "subject") & done[metric].notna()]
    if subj.empty:
        return None
    grid = subj.pivot_table(index="seed", columns="subject", values=metric).dropna(axis=1)
    ns, nj = grid.shape
    if ns < 2 or nj < 2:
        return None
    y = grid.to_numpy()
    g = y.mean()
    ms_seed = nj * ((y.mean(1) - g) ** 2).sum() / (ns - 1)
    ms_subj = ns * ((y.mean(0) - g) ** 2).sum() / (nj - 1)
    resid = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + g
    ms_e = (resid**2).sum() / ((ns - 1) * (nj - 1))
    samples = done[(done["level"] == "sample") & done[metric].notna()]
    k = int(samples.groupby(["seed", "subject"])["sample"].nunique().min()) if len(samples) else 0
    sampling = samples.groupby(["seed", "subject"])[metric].var().mean() if k > 1 else 0.0
    parts = {
        "seeds": max(ms_seed - ms_e, 0.0) / nj,
        "subjects": max(ms_subj - ms_e, 0.0) / ns,
        "seed_x_subject": max(ms_e - sampling, 0.0),
        "sampling": float(sampling),
    }
    total = sum(parts.values())
    shares = {k_: (float(v / total) if total > 0 else None) for k_, v in parts.items()}
    if k <= 1:
        shares["sampling"] = None
    return Share(row, metric, ns, nj, k, **shares)


# --- the whole analysis ----------------------------------------------------------------------

#: How a cross-validated study's contrasts treat the fold (``data.folds``).
FOLD_BLOCK = (
    "cross-validated: fold is a block. Each subject is tested in one fold per seed, so its "
    "difference between rows compares models of the same seed trained on the same folds; "
    "what a fold's training subjects do to every row cancels in it. Subjects, nested in their "
    "folds, are pooled across folds as the test subjects of the seed x subject estimate."
)


def analyse(
    frame: pd.DataFrame,
    *,
    contrasts: ContrastSpec = "reference",
    reference: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    claims: Sequence[Any] = (),
    correction: Correction = "holm",
    alpha: float = ALPHA,
    layout: factorial.Layout | None = None,
) -> Analysis:
    """Contrasts x metrics (one family), claims (another), variance shares per row, and with
    a factorial or fractional ``layout`` its effects x metrics (a third family).

    ``frame`` is a tidy frame (``ablate.analysis.frame``); rows are taken in its
    ``row_index`` order. ``claims`` are ``ablate.config`` claims (``BetterClaim``,
    ``TrendClaim``). A frame of several datasets is analysed on the latest trial's."""
    notes: list[str] = []
    if "fold" in frame and frame["fold"].notna().any():
        notes.append(FOLD_BLOCK)
    datasets = frame["dataset"].dropna().unique()
    if len(datasets) > 1:
        latest = frame.sort_values("start_time", kind="stable")["dataset"].dropna().iloc[-1]
        notes.append(f"{len(datasets)} datasets in these results: contrasts are on '{latest}' only")
        frame = frame[frame["dataset"] == latest]
    rows = list(dict.fromkeys(frame.sort_values("row_index", kind="stable")["row"]))
    logged = [m for m in metrics if m in frame and frame[m].notna().any()]
    effects = [
        estimate(frame, c, m) for c in contrasts_for(rows, contrasts, reference) for m in logged
    ]
    _correct(effects, correction)
    results = []
    for claim in claims:
        text, contrast, sign = _claim(claim)
        effect = estimate(frame, contrast, claim.metric)
        paper = paper_effect(contrast, claim.metric)
        results.append(ClaimResult(text, effect, sign, paper_effect=paper))
    _correct([r.effect for r in results], correction)
    for r in results:
        _judge(r, alpha, len(results))
    shares = [s for row in rows for m in logged[:1] if (s := shares_for(frame, row, m))]
    if isinstance(contrasts, str):
        reading = f"{contrasts}: {READINGS.get(contrasts, contrasts)}"
        if contrasts == "reference":
            reading += f" ('{reference or (rows[0] if rows else '')}')"
    else:
        reading = "explicit pairs"
    design = factorial.effects(frame, layout, logged, correction) if layout is not None else None
    return Analysis(effects, results, shares, reading, correction, alpha, notes, design)
