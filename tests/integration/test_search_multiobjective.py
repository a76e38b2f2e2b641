"""A two-objective search on tiny data, run as a user runs it (the ``ablate`` CLI in a fresh
folder): Optuna's study has both directions, every trial runs to the end, the confirm grid
pairs the best with the row's defaults, and the dashboard shows the Pareto front."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.study import StudyDirection
from optuna.trial import TrialState

from ablate import tracking
from tests.paths import REPO

LOSS_WEIGHTS = REPO / "search_spaces" / "loss_weights.yaml"
pytestmark = pytest.mark.slow


def ablate(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ablate", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ablate search`` on psnr (max) and sd (min): 3 trials, then 2 confirm seeds."""
    folder = tmp_path_factory.mktemp("mo-search")
    done = ablate(
        "search",
        str(LOSS_WEIGHTS),
        "search.metric=[psnr, sd]",
        "search.mode=[max, min]",
        "search.num_samples=3",
        "train.steps=20",
        "train.eval_every=10",
        "--confirm-seeds",
        "2",
        cwd=folder,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "best by validation psnr (the first of 2 objectives" in done.stdout
    return folder


def _parent(folder: Path) -> object:
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("loss-weights")
    (parent,) = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{tracking.TAG_KIND}` = 'search'"
    )
    return parent


def test_the_study_has_both_directions_and_no_pruned_trial(searched: Path) -> None:
    tags = _parent(searched).data.tags
    assert tags[tracking.TAG_SEARCH_OBJECTIVES] == "val_psnr:max,val_sd:min"
    study = optuna.load_study(
        study_name=tags[tracking.TAG_OPTUNA_STUDY], storage=tags[tracking.TAG_OPTUNA_STORAGE]
    )
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert all(len(t.values) == 2 and t.values[1] > 0 for t in study.trials)  # val_sd: K samples
    assert study.best_trials  # a Pareto front


def test_table_and_dashboard_show_the_front_and_the_confirm_grid(searched: Path) -> None:
    table = ablate("table", "loss-weights", cwd=searched, timeout=300)
    assert table.returncode == 0, table.stderr
    out = table.stdout
    assert "Objectives: val PSNR (max), val SD (min)" in " ".join(out.split())
    assert "Pareto" in out and "✓" in out
    assert "full_best" in out and "full_defaults" in out and "2 seeds" in out
    assert "None" not in out

    dash = ablate("dashboard", "loss-weights", cwd=searched, timeout=300)
    assert dash.returncode == 0, dash.stderr
    page = (searched / "runs" / "dashboards" / "loss-weights" / "index.html").read_text()
    assert "Pareto front of the completed trials (val PSNR ↑, val SD ↓)" in page
    assert "loss-weights: search dashboard" in page
    assert re.search(r"Parameter importance \(PED-ANOVA\)", page)


def test_export_asks_which_objective_ranks(searched: Path) -> None:
    refused = ablate("export", "loss-weights", cwd=searched, timeout=300)
    assert refused.returncode == 2
    said = " ".join((refused.stdout + refused.stderr).split())
    assert "multi-objective search (psnr (max), sd (min))" in said and "--metric" in said
