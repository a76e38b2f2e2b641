"""Power before launch and the designs side by side (issue 28): ``ablate plan --power`` and
``--compare-designs``.

Fast: the seeds a contrast needs are checked against a hand computation, the committed pilot
record against the toy study it comes from; the one CLI test plans a 2-factor design (4
distinct networks to count) in a subprocess, no Ray, no MLflow.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from ablate.analysis import power
from ablate.config import load_experiment
from ablate.planning import estimates
from tests.paths import REPO

DEMO = REPO / "search_spaces" / "demo.yaml"
RECORD = REPO / "benchmarks" / "results" / "pilot-demo.json"


def _factor(n: int) -> float:
    """(t_{0.975, n-1} + t_{0.8, n-1}) / sqrt(n): the MDE per unit SD at n replicates."""
    return (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) / np.sqrt(n)


def test_seeds_needed_match_a_hand_computation() -> None:
    """A contrast whose per-seed value has SD 1 dB, to detect 1 dB at 80% power, alpha 0.05:
    9 seeds give (2.306 + 0.889) / 3 = 1.065 dB, 10 give (2.262 + 0.883) / 3.162 = 0.995 dB."""
    assert _factor(9) == pytest.approx(1.065, abs=1e-3)
    assert _factor(10) == pytest.approx(0.9946, abs=1e-3)
    comps = power.Components(1.0, 0.0, 0.0, 3, 1, "trial means", "test")
    found = power.need("a − b", 1.0, comps, subjects=2, alpha=0.05)
    assert found.seeds == 10 and found.subjects == 2
    # half the SD (0.5 dB): 4 seeds give (3.182 + 0.978) / 2 x 0.5 = 1.04 dB, 5 give 0.83 dB
    assert power.need("a − b", 1.0, comps.scaled(0.25, ""), 2, 0.05).seeds == 5


def test_a_subject_dominated_contrast_needs_test_subjects_not_seeds() -> None:
    """All the variance is the subject's (SD 1 dB): no number of seeds detects 1 dB on the
    launch's 4 subjects; 10 subjects do (the same quantiles over subjects), with the fewest
    seeds, 2."""
    comps = power.Components(0.0, 1.0, 0.0, 3, 4, "subjects", "test")
    found = power.need("a − b", 1.0, comps, subjects=4, alpha=0.05)
    assert (found.seeds, found.subjects, found.at_launch) == (2, 10, None)
    assert power.need("a − b", 1.0, comps, subjects=9, alpha=0.05).at_launch is None
    assert power.need("a − b", 1.0, comps, subjects=10, alpha=0.05).at_launch == 2


def _pilot(seeds: int, differences: list[float]) -> pd.DataFrame:
    """Two rows' trial means whose per-seed difference is ``differences``."""
    lines = []
    for s, d in zip(range(seeds), differences, strict=True):
        for row, value in (("a", 20.0 + s + d), ("b", 20.0 + s)):
            lines.append({"row": row, "row_index": int(row == "b"), "seed": s, "subject": None,
                          "level": "trial", "status": "completed", "psnr": value})  # fmt: skip
    return pd.DataFrame(lines)


def test_a_pilots_own_rows_give_their_contrasts_variance() -> None:
    frame = _pilot(4, [0.0, 2.0, 0.0, 2.0])
    own = power.components(frame, {"a": 1.0, "b": -1.0}, "psnr", None)
    assert own is not None and own.seed == pytest.approx(np.var([0, 2, 0, 2], ddof=1))
    # rows the pilot did not run: a row's share (half a difference's) x sum of squared weights
    row = power.per_row(frame, "psnr")
    other = power.components(frame, {"x": 0.5, "y": -0.5}, "psnr", row)
    assert other.seed == pytest.approx(own.seed / 2 * 0.5)


def test_the_committed_pilot_is_the_toy_studys_demo_rows() -> None:
    record = json.loads(RECORD.read_text())
    study = json.loads((REPO / "benchmarks" / "results" / "toy_study.json").read_text())
    full_sr3 = study["claims"]["PSNR (f) - SR3 > 0"]["per_seed"]
    frame = power.frame_from_record(record)
    own = power.components(frame, {"full": 1.0, "sr3": -1.0}, "psnr", None)
    assert np.sqrt(own.seed) == pytest.approx(np.std(full_sr3, ddof=1))  # ~1.75 dB
    assert np.sqrt(own.seed) == pytest.approx(1.75, abs=0.01)
    assert power.per_row(frame, "psnr").seed == pytest.approx(0.53, abs=0.01)


def test_power_plan_costs_each_contrast_at_its_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = load_experiment(DEMO)
    launch = SimpleNamespace(
        trials=[None] * 12, gpu_hours=0.2, device="cpu", data=SimpleNamespace(test_subjects=2)
    )
    monkeypatch.setattr(estimates, "plan_launch", lambda *a, **k: launch)
    frame = power.frame_from_record(json.loads(RECORD.read_text()))
    found = estimates.power_plan(exp, frame, "record", effect=0.3)
    assert [n.name for n in found.needs][0] == "cpm − sr3"  # the demo's additive contrasts
    assert found.alpha == pytest.approx(0.05 / 5)
    by = {n.name: n for n in found.needs}
    need = by["cpm_irm_nas − cpm_irm"]
    assert need.seeds == power.need("", 0.3, need.components, 2, 0.01).seeds
    assert found.trials_per_seed * need.seeds == 6 * need.seeds  # six rows per seed


def _ablate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ablate", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _two_factor_space(tmp_path: Path, **design: Any) -> Path:
    raw = yaml.safe_load(DEMO.read_text())
    raw["rows"] = {"full": raw["rows"]["full"]}
    for key in ("analysis", "claims", "reference"):
        raw.pop(key)
    raw["design"] = {"full": "full", "factors": ["nas", "spectrum"], "kind": "factorial", **design}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow  # the CLI in subprocesses
def test_plan_compares_the_designs(tmp_path: Path) -> None:
    out = _ablate("plan", str(_two_factor_space(tmp_path)), "--compare-designs", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.strip()}
    # design, rows, trials (2 seeds), hours
    assert lines["additive"][1:3] == ["3", "6"]
    assert lines["leave-one-out"][1:3] == ["3", "6"]
    assert lines["factorial"][1:3] == ["4", "8"] and "YAML's design" in out.stdout
    assert "not possible" in " ".join(lines["fractional"])  # 2 factors: no fraction
    assert not (tmp_path / "runs").exists()


def test_power_and_compare_need_their_inputs(tmp_path: Path) -> None:
    no_effect = _ablate("plan", str(DEMO), "--power", cwd=tmp_path)
    assert no_effect.returncode == 2 and "--power needs --effect" in no_effect.stderr
    no_design = _ablate("plan", str(DEMO), "--compare-designs", cwd=tmp_path)
    assert no_design.returncode == 2 and "has no design" in no_design.stderr
    bad = _two_factor_space(tmp_path, factors=["nas", "label"])
    out = _ablate("plan", str(bad), cwd=tmp_path)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1
    assert "'label' is not a switch of method 'coarse_to_fine'" in lines[0]
