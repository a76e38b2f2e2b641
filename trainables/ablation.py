"""The Ray Tune function trainable: one trial = one row x seed (x grid point / search sample).

train -> (periodic validation + checkpoint, reported to Tune for ASHA) -> test evaluation
-> MLflow. A restarted trial (retry after a crash, ``ablate resume``) restores model,
optimisers, step and RNG states from its last checkpoint and keeps logging into the same
MLflow child run.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from ray import tune

from ablate import mlflow_ui, run_queries, tracking
from ablate import storage as storage_mod
from ablate.config import TrialConfig, parse_experiment
from ablate.errors import UserError
from ablate.lesions import lesion_summary
from ablate.metric_names import TEST_SUBJECTS
from ablate.training.context import LaunchContext
from ablate.training.evaluation import evaluate_method, write_evaluation_artifacts
from ablate.training.progress import ProgressPoster
from ablate.training.seeding import capture_rng, restore_rng, seed_everything
from ablate.training.trial import TrainingRun
from ablate.trials import trial_config, trial_params

CHECKPOINT_FILE = "state.pt"
#: The trial artifact naming the subjects of its train, val and test splits.
SPLITS_FILE = "splits.json"
#: Seconds between a trial's progress reports to the driver (step, steps, it/s), sent at
#: ``train.log_every`` boundaries to the driver's progress board, not as Tune results.
PROGRESS_EVERY_S = 2.0
#: Seconds between flushes of the buffered loss history to MLflow between validations.
HISTORY_EVERY_S = 30.0
#: Seconds a trial waits for its object store (a checkpoint it cannot upload or restore)
#: before it fails: a shorter outage pauses the trial instead of costing one of its
#: ``max_failures`` retries (each of which would wait as long again); see
#: :func:`ablate.storage.retrying`.
STORAGE_WAIT_S = 300.0


class TrialFailed(UserError):
    """A trial stopped for a reason the user must see (NaN loss, bad data for the row...)."""


def _run_name(trial: TrialConfig, trial_id: str, searched: bool) -> str:
    """``<row>-s<seed>`` (``-f<fold>`` when cross-validated); search samples share row and
    seed, so they add the trial id."""
    name = f"{trial.row_name}-s{trial.seed}" + ("" if trial.fold is None else f"-f{trial.fold}")
    return f"{name}-{trial_id}" if searched else name


def _load_checkpoint(storage: str) -> dict[str, Any] | None:
    """The state of the trial's last checkpoint (None on a first start), downloaded from
    ``storage``, waiting out an object store's outage (:data:`STORAGE_WAIT_S`)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None

    def load() -> dict[str, Any]:
        with checkpoint.as_directory() as folder:
            path = Path(folder) / CHECKPOINT_FILE
            return torch.load(path, weights_only=True, map_location="cpu")

    return storage_mod.retrying(load, storage, "restore the trial's checkpoint", STORAGE_WAIT_S)


def _report(
    metrics: dict[str, float], state: dict[str, Any], trial: TrialConfig, storage: str
) -> None:
    """``tune.report`` with a checkpoint, uploaded to ``storage`` by Ray; a failed upload
    to an object store is tried again until :data:`STORAGE_WAIT_S` has passed (an upload
    cut midway leaves its partial ``checkpoint_*`` folder behind, unreferenced: the retry
    writes the next one)."""
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / CHECKPOINT_FILE)
        (Path(folder) / "config.yaml").write_text(yaml.safe_dump(trial.model_dump(mode="json")))
        checkpoint = tune.Checkpoint.from_directory(folder)
        storage_mod.retrying(
            lambda: tune.report(dict(metrics), checkpoint=checkpoint),
            storage,
            "upload the trial's checkpoint",
            STORAGE_WAIT_S,
        )


def train_trial(
    config: dict[str, Any], context: dict[str, Any], experiment: dict[str, Any]
) -> None:
    """Ray Tune entry point. ``config`` is the trial's point of the launch's param space
    (``row``, ``seed`` and dotted settings), ``context`` a :class:`LaunchContext` as a dict,
    ``experiment`` the launch's experiment config."""
    started = time.perf_counter()
    ctx = LaunchContext(**context)
    trial = trial_config(parse_experiment(experiment, "launch record"), config)
    saved = _load_checkpoint(ctx.storage)
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
            tracking.TAG_DATASET: ctx.dataset_name,
            tracking.TAG_DATASET_SHA256: ctx.dataset_sha256,
            **_fold_tags(trial, ctx),
            **mlflow_ui.inherited_tags(ctx.tracking_uri, ctx.parent_run_id),
        },
    )
    if created:
        tracking.log_params(ctx.tracking_uri, run_id, trial_params(trial))
        mlflow_ui.log_dataset(ctx.tracking_uri, run_id, trial.data, Path(ctx.dataset_root))
        estimate = ctx.estimate(config)
        if estimate is not None:
            tracking.log_metrics(ctx.tracking_uri, run_id, {"est_wall_s": estimate})
    # a restarted trial replays the steps after its last checkpoint: log each (metric, step)
    # once, skipping what its run already holds
    logged = {} if created else run_queries.logged_steps(ctx.tracking_uri, run_id)
    try:
        _run(trial, ctx, run_id, saved, started, logged)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, UserError):
            reason = f"{type(exc).__name__}: {reason}"
        tracking.finish_run(ctx.tracking_uri, run_id, "failed", reason)
        raise


def _fold_tags(trial: TrialConfig, ctx: LaunchContext) -> dict[str, str]:
    """A cross-validated trial's fold and its launch's fold hash; nothing otherwise."""
    if trial.fold is None:
        return {}
    return {tracking.TAG_FOLD: str(trial.fold), tracking.TAG_FOLD_HASH: ctx.fold_hash}


class _Progress:
    """When to send the driver a progress report, and the it/s since the last one."""

    def __init__(self, step: int, poster: ProgressPoster) -> None:
        self.step, self.train_s, self.sent_at = step, 0.0, None
        self.poster = poster

    def trained(self, seconds: float) -> None:
        self.train_s += seconds

    def report(self, step: int, steps: int) -> None:
        """Post step / steps / it/s to the driver's progress board (:mod:`ablate.training.progress`;
        never a Tune result: Tune results are the validations ASHA and the searcher score)
        at most every ``PROGRESS_EVERY_S``."""
        now = time.monotonic()
        if self.sent_at is not None and now - self.sent_at < PROGRESS_EVERY_S:
            return
        rate = (step - self.step) / self.train_s if self.train_s > 0 else 0.0
        self.poster.post(step, steps, rate)
        self.step, self.train_s, self.sent_at = step, 0.0, now


def _unlogged(metrics: dict[str, float], step: int, logged: dict[str, int]) -> dict[str, float]:
    """``metrics`` at ``step`` less those the run already holds at or after ``step``."""
    return {k: v for k, v in metrics.items() if step > logged.get(k, -1)}


def _run(
    trial: TrialConfig,
    ctx: LaunchContext,
    run_id: str,
    saved: dict | None,
    started: float,
    logged: dict[str, int],
) -> None:
    seed_everything(trial.seed)
    torch.set_num_threads(trial.train.num_threads)
    from ablate.data.staging import node_dataset

    dataset_root = node_dataset(
        trial.data, ctx.dataset_root, ctx.storage, ctx.dataset_sha256, ctx.dataset_staged
    )
    run = TrainingRun.build(trial, dataset_root, ctx.cache_dir, ctx.fold_hash)  # type: ignore[arg-type]
    train_s = 0.0  # pure training time (no evaluation), carried across restarts
    wall_s = 0.0  # the trial's wall time before this session, carried across restarts
    if saved is not None:
        run.load_state(saved)
        restore_rng(saved["rng"])
        train_s = float(saved["train_s"])
        wall_s = float(saved.get("wall_s", 0.0))

    def checkpoint_state() -> dict[str, Any]:
        wall = wall_s + time.perf_counter() - started
        return {
            **run.state(),
            "rng": capture_rng(),
            "mlflow_run_id": run_id,
            "train_s": train_s,
            "wall_s": wall,
        }

    train = trial.train
    evals = train.validation_steps
    session_s, session_steps = 0.0, 0
    poster = ProgressPoster(ctx.parent_run_id, tune.get_context().get_trial_id())
    progress, flushed = _Progress(run.step, poster), time.monotonic()
    while run.step < train.steps:
        target = next((s for s in evals if s > run.step), train.steps)
        history: list[tuple[int, dict[str, float]]] = []
        while run.step < target:  # one log window at a time, then maybe a progress report
            window_end = min(target, (run.step // train.log_every + 1) * train.log_every)
            t0, first = time.perf_counter(), run.step
            window = run.train_until(window_end)
            history += [(step, _unlogged(values, step, logged)) for step, values in window]
            elapsed = time.perf_counter() - t0
            train_s, session_s, session_steps = (
                train_s + elapsed,
                session_s + elapsed,
                session_steps + run.step - first,
            )
            progress.trained(elapsed)
            if run.step < target:
                progress.report(run.step, train.steps)
                if time.monotonic() - flushed >= HISTORY_EVERY_S:
                    tracking.log_metric_history(ctx.tracking_uri, run_id, history)
                    history, flushed = [], time.monotonic()
        tracking.log_metric_history(ctx.tracking_uri, run_id, history)
        if run.step < train.steps:
            val = evaluate_method(run.eval_method, run.data("val"), trial, ctx.val_samples)
            val_metrics = {f"val_{k}": v for k, v in val.summary.items()}
            fresh = _unlogged(val_metrics, run.step, logged)
            tracking.log_metrics(ctx.tracking_uri, run_id, fresh, step=run.step)
            rounds = {"val_round": evals.index(run.step) + 1, "steps": train.steps}
            metrics = {**val_metrics, **rounds, "step": run.step, "final": 0}
            _report(metrics, checkpoint_state(), trial, ctx.storage)

    val = evaluate_method(run.eval_method, run.data("val"), trial, ctx.val_samples)
    test = evaluate_method(
        run.eval_method, run.data("test"), trial, samples=trial.diffusion.ams_samples
    )
    lesion_metrics, lesion_table = lesion_summary(run.eval_method, run.data("test"))
    final = {f"val_{k}": v for k, v in val.summary.items()}
    final.update(test.summary)
    final.update(lesion_metrics)
    final.update(run.complexity())
    final["train_s"] = train_s
    # how many subjects the trial tested: the weight of its scores when a cross-validated
    # table pools the subjects of a seed's folds (dashboards.tables)
    final[TEST_SUBJECTS] = float(len(run.data("test").subjects))
    if session_steps:
        final["train_it_per_s"] = session_steps / max(session_s, 1e-9)
    final = {k: v for k, v in final.items() if math.isfinite(v)}
    tracking.log_metrics(ctx.tracking_uri, run_id, _unlogged(final, run.step, logged), run.step)
    with tempfile.TemporaryDirectory() as folder:
        write_evaluation_artifacts(test, Path(folder))
        # which subjects the trial trained, validated and tested on: with data.folds, the
        # evidence that no test subject reached training or checkpoint choice
        splits = {split: data.subjects for split, data in run.datasets.items()}
        (Path(folder) / SPLITS_FILE).write_text(json.dumps(splits, indent=1))
        if not lesion_table.empty:
            lesion_table.to_parquet(Path(folder) / "test_lesions.parquet", index=False)
        run.export_weights(Path(folder) / "checkpoint")
        tracking.log_artifacts(ctx.tracking_uri, run_id, Path(folder))
    wall = {"wall_s": wall_s + time.perf_counter() - started}
    tracking.log_metrics(ctx.tracking_uri, run_id, wall, step=run.step)
    mlflow_ui.log_sample_images(ctx.tracking_uri, run_id, test.images, step=run.step)
    tracking.finish_run(ctx.tracking_uri, run_id, "completed")
    rounds = {"val_round": len(evals) + 1, "steps": train.steps}
    _report(
        {**final, **wall, **rounds, "step": run.step, "final": 1},
        checkpoint_state(),
        trial,
        ctx.storage,
    )
