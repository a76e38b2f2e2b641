"""Optuna through Ray Tune: scheduler-stopped trials are PRUNED in the persisted study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune

from ablate.cli import standard_job
from ablate.config import parse_experiment
from ablate.launch.driver import launch_search, read_record
from ablate.launch.searcher import PruningAwareOptunaSearch
from ablate.workspace import Workspace
from tests.conftest import tiny_experiment, trial_runs


def test_unfinished_trial_is_told_pruned(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = PruningAwareOptunaSearch(
        space={"loss.k": tune.loguniform(1e-6, 1e-3)},
        metric="val_psnr",
        mode="max",
        study_name="s",
        storage=optuna.storages.RDBStorage(storage),
    )
    for trial_id in ("a", "b", "c"):
        assert searcher.suggest(trial_id)
    searcher.on_trial_complete("a", {"val_psnr": 20.0, "final": 1})
    searcher.on_trial_complete("b", {"val_psnr": 5.0, "final": 0})  # stopped by ASHA
    searcher.on_trial_complete("c", None, error=True)
    study = optuna.load_study(study_name="s", storage=storage)  # persisted, reloadable
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
    ]


@pytest.mark.slow
def test_search_records_consistent_states(ray_cluster, workdir: Path) -> None:
    raw = tiny_experiment(
        "search-it", {"full": {"method": "coarse_to_fine", "irm": True, "contrastive": True}}
    )
    raw["train"].update({"steps": 6, "eval_every": 2})
    raw["loss"] = {"negatives": 2}
    raw["search"] = {
        "row": "full",
        "num_samples": 4,
        "grace_period": 1,
        "reduction_factor": 2,
        "params": {
            "loss.k": {"type": "loguniform", "low": 1e-6, "high": 1e-3},
            "row.contrastive_form": {"type": "choice", "values": ["reference_kl", "likelihood"]},
        },
    }
    ws = Workspace.create(workdir)
    result = launch_search(parse_experiment(raw), ws, job=standard_job())
    assert result.n_trials == 4 and result.n_errors == 0

    record = read_record(ws, "search-it")
    study = optuna.load_study(study_name=record["optuna_study"], storage=record["optuna_storage"])
    states = [t.state for t in study.trials]
    assert len(states) == 4 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert TrialState.COMPLETE in states

    runs = trial_runs(ws.tracking_uri, "search-it")
    assert len(runs) == 4
    status = runs["tags.ablate.status"].value_counts().to_dict()
    assert status.get("completed", 0) == states.count(TrialState.COMPLETE)
    assert status.get("pruned", 0) == states.count(TrialState.PRUNED)
    assert set(runs["params.row.contrastive_form"]) <= {"reference_kl", "likelihood"}
    completed = runs[runs["tags.ablate.status"] == "completed"]
    assert completed["metrics.psnr"].notna().all()
