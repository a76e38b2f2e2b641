"""The effect of a contrast between rows, with a 95% CI and a p-value that respect the design.

An ablation measures every row on the same training seeds and the same test subjects, so a
contrast (a weighted sum over rows: ``full - sr3``, or the least-squares slope over a trend's
rows) is itself a seed x subject table ``d[s, j]``. Its sources of variation are crossed:

    d[s, j] = effect + u[s] + v[j] + e[s, j]

``u``: how the contrast changes with the training seed (the unit of replication); ``v``: how it
changes with the test subject (subject x row interaction); ``e``: what is left. Slices and AMS
samples are nested inside ``d[s, j]`` (it is a subject mean), never replicates of their own.

The estimate is the grand mean of ``d``. Its 95% CI is the union of three t-intervals, each
right in one regime: the seed-level paired t-test on subject means (``MS_seed / (S J)``, S - 1
df; exact when the contrast does not vary with the subject), the subject-level paired t-test on
seed means (``MS_subject / (S J)``, J - 1 df; exact when it does not vary with the seed), and
the crossed interval ``(MS_seed + MS_subject) / (S J)`` with Satterthwaite's df, which covers
the mixed case (it over-counts the residual once: a conservative stand-in for the
method-of-moments ``MS_seed + MS_subject - MS_error``, whose Satterthwaite df fall to 1 when
the residual dominates). The p-value is the largest of the three (an intersection-union
test), so "CI excludes 0" and "p < 0.05" always agree.

Why the union: a Satterthwaite interval alone undercovers at 3 seeds (its df jump up exactly
when a 2-df seed mean square is small by chance: 94% coverage, 10% Holm FWER at 3 seeds x 20
subjects, measured), and the seed-level t-test alone misses the subject variance (48-86%
coverage when subjects dominate). The union holds 94.5-96.5% in the calibration
(``benchmarks/calibration.py``) and is conservative (about 99%) only when per-subject noise
dominates both seed and subject effects. With one subject (or trial-level metrics only) it
*is* the seed-level paired t-test.

Why this and not a bootstrap or a mixed model: with 2-5 seeds a bootstrap over seeds has 3-125
distinct resamples and undercovers badly; statsmodels' MixedLM fits crossed effects only through
variance components, often fails to converge at these sizes and gives Wald (z) intervals with no
small-sample degrees of freedom. The moment estimator is closed-form, vectorises over thousands
of simulated studies, and its coverage is checked in ``ablate.analysis.calibration``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

Correction = Literal["holm", "bh"]

#: How captions name the method (one owner for the words).
METHOD = (
    "paired t-test on subject means with seeds and subjects as crossed random effects "
    "(union of the seed-level, subject-level and Satterthwaite intervals)"
)
CORRECTIONS = {"holm": "Holm (family-wise)", "bh": "Benjamini-Hochberg (false discovery rate)"}
ALPHA = 0.05
POWER = 0.8


@dataclass(kw_only=True)
class Tested:
    """One effect as a table shows it (a contrast's or a factorial term's, on one metric):
    estimate, 95% CI, p and its corrected p, and the replicates behind it. ``effect`` is None
    (and ``note`` says why) when it could not be tested."""

    effect: float | None = None
    low: float | None = None
    high: float | None = None
    se: float | None = None
    df: float | None = None
    p: float | None = None
    p_adjusted: float | None = None
    n_seeds: int = 0
    n_subjects: int = 0
    over: str = "subjects"  # or "trial means" where the runs logged no per-subject metrics
    note: str = ""

    @property
    def tested(self) -> bool:
        return self.p is not None


@dataclass(frozen=True)
class Estimates:
    """Arrays over any leading batch shape: one entry per contrast (or simulated study)."""

    effect: np.ndarray
    se: np.ndarray
    df: np.ndarray
    p: np.ndarray
    n_seeds: int
    n_subjects: int
    # the variance components of the contrast (seed, subject, residual), for power
    var_seed: np.ndarray
    var_subject: np.ndarray
    var_error: np.ndarray

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        half = stats.t.ppf(0.5 + level / 2, self.df) * self.se
        return self.effect - half, self.effect + half


def _t(effect: np.ndarray, var: np.ndarray, df: np.ndarray) -> tuple[np.ndarray, ...]:
    """SE, df, 95% half-width and two-sided p of ``effect`` with variance ``var``."""
    se = np.sqrt(np.maximum(var, 0.0))
    df = np.maximum(df, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = 2 * stats.t.sf(np.abs(effect / se), df)
    p = np.where(se > 0, p, np.where(effect == 0, 1.0, 0.0))
    return se, df, stats.t.ppf(0.975, df) * se, p


def crossed(d: np.ndarray) -> Estimates:
    """Estimates of the mean of ``d[..., S, J]`` (seeds x subjects), complete (no NaN).

    S >= 2 seeds are needed (the caller says so otherwise); J = 1 is the seed-level t-test."""
    d = np.asarray(d, dtype=float)
    ns, nj = d.shape[-2], d.shape[-1]
    if ns < 2:
        raise ValueError(f"a contrast needs at least 2 paired seeds, got {ns}")
    grand = d.mean(axis=(-2, -1))
    seed_means = d.mean(axis=-1)
    ms_seed = nj * ((seed_means - grand[..., None]) ** 2).sum(-1) / (ns - 1)
    n = ns * nj
    candidates = [_t(grand, ms_seed / n, np.full(grand.shape, ns - 1.0))]
    zero = np.zeros(grand.shape)
    comps = (ms_seed / nj, zero, zero)
    if nj > 1:
        subj_means = d.mean(axis=-2)
        ms_subj = ns * ((subj_means - grand[..., None]) ** 2).sum(-1) / (nj - 1)
        resid = d - seed_means[..., :, None] - subj_means[..., None, :] + grand[..., None, None]
        df_e = (ns - 1) * (nj - 1)
        ms_e = (resid**2).sum((-2, -1)) / df_e
        both = ms_seed + ms_subj
        with np.errstate(invalid="ignore", divide="ignore"):
            satt = both**2 / (ms_seed**2 / (ns - 1) + ms_subj**2 / (nj - 1))
        candidates.append(_t(grand, ms_subj / n, np.full(grand.shape, nj - 1.0)))
        candidates.append(_t(grand, both / n, np.nan_to_num(satt, nan=1.0)))
        comps = (
            np.maximum(ms_seed - ms_e, 0) / nj,
            np.maximum(ms_subj - ms_e, 0) / ns,
            ms_e,
        )
    se, df, half, p = (np.stack(parts) for parts in zip(*candidates, strict=True))
    widest = half.argmax(axis=0)[None]
    pick = lambda a: np.take_along_axis(a, widest, 0)[0]  # noqa: E731
    return Estimates(grand, pick(se), pick(df), p.max(axis=0), ns, nj, *comps)


def adjust(p: np.ndarray, correction: Correction = "holm", alpha: float = ALPHA) -> np.ndarray:
    """Corrected p-values of one family (NaN entries, untestable contrasts, stay NaN and are
    not counted in the family) along the last axis."""
    p = np.asarray(p, dtype=float)
    method = {"holm": "holm", "bh": "fdr_bh"}[correction]
    out = np.full(p.shape, np.nan)
    flat_p, flat_out = p.reshape(-1, p.shape[-1]), out.reshape(-1, p.shape[-1])
    for i, row in enumerate(flat_p):
        ok = np.isfinite(row)
        if ok.any():
            flat_out[i, ok] = multipletests(row[ok], alpha=alpha, method=method)[1]
    return flat_out.reshape(p.shape)


def holm_rejections(p: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Holm's step-down rejections along the last axis, vectorised (for simulations): the same
    decisions as ``multipletests(method='holm')``, thousands of families at once."""
    m = p.shape[-1]
    order = np.argsort(p, axis=-1)
    sorted_p = np.take_along_axis(p, order, -1)
    passes = sorted_p <= alpha / (m - np.arange(m))
    keep = np.cumprod(passes, axis=-1).astype(bool)
    out = np.zeros_like(keep)
    np.put_along_axis(out, order, keep, -1)
    return out


def mde(se: float, df: float, alpha: float, power: float = POWER) -> float:
    """The smallest true effect a two-sided t-test at ``alpha`` detects with ``power``:
    ``(t_{1-alpha/2, df} + t_{power, df}) * SE`` (the usual normal-theory approximation with
    t quantiles)."""
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def projected_mde(
    n_seeds: np.ndarray,
    var_seed: float,
    var_subject: float,
    var_error: float,
    n_subjects: int,
    alpha: float,
    power: float = POWER,
) -> np.ndarray:
    """The MDE :func:`crossed` would have at ``n_seeds`` seeds on ``n_subjects`` subjects, if
    the variance components were the measured ones: the expected mean squares put into the
    same union of three intervals (the widest wins)."""
    n, nj = np.asarray(n_seeds, dtype=float), float(n_subjects)
    ms_seed = nj * var_seed + var_error
    factor = lambda df: stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)  # noqa: E731
    out = factor(n - 1) * np.sqrt(ms_seed / (n * nj))
    if n_subjects > 1:
        ms_subj = n * var_subject + var_error
        both = ms_seed + ms_subj
        satt = both**2 / (ms_seed**2 / (n - 1) + ms_subj**2 / (nj - 1))
        out = np.maximum(out, factor(nj - 1) * np.sqrt(ms_subj / (n * nj)))
        out = np.maximum(out, factor(satt) * np.sqrt(both / (n * nj)))
    return out


def seeds_needed(
    effect: float,
    var_seed: float,
    var_subject: float,
    var_error: float,
    n_subjects: int,
    alpha: float,
    power: float = POWER,
    most: int = 10_000,
) -> int | None:
    """Seeds that detect ``effect`` with ``power`` at ``alpha`` on ``n_subjects`` test subjects
    (:func:`projected_mde`); ``None`` if even ``most`` seeds do not (the subject component
    alone is then too large: more test subjects are needed)."""
    if not np.isfinite(effect) or effect == 0:
        return None
    n = np.arange(2, most + 1)
    detect = projected_mde(n, var_seed, var_subject, var_error, n_subjects, alpha, power)
    detect = detect <= abs(effect)
    return int(n[detect.argmax()]) if detect.any() else None
