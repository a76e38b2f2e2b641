"""Issue 32: a launch and a table say what their rows differ in beyond their row switches,
and which contrasts that confounds; ``--strict`` refuses such a launch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ablate.config import flatten, load_experiment, parse_experiment
from ablate.confounds import of_experiment, row_settings
from ablate.trials import row_trials
from dashboards.tables import table_for
from tests.conftest import tiny_experiment
from tests.unit.dashboards.test_results import _log_trial, trial_metrics

#: The demo's SR3 departure, and the paper's eps + linear for the IRM rows: demo.yaml before
#: issue 32.
UNEQUAL = [
    "diffusion.sr3.prediction=v",
    "diffusion.sr3.schedule=cosine",
    "diffusion.irm.prediction=eps",
    "diffusion.irm.schedule=linear",
]


def _ablate(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ablate", *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def test_a_row_reads_its_own_familys_knobs_and_overrides() -> None:
    raw = tiny_experiment(
        "lfl",
        {
            "a": {"method": "sr3", "label": "(a) SR3"},
            "b": {"method": "coarse_to_fine", "label": "(b) CPM", "lr": 1e-3},
            "c": {"method": "coarse_to_fine", "irm": True},
        },
    )
    raw["diffusion"]["sr3"].update(prediction="v")
    trials = row_trials(parse_experiment(raw))
    settings = {n: row_settings(flatten(t.model_dump(mode="json"))) for n, t in trials.items()}
    assert settings["a"]["prediction"] == "v" and settings["c"]["prediction"] == "eps"
    assert "prediction" not in settings["b"]  # a CPM-only row has no diffusion knob
    assert settings["b"]["lr"] == "0.001" and settings["a"]["lr"] == settings["c"]["lr"]
    report = of_experiment(parse_experiment(raw))
    assert [c.message(report.labels) for c in report.confounds] == [
        "(b) vs (a): rows also differ in lr (0.001 vs 0.0001)",
        "c vs (a): rows also differ in prediction (eps vs v)",
    ]
    assert report.differing["prediction"] == {"a": "v", "c": "eps"}


@pytest.mark.slow  # three CLI processes (plan, run --dry-run, run --strict)
def test_plan_warns_about_the_demos_unequal_rows_and_strict_refuses(tmp_path: Path) -> None:
    before = _ablate(tmp_path, "plan", "demo", *UNEQUAL)
    assert before.returncode == 0, before.stderr
    warnings = [line for line in before.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 4  # (c)-(f) against the reference (a); (b) has no prediction
    assert (
        "warning: (f) vs (a): rows also differ in prediction (eps vs v), "
        "schedule (linear vs cosine)" in warnings
    )
    assert "rows differ beyond their switches in prediction: v in (a); eps in (c)" in before.stdout

    after = _ablate(tmp_path, "plan", "demo")  # demo.yaml: every diffusion row alike
    assert after.returncode == 0, after.stderr
    assert "warning" not in after.stdout and "differ" not in after.stdout

    for command in (["plan", "demo"], ["run", "demo", "--dry-run"]):
        strict = _ablate(tmp_path, *command, *UNEQUAL, "--strict")
        assert strict.returncode == 2, strict.stdout
        (line,) = strict.stderr.strip().splitlines()
        assert "(c) vs (a): rows also differ in prediction (eps vs v)" in line
        assert "(and 3 more contrast(s))" in line and "--strict" in line
    assert not (tmp_path / "runs").exists()  # refused before anything was created

    bad = _ablate(tmp_path, "plan", "demo", "diffusion.irm.prediction=w")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: command line: invalid value for 'diffusion.irm.prediction': "
        "Input should be 'eps', 'x0' or 'v'"
    ]


def _study(tmp_path: Path, irm_prediction: str) -> str:
    """A tracking store with rows (a) SR3 on v and (c) IRM on ``irm_prediction``, 2 seeds."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("lfl", artifact_location=(tmp_path / "a").as_uri())
    staging = tmp_path / "staging"
    staging.mkdir()
    parent = client.create_run(exp_id, tags={"ablate.kind": "launch"}).info.run_id
    client.log_param(parent, "rows", "sr3,cpm_irm")
    rows = {
        "sr3": {"row.method": "sr3", "row.label": "(a) SR3", "diffusion.sr3.prediction": "v"},
        "cpm_irm": {
            "row.method": "coarse_to_fine",
            "row.irm": "True",
            "row.label": "(c) +IRM",
            "diffusion.irm.prediction": irm_prediction,
        },
    }
    for row, params in rows.items():
        both = {"diffusion.sr3.prediction": "v", "diffusion.irm.prediction": irm_prediction}
        for seed in (0, 1):
            metrics = trial_metrics(row, 20.0 + seed)
            _log_trial(
                client, exp_id, parent, row, seed, staging, metrics=metrics,
                extra_params=both | params,
            )  # fmt: skip
    return uri


def test_table_caption_names_the_confounded_contrast(tmp_path: Path) -> None:
    unequal = table_for("lfl", _study(tmp_path / "unequal", "eps"))
    assert "Rows differ beyond their switches in prediction (v in (a); eps in (c))" in (
        unequal.caption
    )
    assert "Warning: (c) vs (a): rows also differ in prediction (eps vs v)." in unequal.caption
    equal = table_for("lfl", _study(tmp_path / "equal", "v"))
    assert "differ" not in equal.caption and "Warning" not in equal.caption


@pytest.mark.parametrize("space", ["paper_table2", "pmdm_table1"])
def test_the_papers_spaces_state_their_own_differences(space: str) -> None:
    """Paper 003's table at the paper's settings compares like for like (every diffusion row
    on eps + linear); paper 000's baselines keep their papers' own learning rates, which the
    plan names for each contrast with the reference row."""
    report = of_experiment(load_experiment(Path("search_spaces") / f"{space}.yaml"))
    if space == "paper_table2":
        assert report.lines() == []
    else:
        assert set(report.differing) == {"lr", "weight_decay"}
        # every row against the declared reference, pmdm (pmdm_table1.yaml's `reference:`)
        assert "warning: deeppet vs pmdm: rows also differ in lr (0.0001 vs 3e-05)" in (
            " ".join(report.lines())
        )
