"""The Ray Tune function trainable: one trial = one row x seed (x grid point / search sample).

train -> (periodic validation + checkpoint, reported to Tune for ASHA) -> test evaluation
-> MLflow. A restarted trial (retry after a crash, ``ablate resume``) restores model,
optimisers, step and RNG states from its last checkpoint and keeps logging into the same
MLflow child run.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from ray import tune

from ablate import mlflow_ui, tracking
from ablate.config import TrialConfig, flatten, parse_experiment
from ablate.errors import UserError
from ablate.evaluation import evaluate_method, write_evaluation_artifacts
from ablate.seeding import capture_rng, restore_rng, seed_everything
from ablate.training import TrainingRun
from ablate.trials import trial_config

CHECKPOINT_FILE = "state.pt"


class TrialFailed(UserError):
    """A trial stopped for a reason the user must see (NaN loss, bad data for the row...)."""


@dataclass(frozen=True)
class LaunchContext:
    """What every trial of one launch shares; created by the driver (``ablate.experiment``)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    dataset_root: str
    cache_dir: str
    kind: str  # "launch" (a grid) or "search"

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def _run_name(trial: TrialConfig, trial_id: str, searched: bool) -> str:
    """``<row>-s<seed>``; search samples share row and seed, so they add the trial id."""
    name = f"{trial.row_name}-s{trial.seed}"
    return f"{name}-{trial_id}" if searched else name


def trial_params(trial: TrialConfig) -> dict[str, Any]:
    """A trial's MLflow params: ``row``, ``seed`` and every setting as a dotted key."""
    params: dict[str, Any] = {"row": trial.row_name, "seed": trial.seed}
    params.update(flatten(trial.model_dump(mode="json", exclude={"row_name", "seed"})))
    return params


def _load_checkpoint() -> dict[str, Any] | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True, map_location="cpu")


def _report(metrics: dict[str, float], state: dict[str, Any], trial: TrialConfig) -> None:
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / CHECKPOINT_FILE)
        (Path(folder) / "config.yaml").write_text(yaml.safe_dump(trial.model_dump(mode="json")))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def train_trial(
    config: dict[str, Any], context: dict[str, str], experiment: dict[str, Any]
) -> None:
    """Ray Tune entry point. ``config`` is the trial's point of the launch's param space
    (``row``, ``seed`` and dotted settings), ``context`` a :class:`LaunchContext` as a dict,
    ``experiment`` the launch's experiment config."""
    ctx = LaunchContext(**context)
    trial = trial_config(parse_experiment(experiment, "launch record"), config)
    saved = _load_checkpoint()
    trial_id = tune.get_context().get_trial_id()
    run_id, created = tracking.find_or_start_child(
        ctx.tracking_uri,
        ctx.experiment_id,
        ctx.parent_run_id,
        trial_id,
        run_name=_run_name(trial, trial_id, searched=ctx.kind == "search"),
        tags={
            tracking.TAG_ROW: trial.row_name,
            tracking.TAG_SEED: str(trial.seed),
            **mlflow_ui.inherited_tags(ctx.tracking_uri, ctx.parent_run_id),
        },
    )
    if created:
        tracking.log_params(ctx.tracking_uri, run_id, trial_params(trial))
        mlflow_ui.log_dataset(ctx.tracking_uri, run_id, trial.data, Path(ctx.dataset_root))
    # a restarted trial replays the steps after its last checkpoint: log each (metric, step)
    # once, skipping what its run already holds
    logged = {} if created else tracking.logged_steps(ctx.tracking_uri, run_id)
    try:
        _run(trial, ctx, run_id, saved, logged)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, UserError):
            reason = f"{type(exc).__name__}: {reason}"
        tracking.finish_run(ctx.tracking_uri, run_id, "failed", reason)
        raise


def _unlogged(metrics: dict[str, float], step: int, logged: dict[str, int]) -> dict[str, float]:
    """``metrics`` at ``step`` less those the run already holds at or after ``step``."""
    return {k: v for k, v in metrics.items() if step > logged.get(k, -1)}


def _run(
    trial: TrialConfig,
    ctx: LaunchContext,
    run_id: str,
    saved: dict | None,
    logged: dict[str, int],
) -> None:
    seed_everything(trial.seed)
    torch.set_num_threads(trial.train.num_threads)
    run = TrainingRun.build(trial, Path(ctx.dataset_root), Path(ctx.cache_dir))
    train_s = 0.0  # pure training time (no evaluation), carried across restarts
    if saved is not None:
        run.load_state(saved)
        restore_rng(saved["rng"])
        train_s = float(saved["train_s"])

    def checkpoint_state() -> dict[str, Any]:
        return {**run.state(), "rng": capture_rng(), "mlflow_run_id": run_id, "train_s": train_s}

    train = trial.train
    evals = list(range(train.eval_every, train.steps, train.eval_every)) if train.eval_every else []
    session_s, session_steps = 0.0, 0
    while run.step < train.steps:
        target = next((s for s in evals if s > run.step), train.steps)
        started, first = time.perf_counter(), run.step
        history = run.train_until(target)
        elapsed = time.perf_counter() - started
        train_s, session_s, session_steps = (
            train_s + elapsed,
            session_s + elapsed,
            session_steps + run.step - first,
        )
        history = [(step, _unlogged(values, step, logged)) for step, values in history]
        tracking.log_metric_history(ctx.tracking_uri, run_id, history)
        if run.step < train.steps:
            val = evaluate_method(run.eval_method, run.data("val"), trial, samples=1)
            val_metrics = {f"val_{k}": v for k, v in val.summary.items()}
            fresh = _unlogged(val_metrics, run.step, logged)
            tracking.log_metrics(ctx.tracking_uri, run_id, fresh, step=run.step)
            _report({**val_metrics, "step": run.step, "final": 0}, checkpoint_state(), trial)

    val = evaluate_method(run.eval_method, run.data("val"), trial, samples=1)
    test = evaluate_method(
        run.eval_method, run.data("test"), trial, samples=trial.diffusion.ams_samples
    )
    final = {f"val_{k}": v for k, v in val.summary.items()}
    final.update(test.summary)
    final.update(run.complexity())
    final["train_s"] = train_s
    if session_steps:
        final["train_it_per_s"] = session_steps / max(session_s, 1e-9)
    final = {k: v for k, v in final.items() if math.isfinite(v)}
    tracking.log_metrics(ctx.tracking_uri, run_id, _unlogged(final, run.step, logged), run.step)
    with tempfile.TemporaryDirectory() as folder:
        write_evaluation_artifacts(test, Path(folder))
        run.export_weights(Path(folder) / "checkpoint")
        tracking.log_artifacts(ctx.tracking_uri, run_id, Path(folder))
    mlflow_ui.log_sample_images(ctx.tracking_uri, run_id, test.images, step=run.step)
    tracking.finish_run(ctx.tracking_uri, run_id, "completed")
    _report({**final, "step": run.step, "final": 1}, checkpoint_state(), trial)
