"""``key=value`` overrides and ``--rows`` on the command line, run as a user runs them: the
``ablate`` CLI as a subprocess in a fresh folder, no environment variable set by the test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ablate import tracking
from tests.conftest import mlflow_runs
from tests.paths import REPO

LOSS_WEIGHTS = REPO / "search_spaces" / "loss_weights.yaml"
DEMO = REPO / "search_spaces" / "demo.yaml"


def ablate(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ablate", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train.stepz=50"], "unknown key 'train.stepz': did you mean 'train.steps'?"),
        (["model.sr3.widht=8"], "did you mean 'model.sr3.width'?"),
        (["train.steps=many"], "invalid value for 'train.steps'"),
        (["rows.full.nas=perhaps"], "invalid value for 'rows.full.nas'"),
        (["rows.sr3.nas=true"], "unknown key 'rows.sr3.nas' for method 'sr3'"),
        (["train.steps"], "write it as key=value"),
        (["--rows", "cpm,fulll"], "--rows: no row 'fulll'"),
    ],
)
def test_bad_overrides_are_one_line_exit_2_and_record_nothing(
    args: list[str], needle: str, tmp_path: Path
) -> None:
    line = one_error_line(ablate("run", str(DEMO), *args, cwd=tmp_path, timeout=120))
    assert needle in line
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    assert not (tmp_path / "runs" / "ray_results").exists()


def test_a_search_parameter_on_a_missing_key_fails_before_the_search(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        LOSS_WEIGHTS.read_text().replace("loss.k: {type", "loss.kk: {type"), encoding="utf-8"
    )
    line = one_error_line(ablate("search", str(space), cwd=tmp_path, timeout=120))
    assert "search parameter 'loss.kk'" in line and "did you mean 'loss.k'" in line
    assert not (tmp_path / "runs" / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("postgresql+psycopg2://me:s3cret@db:5432/optuna", "holds a password"),
        ("not a url", "is not a database URL"),
    ],
)
def test_a_bad_study_storage_is_one_line_and_records_nothing(
    url: str, needle: str, tmp_path: Path
) -> None:
    line = one_error_line(
        ablate("search", str(LOSS_WEIGHTS), "--study-storage", url, cwd=tmp_path, timeout=120)
    )
    assert needle in line and "s3cret" not in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_search_with_overrides_then_confirm_seeds(tmp_path: Path) -> None:
    """The README's search with ``--confirm-seeds``: the best sample is re-run over 2 seeds
    as a grid whose trials carry the best values as params, typed as the config says. The
    study lives where ``--study-storage`` says, and the confirm grid reads it there."""
    study_db = tmp_path / "studies" / "loss.db"
    study_db.parent.mkdir()
    result = ablate(
        "search",
        str(LOSS_WEIGHTS),
        "search.num_samples=2",
        "train.steps=20",
        "train.eval_every=10",
        "--confirm-seeds",
        "2",
        "--study-storage",
        f"sqlite:///{study_db}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert study_db.is_file() and not (tmp_path / "runs" / "optuna.db").exists()
    assert "loss-weights-confirm: 2 trials, 0 failed" in " ".join(result.stdout.split())

    runs = mlflow_runs(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "loss-weights")
    search_parent = runs[runs["tags.ablate.kind"] == "search"].iloc[0]
    assert search_parent["params.override.train.steps"] == "20"  # recorded, as typed
    assert search_parent["params.override.search.num_samples"] == "2"
    trials = runs[runs["tags.ablate.kind"] == "trial"]
    searched = trials[trials["params.row"] == "full"]
    confirm = trials[trials["params.row"] == "full_best"]
    assert len(searched) == 2 and len(confirm) == 2
    assert sorted(confirm["params.seed"]) == ["0", "1"]
    assert (confirm["status"] == "FINISHED").all() and (trials["params.train.steps"] == "20").all()
    completed = searched[searched["tags.ablate.status"] == "completed"]  # not pruned
    best = completed.sort_values("metrics.val_psnr", ascending=False).iloc[0]
    for key in ("loss.k", "loss.m", "loss.n", "row.contrastive_form"):
        assert set(confirm[f"params.{key}"]) == {best[f"params.{key}"]}, key

    # the row's defaults over the same seeds, so the best has a paired baseline
    assert "loss-weights-defaults: 2 trials, 0 failed" in " ".join(result.stdout.split())
    defaults = trials[trials["params.row"] == "full_defaults"]
    assert sorted(defaults["params.seed"]) == ["0", "1"]
    assert set(defaults["params.loss.m"]) == {"1.0"} and set(defaults["params.loss.k"]) == {"5e-05"}
    parents = runs[runs["tags.ablate.kind"] == "launch"]
    assert set(parents[f"tags.{tracking.TAG_CONFIRMS}"]) == {search_parent["run_id"]}
    assert sorted(parents[f"tags.{tracking.TAG_CONFIRM_ROLE}"]) == ["best", "defaults"]

    # a machine without the study database: resume says so in one line, and creates none
    study_db.rename(study_db.with_suffix(".moved"))
    line = one_error_line(ablate("resume", "loss-weights", cwd=tmp_path, timeout=120))
    assert "not on this machine" in line and "--study-storage" in line
    assert not study_db.exists()
