"""Calibration on synthetic studies with known answers: does the 95% CI cover, does Holm hold?

A synthetic study is an ablation of ``rows`` rows x ``seeds`` training seeds x ``subjects`` test
subjects x ``slices`` slices per subject, drawn from the crossed model the analysis assumes:

    y[r, s, j, l] = mu[r] + a[s] + c[r, s] + b[j] + g[r, j] + h[s, j] + k[j, l] + e[r, s, j, l]

seed (``a``) and subject (``b``) main effects, their interactions with the row (``c``, ``g``:
what does not cancel in a paired contrast), a seed x subject term, slice content shared by the
rows (``k``) and per-slice noise. The true effect of a contrast is its weighted sum of ``mu``.
Each study is analysed as the platform analyses a real one (subject means, then
:func:`ablate.analysis.estimates.crossed`) and, for comparison, by the slice-level paired
t-test that treats every slice as a replicate. Everything is vectorised over the studies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from ablate.analysis.estimates import ALPHA, crossed, holm_rejections


@dataclass(frozen=True)
class Design:
    """Standard deviations of each term of the model (in dB of PSNR, say)."""

    seed: float = 0.5
    seed_row: float = 0.8
    subject: float = 2.0
    subject_row: float = 0.3
    seed_subject: float = 0.2
    slice_content: float = 1.5
    noise: float = 0.6
    slices: int = 8


#: True row means of the non-null studies: effects of +0.4, +0.3 and +0.6 between adjacent rows.
TRUE_MEANS = (24.0, 24.4, 24.7, 25.3)


def simulate(
    n_studies: int,
    seeds: int,
    subjects: int,
    means: tuple[float, ...],
    design: Design,
    rng: np.random.Generator,
) -> np.ndarray:
    """Per-slice metrics ``[n_studies, rows, seeds, subjects, slices]``."""
    n, r, s, j, sl = n_studies, len(means), seeds, subjects, design.slices

    def draw(sd: float, *shape: int) -> np.ndarray:
        return rng.normal(0.0, sd, (n, *shape))

    y = np.asarray(means, dtype=float)[None, :, None, None, None]
    y = y + draw(design.seed, 1, s, 1, 1) + draw(design.seed_row, r, s, 1, 1)
    y = y + draw(design.subject, 1, 1, j, 1) + draw(design.subject_row, r, 1, j, 1)
    y = y + draw(design.seed_subject, 1, s, j, 1) + draw(design.slice_content, 1, 1, j, sl)
    return y + draw(design.noise, r, s, j, sl)


def _additive(y: np.ndarray) -> np.ndarray:
    """Row r+1 minus row r, as a new leading contrast axis: ``[rows - 1, n, ...]``."""
    return np.moveaxis(np.diff(y, axis=1), 1, 0)


@dataclass(frozen=True)
class Calibration:
    seeds: int
    subjects: int
    studies: int
    coverage: float  # platform method, 95% CI, over every contrast of the non-null studies
    fwer: float  # platform method + Holm, null studies: share with any rejection
    slice_coverage: float  # slice-level paired t-test
    slice_fwer: float


def calibrate(
    seeds: int,
    subjects: int,
    studies: int = 400,
    design: Design | None = None,
    rng_seed: int = 0,
) -> Calibration:
    """Coverage of the 95% CIs of the additive contrasts (true effects :data:`TRUE_MEANS`) and
    the Holm-corrected family-wise false-positive rate under null effects, for the platform's
    method and the slice-level t-test."""
    design = design or Design()
    rng = np.random.default_rng(rng_seed)
    truth = np.diff(TRUE_MEANS)[:, None]
    nulls = (TRUE_MEANS[0],) * len(TRUE_MEANS)
    results = {}
    for name, means in (("effects", TRUE_MEANS), ("null", nulls)):
        d = _additive(simulate(studies, seeds, subjects, means, design, rng))  # [C, n, S, J, L]
        est = crossed(d.mean(-1))
        lo, hi = est.interval()
        flat = d.reshape(*d.shape[:2], -1)
        m = flat.shape[-1]
        mean, se = flat.mean(-1), flat.std(-1, ddof=1) / np.sqrt(m)
        half = stats.t.ppf(0.975, m - 1) * se
        p_slice = 2 * stats.t.sf(np.abs(mean / se), m - 1)
        true = truth if name == "effects" else 0.0
        results[name] = {
            "coverage": float(((lo <= true) & (true <= hi)).mean()),
            "fwer": float(holm_rejections(est.p.T, ALPHA).any(-1).mean()),
            "slice_coverage": float((np.abs(mean - true) <= half).mean()),
            "slice_fwer": float(holm_rejections(p_slice.T, ALPHA).any(-1).mean()),
        }
    return Calibration(
        seeds,
        subjects,
        studies,
        coverage=results["effects"]["coverage"],
        fwer=results["null"]["fwer"],
        slice_coverage=results["effects"]["slice_coverage"],
        slice_fwer=results["null"]["slice_fwer"],
    )


def calibration_table(studies: int = 400, rng_seed: int = 0) -> list[dict[str, float]]:
    """:func:`calibrate` at 3 and 5 seeds x 4 and 20 test subjects, as dicts."""
    return [
        asdict(calibrate(s, j, studies, rng_seed=rng_seed + 10 * s + j))
        for s in (3, 5)
        for j in (4, 20)
    ]
