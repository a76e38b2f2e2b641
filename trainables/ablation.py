"""The Ray Tune function trainable: one trial = one row x seed (x grid point / search sample).

train -> (periodic validation + checkpoint, reported to Tune for ASHA) -> test evaluation
-> MLflow. A restarted trial (retry after a crash, ``ablate resume``) restores model,
optimisers, step and RNG states from its last checkpoint and keeps logging into the same
MLflow child run.

Every MLflow write of a trial goes through its :class:`ablate.tracking_spool.Spool`: a
tracking server that is down does not stop training, and what the trial could not send
rides in its checkpoints until the server answers.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from ray import tune

from ablate import mlflow_ui, tracking
from ablate import storage as storage_mod
from ablate.config import TrialConfig, parse_experiment
from ablate.errors import UserError
from ablate.lesions import lesion_summary
from ablate.metric_names import TEST_SUBJECTS
from ablate.tracking_spool import SPOOL_FILE, SPOOL_FOLDER, Spool, wait_for_server
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


class TrialFailed(UserError):
    """A trial stopped for a reason the user must see (NaN loss, bad data for the row...)."""


def _run_name(trial: TrialConfig, trial_id: str, searched: bool) -> str:
    """``<row>-s<seed>`` (``-f<fold>`` when cross-validated); search samples share row and
    seed, so they add the trial id."""
    name = f"{trial.row_name}-s{trial.seed}" + ("" if trial.fold is None else f"-f{trial.fold}")
    return f"{name}-{trial_id}" if searched else name


def _load_checkpoint(ctx: LaunchContext, spool_copy: Path) -> dict[str, Any] | None:
    """The state of the trial's last checkpoint (None on a first start), downloaded from
    the launch's storage, waiting out an object store's outage (``outage_wait_s``: a shorter
    outage pauses the trial instead of costing one of its ``max_failures`` retries, whose
    restart needs the store too); its tracking spool, if any, is copied into ``spool_copy``."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None

    def load() -> dict[str, Any]:
        with checkpoint.as_directory() as folder:
            for name in (SPOOL_FILE, SPOOL_FOLDER):
                source = Path(folder) / name
                if source.is_dir():
                    shutil.copytree(source, spool_copy / name, dirs_exist_ok=True)
                elif source.is_file():
                    shutil.copy2(source, spool_copy / name)
            path = Path(folder) / CHECKPOINT_FILE
            return torch.load(path, weights_only=True, map_location="cpu")

    return storage_mod.retrying(
        load, ctx.storage, "restore the trial's checkpoint", ctx.outage_wait_s
    )


def _report(
    metrics: dict[str, float],
    state: dict[str, Any],
    trial: TrialConfig,
    ctx: LaunchContext,
    spool: Spool,
) -> None:
    """``tune.report`` with a checkpoint (the state, and the tracking writes not sent yet),
    uploaded to the launch's storage by Ray; a failed upload to an object store is tried
    again until ``outage_wait_s`` has passed (an upload cut midway leaves its partial
    ``checkpoint_*`` folder behind, unreferenced: the retry writes the next one)."""
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / CHECKPOINT_FILE)
        spool.save(Path(folder))
        (Path(folder) / "config.yaml").write_text(yaml.safe_dump(trial.model_dump(mode="json")))
        checkpoint = tune.Checkpoint.from_directory(folder)
        storage_mod.retrying(
            lambda: tune.report(dict(metrics), checkpoint=checkpoint),
            ctx.storage,
            "upload the trial's checkpoint",
            ctx.outage_wait_s,
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
    with tempfile.TemporaryDirectory() as spool_copy:
        saved = _load_checkpoint(ctx, Path(spool_copy))
        spool = _open_run(config, ctx, trial, saved, Path(spool_copy))
    try:
        if saved is not None and "final_result" in saved:  # only its tracking writes were left
            _send_final(spool, saved, trial, ctx)
        else:
            _run(trial, ctx, spool, saved, started)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, UserError):
            reason = f"{type(exc).__name__}: {reason}"
        # sent now if the server answers; else the driver records the failure
        spool.finish("failed", reason)
        raise
    finally:
        spool.close()


def _open_run(
    config: dict[str, Any],
    ctx: LaunchContext,
    trial: TrialConfig,
    saved: dict[str, Any] | None,
    spool_copy: Path,
) -> Spool:
    """The spool of the trial's MLflow run. A restored trial knows its run from its
    checkpoint: it reopens it and puts the checkpoint's unsent writes first, without waiting
    for the server. A trial without a checkpoint finds or creates its run, waiting for the
    server as long as a trial's end would (``outage_wait_s``)."""
    if saved is not None and saved.get("mlflow_run_id"):
        spool = Spool(ctx.tracking_uri, str(saved["mlflow_run_id"]), new_run=False)
        spool.reopen()
        spool.load(spool_copy)
        return spool
    trial_id = tune.get_context().get_trial_id()

    def find_or_start() -> tuple[str, bool]:
        return tracking.find_or_start_child(
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

    try:
        run_id, created = wait_for_server(
            find_or_start, "start the trial's MLflow run", ctx.tracking_uri, ctx.outage_wait_s
        )
    except tracking.TrackingUnreachable as err:
        raise TrialFailed(str(err)) from None
    spool = Spool(ctx.tracking_uri, run_id, new_run=created)
    if created:
        spool.log_params(trial_params(trial))
        spool.log_dataset(
            mlflow_ui.dataset_entity(trial.data, Path(ctx.dataset_root)).to_dictionary()
        )
        estimate = ctx.estimate(config)
        if estimate is not None:
            spool.log_metrics({"est_wall_s": estimate})
    return spool


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


def _run(
    trial: TrialConfig,
    ctx: LaunchContext,
    spool: Spool,
    saved: dict | None,
    started: float,
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
            "mlflow_run_id": spool.run_id,
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
            history += window
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
                    spool.log_history(history)
                    history, flushed = [], time.monotonic()
        spool.log_history(history)
        if run.step < train.steps:
            val = evaluate_method(run.eval_method, run.data("val"), trial, ctx.val_samples)
            val_metrics = {f"val_{k}": v for k, v in val.summary.items()}
            spool.log_metrics(val_metrics, step=run.step)
            rounds = {"val_round": evals.index(run.step) + 1, "steps": train.steps}
            metrics = {**val_metrics, **rounds, "step": run.step, "final": 0}
            _report(metrics, checkpoint_state(), trial, ctx, spool)

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
    spool.log_metrics(final, run.step)
    with tempfile.TemporaryDirectory() as folder:
        write_evaluation_artifacts(test, Path(folder))
        # which subjects the trial trained, validated and tested on: with data.folds, the
        # evidence that no test subject reached training or checkpoint choice
        splits = {split: data.subjects for split, data in run.datasets.items()}
        (Path(folder) / SPLITS_FILE).write_text(json.dumps(splits, indent=1))
        if not lesion_table.empty:
            lesion_table.to_parquet(Path(folder) / "test_lesions.parquet", index=False)
        run.export_weights(Path(folder) / "checkpoint")
        spool.log_artifacts(Path(folder))
    wall = {"wall_s": wall_s + time.perf_counter() - started}
    spool.log_metrics(wall, step=run.step)
    for key, image in mlflow_ui.sample_images(test.images).items():
        spool.log_image(image, key, run.step)
    spool.finish("completed")
    rounds = {"val_round": len(evals) + 1, "steps": train.steps}
    final_result = {**final, **wall, **rounds, "step": run.step, "final": 1}
    _send_final(spool, {**checkpoint_state(), "final_result": final_result}, trial, ctx)


def _send_final(
    spool: Spool, state: dict[str, Any], trial: TrialConfig, ctx: LaunchContext
) -> None:
    """Wait for the trial's tracking writes to reach the server, then report its final
    result. Past the launch's ``outage_wait_s`` the trial fails in one line, its unsent
    writes (and the final result) in a checkpoint: a retry of the trial, or ``ablate
    resume``, restores only that and waits again. The interim report keeps the last
    validation round, so a scheduler does not take it for the trial's end."""
    final_result = dict(state["final_result"])
    if not spool.drain(ctx.outage_wait_s):
        waiting = {**final_result, "final": 0, "val_round": final_result["val_round"] - 1}
        _report(waiting, state, trial, ctx, spool)
        raise TrialFailed(
            f"the MLflow server at {ctx.tracking_uri} did not answer for "
            f"{spool.unreachable_for()}: the trial's last {len(spool.pending)} tracking writes "
            "wait in its checkpoint; a retry of the trial or `ablate resume` sends them"
        )
    done = {k: v for k, v in state.items() if k != "final_result"}
    _report(final_result, done, trial, ctx, spool)
