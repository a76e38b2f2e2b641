"""Live progress (issues 18, 25): trials post step / steps / it/s to the driver's progress
board between their validations (never as Tune results, which Tune's strict metric check and
ASHA would reject); the driver shows them with ETAs; ``ablate status`` shows each trial's
estimated and actual wall time."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
from ray import tune

from ablate.launch.callbacks import TrialProgress
from ablate.launch.searcher import PruningAwareOptunaSearch
from ablate.trials import trial_key


def test_the_searcher_indexes_validations_by_round(
    tmp_path: Path,
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = PruningAwareOptunaSearch(
        space={"loss.k": tune.loguniform(1e-6, 1e-3)},
        metric="val_psnr",
        mode="max",
        study_name="s",
        storage=optuna.storages.RDBStorage(storage),
    )
    assert searcher.suggest("a")
    searcher.on_trial_result("a", {"val_psnr": 17.0, "val_round": 1, "training_iteration": 4})
    searcher.on_trial_result("a", {"val_psnr": 19.0, "val_round": 2, "training_iteration": 9})
    searcher.on_trial_complete("a", {"val_psnr": 19.5, "val_round": 3, "final": 1})
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.intermediate_values == {1: 17.0, 2: 19.0} and trial.value == 19.5


@dataclass
class FakeTrial:
    trial_id: str
    config: dict[str, Any]
    status: str = "PENDING"
    last_result: dict = field(default_factory=dict)


def test_launch_eta_runs_remaining_steps_then_pending_estimates_on_the_slots() -> None:
    trials = [FakeTrial(str(i), {"row": "cpm", "seed": i}) for i in range(4)]
    estimates = {trial_key(t.config): 100.0 for t in trials}
    view = TrialProgress(total=4, estimates=estimates)
    view._ensure = lambda: _NoDisplay()  # type: ignore[method-assign]
    for t in trials[:2]:
        t.status = "RUNNING"
        view.on_trial_start(0, trials, t)
        view.on_trial_result(0, trials, t, {"step": 50, "steps": 100, "it_per_s": 2.0})
    # each running trial: 25 s left at 2 it/s; then each pending one, estimated 100 s but
    # scaled by the running trials' projected / estimated time (~25 / 100), on two slots
    eta = view.launch_eta(trials)
    assert eta is not None and 45 < eta < 55


class _NoDisplay:
    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def remove_task(self, *args: Any) -> None:
        pass


@pytest.mark.slow
def test_demo_progress_reaches_the_driver_and_status_shows_estimate_and_actual(
    tmp_path: Path,
) -> None:
    def ablate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ablate", *args], cwd=tmp_path, capture_output=True, text=True, timeout=900
        )

    run = ablate(
        "demo", "--rows", "cpm", "--seeds", "1", "--steps", "40", "train.log_every=10",
        "train.eval_every=15",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "launch ETA" in run.stderr and "1/1 done" in run.stderr
    # the driver's view got a progress post between validations (stderr is no terminal, so
    # it prints the trial's line): at a log_every step that is no validation step
    posted = re.findall(r"cpm-s0 \S+  step (\d+)/40  ([\d.]+) it/s", run.stderr)
    assert posted and all(int(s) % 10 == 0 and int(s) % 15 and float(r) > 0 for s, r in posted)
    # and every Tune result the driver's JSON logger wrote is a validation with the metric
    (results,) = (tmp_path / "runs" / "ray_results" / "demo").glob("cpm-s0-*/result.json")
    reports = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["step"] for r in reports] == [15, 30, 40]
    assert all("val_psnr" in r and "it_per_s" not in r for r in reports)
    assert reports[-1]["final"] == 1 and reports[-1]["val_round"] == 3
    status = ablate("status", "demo")
    assert status.returncode == 0, status.stderr
    line = next(x for x in status.stdout.splitlines() if "cpm-s0" in x)
    estimated, actual = (float(v) for v in re.findall(r"(\d+) s", line))
    assert estimated > 0 and actual > 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (child,) = client.search_runs(
        [client.get_experiment_by_name("demo").experiment_id], "tags.`ablate.kind` = 'trial'"
    )
    assert child.data.metrics["est_wall_s"] == pytest.approx(estimated, abs=1)
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert {"plan.trial_s", "plan.gpu_hours", "actual.trial_s", "plan.error"} <= set(
        parent.data.metrics
    )
