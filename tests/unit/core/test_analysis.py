"""ablate.analysis: the estimator against scipy, its calibration on synthetic studies with
known answers, verdicts on known effects, and the YAML's claims checked at load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from typer.testing import CliRunner

from ablate.analysis import analyse
from ablate.analysis.calibration import calibration_table
from ablate.analysis.estimates import crossed, holm_rejections, projected_mde, seeds_needed
from ablate.cli import app
from ablate.config import load_experiment, parse_experiment
from tests.paths import REPO

SPACES = REPO / "search_spaces"


def test_one_subject_is_the_seed_level_paired_t_test() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(25, 1, 4), rng.normal(24, 1, 4)
    est = crossed((a - b)[:, None])
    ref = stats.ttest_rel(a, b)
    assert est.p == pytest.approx(ref.pvalue, rel=1e-10)
    low, high = est.interval()
    ci = ref.confidence_interval(0.95)
    assert (low, high) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_the_interval_holds_the_seed_and_the_subject_level_tests() -> None:
    """The union: never narrower than the paired t over seeds (subject means) nor over
    subjects (seed means)."""
    rng = np.random.default_rng(4)
    d = rng.normal(0.3, 1.0, (200, 3, 5))
    low, high = crossed(d).interval()
    for axis in (-1, -2):
        means = d.mean(axis)
        n = means.shape[-1]
        half = stats.t.ppf(0.975, n - 1) * means.std(-1, ddof=1) / np.sqrt(n)
        assert np.all(high - low >= 2 * half - 1e-12)


def test_vectorised_holm_matches_statsmodels() -> None:
    p = np.random.default_rng(5).uniform(0, 0.06, (12, 5))
    expected = np.array([multipletests(row, 0.05, "holm")[0] for row in p])
    assert (holm_rejections(p) == expected).all()


def test_calibration_coverage_and_family_wise_error() -> None:
    """1000 synthetic studies per design (more than the 400 asked, so the Monte-Carlo error of
    a 5% rate is 0.7%, not 1.1%): the platform's CIs cover, Holm holds the FWER; the slice
    t-test does neither."""
    table = calibration_table(studies=1000)
    print("\nseeds subjects coverage FWER | slice t-test: coverage FWER")
    for r in table:
        print(
            f"{r['seeds']:5d} {r['subjects']:8d} {r['coverage']:8.1%} {r['fwer']:5.1%} | "
            f"{r['slice_coverage']:8.1%} {r['slice_fwer']:5.1%}"
        )
    assert [(r["seeds"], r["subjects"]) for r in table] == [(3, 4), (3, 20), (5, 4), (5, 20)]
    for r in table:
        assert 0.93 <= r["coverage"] <= 0.97, r
        assert r["fwer"] <= 0.07, r
        assert r["slice_coverage"] < 0.5 and r["slice_fwer"] > 0.5, r


def test_power_agrees_with_the_interval() -> None:
    """Seeds needed is the first seed count whose projected MDE reaches the effect."""
    comps = (0.5, 0.02, 0.1)
    n = seeds_needed(0.4, *comps, n_subjects=4, alpha=0.05)
    assert n is not None and n > 3
    assert projected_mde(np.array([n]), *comps, 4, 0.05)[0] <= 0.4
    assert projected_mde(np.array([n - 1]), *comps, 4, 0.05)[0] > 0.4
    assert seeds_needed(0.01, 0.0, 5.0, 0.1, n_subjects=2, alpha=0.05) is None  # subjects bind


ROWS = ["sr3", "cpm", "full"]


def tidy(seeds: int = 3, subjects: int = 4, k: int = 3, gap: float = 3.0) -> pd.DataFrame:
    """A tidy frame with known effects: full = sr3 + ``gap`` dB, cpm = sr3; SD falls by row."""
    rng = np.random.default_rng(0)
    lines = []
    for i, row in enumerate(ROWS):
        for seed in range(seeds):
            keys = dict(experiment="e", launch="L", run_id=f"{row}{seed}", row=row, row_index=i)
            keys |= dict(label=row, seed=seed, dataset="tiny", status="completed", error="")
            keys |= dict(start_time=pd.Timestamp(0))
            psnrs = []
            for j in range(subjects):
                psnr = 24 + (gap if row == "full" else 0) + j + rng.normal(0, 0.3)
                psnrs.append(psnr)
                lines.append(keys | dict(level="subject", subject=f"sub-{j}", psnr=psnr))
                lines += [
                    keys | dict(level="sample", subject=f"sub-{j}", sample=s, psnr=psnr + e)
                    for s, e in enumerate(rng.normal(0, 0.1, k))
                ]
            sd = 0.01 - 0.002 * i + rng.normal(0, 1e-4)
            lines.append(keys | dict(level="trial", psnr=np.mean(psnrs), sd=sd))
    return pd.DataFrame(lines)


CLAIMS = [
    {"better": "full", "than": "sr3", "metric": "psnr"},
    {"better": "sr3", "than": "full", "metric": "psnr"},
    {"better": "cpm", "than": "sr3", "metric": "psnr"},
    {"trend": ROWS, "metric": "sd", "direction": "decreasing"},
]


def claims() -> list:
    raw = {"name": "x", "rows": {r: {"method": "sr3"} for r in ROWS}, "claims": CLAIMS}
    return parse_experiment(raw).claims


def test_verdicts_on_known_effects() -> None:
    result = analyse(tidy(), contrasts="additive", claims=claims())
    verdicts = [c.verdict for c in result.claims]
    assert verdicts == ["supported", "contradicted", "unresolved", "supported"]
    full = result.claims[0]
    assert full.effect.n_seeds == 3 and full.effect.n_subjects == 4
    assert full.effect.effect == pytest.approx(3.0, abs=0.3)
    assert full.paper_effect == pytest.approx(25.638 - 23.302)
    assert "MDE" in full.explanation and "seeds" in full.explanation
    sd = result.claims[3].effect
    assert sd.over == "trial means" and sd.contrast.kind == "trend"
    assert sd.effect == pytest.approx(-0.002, abs=3e-4)  # the slope per row
    # the contrasts family: Holm over every tested contrast x metric, as statsmodels does it
    p = [e.p for e in result.effects]
    assert [e.p_adjusted for e in result.effects] == pytest.approx(
        list(multipletests(p, method="holm")[1])
    )
    assert [e.contrast.name for e in result.effects] == ["cpm − sr3", "full − cpm"]
    share = result.shares[0]
    assert share.subjects > 0.8 and share.sampling is not None and share.sampling < 0.1


def test_fewer_than_two_paired_seeds_says_so() -> None:
    result = analyse(tidy(seeds=1), contrasts="reference", claims=claims())
    assert all(e.p is None and "fewer than 2 paired seeds (1)" in e.note for e in result.effects)
    assert all(c.verdict == "unresolved" for c in result.claims)
    assert "fewer than 2 paired seeds" in result.claims[0].explanation


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        ("{better: full, than: sr4, metric: psnr}", "claims[0] names row 'sr4'"),
        ("{better: full, than: sr3, metric: pnsr}", "claims[0]: unknown metric 'pnsr'"),
        ("{trend: [full], metric: sd, direction: decreasing}", "a trend needs at least 2 rows"),
    ],
)
def test_bad_claim_is_one_line_before_launch(tmp_path: Path, claim: str, message: str) -> None:
    space = tmp_path / "claims.yaml"
    rows = "  sr3: {method: sr3}\n  full: {method: coarse_to_fine}\n"
    space.write_text(f"name: x\nrows:\n{rows}claims:\n  - {claim}\n")
    result = CliRunner().invoke(app, ["run", str(space), "--workdir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "runs").exists()


def test_the_papers_claims_load() -> None:
    table2 = load_experiment(SPACES / "paper_table2.yaml")
    assert table2.analysis.contrasts == "additive" and len(table2.claims) == 3
    assert load_experiment(SPACES / "demo.yaml").claims == table2.claims
    pmdm = load_experiment(SPACES / "pmdm_table1.yaml")
    assert pmdm.analysis.contrasts == [("pmdm", "palette"), ("pmdm", "deeppet")]
