"""The driver: turns an :class:`ExperimentConfig` into a Ray Tune experiment and runs it.

One launch = one MLflow parent run + one Ray Tune experiment under
``<storage>/<name>``. A grid is rows x seeds x grid axes, one ``tune.grid_search`` per flat
dotted axis (``row``, ``seed``, ``loss.k``...); a search is Optuna TPE (through Ray's
``OptunaSearch``) with ASHA early stopping over dotted settings of one row. Every trial is
checked on the driver before anything starts, and resolved in its worker the same way
(:mod:`ablate.trials`). ``ablate resume`` restores either from the launch record written
next to Ray's experiment state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ablate import mlflow_internals, mlflow_ui, run_queries, tracking
from ablate import storage as storage_mod
from ablate.config import ExperimentConfig, ResourcesConfig, parse_experiment
from ablate.errors import UserError
from ablate.launch import preflight
from ablate.launch.callbacks import CheckpointGuard, MlflowTrialStates, PlanVsActual, TrialProgress
from ablate.launch.interrupts import Interrupted, active_stop_signals, stoppable
from ablate.launch.interrupts import reinstall as reinstall_stop_signals
from ablate.launch.job import Job
from ablate.launch.searcher import PruningAwareOptunaSearch, optuna_distribution
from ablate.launches import LAUNCH_RECORD, read_launch_record
from ablate.shipped import shipped_space
from ablate.tracking_spool import wait_for_server
from ablate.training.context import LaunchContext
from ablate.trials import (
    FOLD,
    ROW,
    SEED,
    check_search,
    expand,
    grid_axes,
    search_base,
    search_trials,
    trial_params,
)
from ablate.workspace import Workspace

#: Run the next trial in the worker process of a finished one (Tune's ``reuse_actors``):
#: a short trial then skips importing torch, MLflow and ablate again
#: (``benchmarks/trial_overhead.py`` measures it).
REUSE_ACTORS = True
log = logging.getLogger(__name__)


@dataclass
class LaunchResult:
    """How a launch ended. ``status``: ``completed`` (every trial finished), ``failed``
    (some failed) or ``interrupted`` (stopped by signal ``signum``; ``resume_hint`` says how
    to continue it)."""

    name: str
    tracking_uri: str
    parent_run_id: str
    experiment_id: str
    n_trials: int
    n_errors: int
    wall_s: float
    status: str = "completed"
    n_completed: int = 0
    signum: int | None = None
    resume_hint: str = ""

    @property
    def exit_code(self) -> int:
        """0 when every trial finished, 1 when some failed, 128 + signal when interrupted."""
        if self.signum is not None:
            return 128 + self.signum
        return 0 if self.status == "completed" else 1


_EMBEDDED: list[bool] = []  # set while this process runs an embedded Ray it started


def start_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (``auto``, ``HOST:PORT``, ``ray://...``) or start an embedded one
    (see :mod:`ablate.launch.local_ray`: bound to 127.0.0.1, its token file private)."""
    import ray

    from ablate.launch import local_ray

    if ray.is_initialized():
        if not (address and _EMBEDDED):
            return  # connected already: this process's own cluster, or the caller's ray.init
        stop_ray()  # an earlier launch's embedded Ray; this launch asks for a cluster
    local_ray.driver_env_read()
    if address and address != "auto":
        _check_reachable(address)
    if address:
        preflight.check_ray_token(address)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # "local": a new embedded instance, never some other local cluster found running
            local_ray.private_token()
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                **local_ray.localhost_only(),
                **kwargs,
            )
            _EMBEDDED.append(True)
            local_ray.check_bound(ray.util.get_node_ip_address())
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
        from ablate.launch.preflight import ray_connect_error

        raise ray_connect_error(address, exc) from None
    reinstall_stop_signals()  # ray.init replaced the SIGINT/SIGTERM handlers


def stop_ray() -> None:
    """Shut down the embedded Ray this process started, if any (a cluster is left alone)."""
    import ray

    if _EMBEDDED and ray.is_initialized():
        ray.shutdown()
    _EMBEDDED.clear()


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on an unreachable ``HOST:PORT`` (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError):
        raise UserError(
            f"cannot reach a Ray cluster at '{address}': start one (ray start --head) "
            "or fix --address (auto, HOST:PORT or ray://HOST:PORT)"
        ) from None


def preflight_launch(tracking_uri: str, storage: str, address: str | None, job: Job) -> None:
    """Fail in seconds, before any run or record exists (:mod:`ablate.launch.preflight`)."""
    tracking.check_server(tracking_uri)
    preflight.check_storage(storage)
    start_ray(address)
    if address:  # an embedded Ray runs in this very environment
        preflight.check_nodes(module=job.module)


def _resources(res: ResourcesConfig) -> dict[str, float]:
    return {"cpu": res.cpu, "gpu": res.gpu}


def _prepare(
    exp: ExperimentConfig,
    ws: Workspace,
    kind: str,
    name: str,
    overrides: dict[str, Any],
    tags: dict[str, str] | None = None,
) -> LaunchContext:
    """Build the dataset once, check it feeds every row, open the MLflow parent run."""
    from ablate.data.folds import dataset_folds
    from ablate.data.staging import content_hash, stage_dataset
    from ablate.data.store import build_dataset
    from ablate.methods.registry import check_dataset

    dataset_root = build_dataset(exp.data, ws.datasets)
    for row_name, row in exp.rows.items():
        check_dataset(row_name, row, dataset_root)
    folds = dataset_folds(exp.data, dataset_root)  # frozen beside the dataset on first use
    fold_hash = "" if folds is None else folds.hash
    # the launch's identity (its trials are tagged with it); with object-store storage the
    # nodes rebuild or fetch the data and check it by this hash
    sha, staged = content_hash(dataset_root, remember=exp.data.path is None), ""
    if ws.shared_nothing and exp.data.path is not None:
        staged = stage_dataset(dataset_root, sha, ws.storage)
    dataset = {
        tracking.TAG_DATASET: mlflow_ui.dataset_name(exp.data),
        tracking.TAG_DATASET_SHA256: sha,
    }
    experiment_id = tracking.ensure_experiment(ws.tracking_uri, exp.name, ws.artifact_root)
    mlflow_ui.publish_study_view(ws.tracking_uri, experiment_id)
    parent = tracking.start_parent(
        ws.tracking_uri,
        experiment_id,
        kind=kind,
        run_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        params={
            "rows": ",".join(exp.rows),
            "dataset": str(dataset_root),
            **({"data.fold_hash": fold_hash} if fold_hash else {}),
            **{f"override.{key}": value for key, value in overrides.items()},
        },
        tags={
            tracking.TAG_STATUS: "running",
            tracking.TAG_ROW_ORDER: ",".join(exp.row_order),
            tracking.TAG_REFERENCE: exp.reference_row,
            **dataset,
            **mlflow_internals.source_tags(),
            **(tags or {}),
        },
    )
    ctx = LaunchContext(
        tracking_uri=ws.tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        dataset_root=str(dataset_root),
        cache_dir=ws.cache_location,
        kind=kind,
        storage=ws.storage,
        dataset_sha256=sha,
        dataset_staged=staged,
        dataset_name=dataset[tracking.TAG_DATASET],
        fold_hash=fold_hash,
        outage_wait_s=exp.outage_wait_s,
    )
    try:
        mlflow_ui.log_dataset(ws.tracking_uri, parent, exp.data, dataset_root)
        config_file = ws.workdir / f"{name}.experiment.yaml"
        config_file.write_text(yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False))
        tracking.log_artifacts(ws.tracking_uri, parent, config_file)
    except BaseException as exc:  # the parent exists: never leave it RUNNING
        signum = exc.signum if isinstance(exc, Interrupted) else None
        _end_launch(ctx, 0, signum=signum, crash=None if signum else type(exc).__name__)
        raise
    return ctx


def _plan(exp: ExperimentConfig, ws: Workspace, search: bool, gpu: str | None) -> Any:
    """The launch's cost plan (``ablate.planning.estimates``), or None when it cannot be made:
    a plan never stops a launch, except for a ``--gpu`` name it does not know."""
    from ablate.planning.devices import launch_device
    from ablate.planning.estimates import plan_launch

    device = gpu or launch_device(exp)
    try:
        return plan_launch(exp, gpu=device, search=search, workdir=ws.workdir)
    except UserError:
        if gpu is not None:
            raise
        log.warning("no cost plan for this launch", exc_info=True)
    except Exception:  # noqa: BLE001 - an estimate must not cost the launch
        log.warning("no cost plan for this launch", exc_info=True)
    return None


def _with_plan(ctx: LaunchContext, ws: Workspace, name: str, plan: Any) -> LaunchContext:
    """Log the plan to the parent run (``plan.*`` metrics, ``<name>.plan.json``) and give
    the trials their estimates (each logs ``est_wall_s`` beside its ``wall_s``)."""
    if plan is None:
        return ctx
    metrics = {"plan.trial_s": plan.trial_s, "plan.gpu_hours": plan.gpu_hours}
    if plan.wall_s == plan.wall_s:  # not NaN
        metrics["plan.wall_s"] = plan.wall_s
    tracking.log_metrics(ctx.tracking_uri, ctx.parent_run_id, metrics)
    tracking.log_params(ctx.tracking_uri, ctx.parent_run_id, {"plan.device": plan.device})
    path = ws.workdir / f"{name}.plan.json"
    path.write_text(json.dumps(plan.to_dict(), indent=2, default=str))
    tracking.log_artifacts(ctx.tracking_uri, ctx.parent_run_id, path)
    return dataclasses.replace(ctx, estimates=plan.estimates())


def write_record(ws: Workspace, name: str, record: dict[str, Any]) -> None:
    location = storage_mod.join(ws.launch_results(name), LAUNCH_RECORD)
    storage_mod.write_text(location, json.dumps(record, indent=2, default=str))


def run_config(exp: ExperimentConfig, ws: Workspace, name: str, ctx: LaunchContext, total: int):
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=ws.storage,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=2,
            checkpoint_score_attribute=f"val_{exp.metric}",
            checkpoint_score_order=exp.direction,
        ),
        failure_config=tune.FailureConfig(max_failures=exp.max_failures),
        callbacks=[
            TrialProgress(total, ctx.estimates, ctx.parent_run_id),
            MlflowTrialStates(ctx),
            CheckpointGuard(),
            PlanVsActual(ctx),
        ],
        verbose=0,
    )


def trial_name(trial: Any) -> str:
    fold = trial.config.get(FOLD)
    name = f"{trial.config.get(ROW, 'trial')}-s{trial.config.get(SEED, '')}"
    return f"{name}{'' if fold is None else f'-f{fold}'}-{trial.trial_id}"


def trainable(exp: ExperimentConfig, ctx: LaunchContext, job: Job) -> Any:
    """The Ray trainable of a launch: every trial resolves its settings from ``exp`` and
    its point of the param space, with the launch's resources."""
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(
            job.train, context=ctx.to_dict(), experiment=exp.model_dump(mode="json")
        ),
        _resources(exp.resources),
    )


def resume_hint(ws: Workspace, name: str) -> str:
    """The command that continues launch ``name``."""
    storage = "" if ws.default_storage else f" --storage {ws.storage}"
    return f"ablate resume {name} --workdir {ws.workdir}{storage}"


@stoppable
def launch_grid(
    exp: ExperimentConfig,
    ws: Workspace,
    *,
    address: str | None = None,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
    parent_tags: dict[str, str] | None = None,
    gpu: str | None = None,
    job: Job,
) -> LaunchResult:
    """Run every row x seed (x grid axes) as one Ray Tune experiment; return how it ended.

    ``overrides`` are the command line's ``key=value`` settings, already applied to ``exp``:
    they are recorded in the launch record and as the parent run's ``override.*`` params.
    ``parent_tags`` go on the parent run (a confirm grid names its search there).
    ``gpu``: the device the plan's estimates are for (default:
    :func:`ablate.planning.devices.launch_device`).
    SIGINT/SIGTERM stop it cleanly (:mod:`ablate.launch.interrupts`): the result then says
    ``interrupted``; a signal before the trials start raises :class:`Interrupted`."""
    from ray import tune

    name = name or exp.name
    overrides = overrides or {}
    trials = expand(exp)  # every trial checked before anything starts
    preflight.check_networks(trials)  # and its networks built on the meta device
    plan = _plan(exp, ws, search=False, gpu=gpu)
    preflight_launch(ws.tracking_uri, ws.storage, address, job)
    ctx = _with_plan(_prepare(exp, ws, "launch", name, overrides, parent_tags), ws, name, plan)
    write_record(
        ws,
        name,
        {
            "kind": "launch",
            "context": ctx.to_dict(),
            "experiment": exp.model_dump(mode="json"),
            "overrides": overrides,
            "workspace": asdict(ws),
        },
    )
    tuner = tune.Tuner(
        trainable(exp, ctx, job),
        param_space={axis: tune.grid_search(values) for axis, values in grid_axes(exp).items()},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=exp.resources.max_concurrent or None,
            reuse_actors=REUSE_ACTORS,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=run_config(exp, ws, name, ctx, len(trials)),
    )
    return fit(tuner, ctx, exp.name, name, len(trials), resume_hint(ws, name), job)


def fit(
    tuner: Any,
    ctx: LaunchContext,
    experiment: str,
    name: str,
    total: int,
    hint: str,
    job: Job,
) -> LaunchResult:
    """Run a launch's Tuner and end its MLflow runs truthfully: the parent FINISHED only when
    every trial finished, FAILED with the count when some failed, KILLED when a signal
    stopped it (with every child still running); nothing is left RUNNING. ``hint``: the
    command that resumes the launch."""
    stop = active_stop_signals()
    started = time.perf_counter()
    try:
        with stop.graceful():
            grid = tuner.fit()
        errors = sum(1 for r in grid if r.error is not None)
        n_trials = max(len(grid), total)
        _await_tracking(ctx, hint)
        if stop.signum is None:
            job.attach_report(ctx.tracking_uri, experiment, ctx.parent_run_id, name)
    except BaseException as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else stop.signum
        if signum is None and isinstance(exc, KeyboardInterrupt):
            signum = signal.SIGINT
        if signum is not None:
            _end_launch(ctx, total, signum=signum, hint=hint)
            raise Interrupted(signum, hint) from None
        if isinstance(exc, tracking.TrackingUnreachable):  # nothing can record the end
            raise
        reason = str(exc).splitlines()[0] if str(exc) else ""
        _end_launch(ctx, total, crash=f"{type(exc).__name__}: {reason}")
        raise
    status, completed = _end_launch(ctx, n_trials, signum=stop.signum, errors=errors, hint=hint)
    return LaunchResult(
        name=name,
        tracking_uri=ctx.tracking_uri,
        parent_run_id=ctx.parent_run_id,
        experiment_id=ctx.experiment_id,
        n_trials=n_trials,
        n_errors=errors,
        wall_s=time.perf_counter() - started,
        status=status,
        n_completed=completed,
        signum=stop.signum,
        resume_hint=hint if status != "completed" else "",
    )


def _await_tracking(ctx: LaunchContext, hint: str) -> None:
    """Wait for the tracking server (the launch's ``outage_wait_s`` at most)
    before the launch's end is recorded there; past that, one line naming the resume command,
    which records it (the trials' results are safe in their checkpoints)."""
    try:
        wait_for_server(
            lambda: tracking.client(ctx.tracking_uri).get_run(ctx.parent_run_id),
            "record the launch's end",
            ctx.tracking_uri,
            ctx.outage_wait_s,
        )
    except tracking.TrackingUnreachable as err:
        raise tracking.TrackingUnreachable(f"{err}; once it answers: {hint}") from None


def _end_launch(
    ctx: LaunchContext,
    n_trials: int,
    *,
    signum: int | None = None,
    errors: int = 0,
    hint: str = "",
    crash: str | None = None,
) -> tuple[str, int]:
    """End the parent run and every child still running; return (status, trials finished).

    A signal makes them ``interrupted`` (MLflow KILLED) and names the resume command; a
    crash of the driver makes them ``failed`` with its reason."""
    children = run_queries.child_runs(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id)
    done = sum(r.data.tags.get(tracking.TAG_STATUS) in ("completed", "pruned") for r in children)
    if signum is not None:
        status = "interrupted"
        why = f"interrupted by {signal.Signals(signum).name}"
        then = f"; continue with: {hint}" if hint else ""
        child_reason = f"{why}{then}"
        reason = f"{why}: {done} of {n_trials} trials finished{then}"
    elif crash is not None:
        status, child_reason = "failed", f"the launch's driver failed: {crash}"
        reason = child_reason
    else:
        status = "failed" if errors else "completed"
        child_reason = "the trial ended without reporting its end (its worker was lost)"
        reason = f"{errors} of {n_trials} trials failed: see ablate status" if errors else None
    child_status = "interrupted" if status == "interrupted" else "failed"
    for run in children:
        if run.info.status == "RUNNING":
            tracking.finish_run(ctx.tracking_uri, run.info.run_id, child_status, child_reason)
    tracking.finish_run(ctx.tracking_uri, ctx.parent_run_id, status, reason)
    return status, done


@stoppable
def launch_search(
    exp: ExperimentConfig,
    ws: Workspace,
    *,
    address: str | None = None,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
    gpu: str | None = None,
    study_storage: str | None = None,
    job: Job,
) -> LaunchResult:
    """Optuna TPE (multivariate) over ``exp.search.params`` of one row, with ASHA pruning.

    The study lives in ``study_storage`` (a database URL; default: sqlite in the workdir).
    Only the driver opens it, so the default serves any cluster; a database every driver
    reaches (PostgreSQL) is what lets a search be resumed or confirmed from another machine.

    With several objectives (``search.metric: [psnr, sd]``) the study is multi-objective
    (TPE handles it) and every trial runs to the end: ASHA stops trials by one metric, and
    Optuna records no intermediate values for several objectives.
    ``overrides``, ``gpu`` and signals: as for :func:`launch_grid`. ASHA counts validation
    rounds (``val_round``); progress between them goes to the driver's progress board."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    base = check_search(exp)  # every searched key checked before anything starts
    preflight.check_networks(search_trials(exp))  # the networks at the ends of every searched range
    assert exp.search is not None
    search = exp.search
    name = name or exp.name
    overrides = overrides or {}
    row_exp = exp.model_copy(update={"rows": {search.row: exp.rows[search.row]}})
    objectives = [(f"val_{metric}", mode) for metric, mode in search.objectives]
    plan = _plan(exp, ws, search=True, gpu=gpu)
    storage_url = study_storage or ws.study_storage
    preflight.check_study_url(storage_url)
    preflight_launch(ws.tracking_uri, ws.storage, address, job)
    study_db = preflight.open_study_storage(storage_url)
    ctx = _with_plan(_prepare(row_exp, ws, "search", name, overrides), ws, name, plan)
    if any(m == "sd" or m.startswith("ams_") for m, _ in search.objectives):
        # the objective needs K samples per validation slice, as the test metrics have
        ctx = replace(ctx, val_samples=base.diffusion.ams_samples)
    study_name = f"{name}-{ctx.parent_run_id[:8]}"
    tracking.set_tags(
        ws.tracking_uri,
        ctx.parent_run_id,
        {
            tracking.TAG_OPTUNA_STORAGE: storage_url,
            tracking.TAG_OPTUNA_STUDY: study_name,
            tracking.TAG_SEARCH_OBJECTIVES: tracking.format_objectives(objectives),
            tracking.TAG_SEARCH_PARAMS: ",".join(search.params),
        },
    )
    write_record(
        ws,
        name,
        {
            "kind": "search",
            "context": ctx.to_dict(),
            "experiment": exp.model_dump(mode="json"),
            "overrides": overrides,
            "workspace": asdict(ws),
            "optuna_storage": storage_url,
            "optuna_study": study_name,
        },
    )
    metrics, modes = [m for m, _ in objectives], [d for _, d in objectives]
    searcher = PruningAwareOptunaSearch(
        metric=metrics if search.multi_objective else metrics[0],
        mode=modes if search.multi_objective else modes[0],
        sampler=optuna.samplers.TPESampler(multivariate=True, seed=exp.seeds[0]),
        study_name=study_name,
        storage=study_db,
    )
    n_reports = base.train.validations
    scheduler = None  # FIFO: several objectives, every trial runs to the end
    if not search.multi_objective:
        scheduler = ASHAScheduler(
            time_attr="val_round",
            metric=metrics[0],
            mode=modes[0],
            max_t=n_reports,
            grace_period=min(search.grace_period, n_reports),
            reduction_factor=search.reduction_factor,
        )
    tuner = tune.Tuner(
        trainable(row_exp, ctx, job),
        param_space={
            **search_base(exp),
            **{key: optuna_distribution(p) for key, p in search.params.items()},
        },
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=search.num_samples,
            max_concurrent_trials=exp.resources.max_concurrent or None,
            reuse_actors=REUSE_ACTORS,
        ),
        run_config=run_config(exp, ws, name, ctx, search.num_samples),
    )
    return fit(tuner, ctx, exp.name, name, search.num_samples, resume_hint(ws, name), job)


def best_search_config(ws: Workspace, name: str) -> dict[str, Any]:
    """The searched knobs of the best completed (not pruned) trial of search ``name``; in a
    multi-objective study, the Pareto-optimal trial best on the first objective."""
    import optuna

    record = read_record(ws, name)
    study = optuna.load_study(study_name=record["optuna_study"], storage=record["optuna_storage"])
    none = UserError(f"search '{name}' has no completed trial yet: run or resume it")
    if len(study.directions) == 1:
        try:
            return dict(study.best_trial.params)
        except ValueError:
            raise none from None
    front = study.best_trials
    if not front:
        raise none
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    best = (max if maximize else min)(front, key=lambda t: t.values[0])
    return dict(best.params)


def read_record(ws: Workspace, name: str) -> dict[str, Any]:
    """The record of launch ``name`` in this workspace's storage."""
    return read_launch_record(ws.storage, name)


def _launch_trials(record: dict[str, Any]) -> tuple[ExperimentConfig, int]:
    """A launch record's experiment (as its trials see it) and its number of trials."""
    exp = parse_experiment(record["experiment"], source="launch record")
    if record["kind"] == "search" and exp.search is not None:
        total = exp.search.num_samples
        return exp.model_copy(update={"rows": {exp.search.row: exp.rows[exp.search.row]}}), total
    return exp, len(expand(exp))


@stoppable
def resume(ws: Workspace, name: str, *, job: Job, address: str | None = None) -> LaunchResult:
    """Restore an interrupted grid or search: errored and unfinished trials run again,
    each into its own MLflow child run (found by trial id), under the same parent run."""
    from ray import tune

    record = read_record(ws, name)
    ctx = LaunchContext(**record["context"])
    exp, total = _launch_trials(record)
    path = ws.launch_results(name)
    if not storage_mod.is_uri(path):
        storage_mod.check_private(path)  # Tuner.restore unpickles what is there
    if not tune.Tuner.can_restore(path):
        raise UserError(f"Ray has no restorable state at {path}: the launch never started")
    if record["kind"] == "search":  # the restored searcher reopens its study database
        preflight.open_study_storage(record["optuna_storage"], record["optuna_study"])
    preflight_launch(ctx.tracking_uri, ws.storage, address, job)
    tracking.reopen_run(ctx.tracking_uri, ctx.parent_run_id)
    tuner = tune.Tuner.restore(
        path, trainable=trainable(exp, ctx, job), resume_unfinished=True, resume_errored=True
    )
    return fit(tuner, ctx, exp.name, name, total, resume_hint(ws, name), job)


def confirm_best(
    exp: ExperimentConfig,
    ws: Workspace,
    search_name: str,
    n_seeds: int,
    *,
    address: str | None,
    job: Job,
) -> LaunchResult:
    """Re-run the best configuration of a search over ``n_seeds`` seeds as a grid launch:
    the searched row (as ``<row>_best``) with each best value as a one-value grid axis, so the
    confirm trials resolve their settings exactly as the search's trials did."""
    if exp.search is None:
        raise UserError(f"experiment '{exp.name}' has no 'search' section")
    best = best_search_config(ws, search_name)
    confirm = exp.model_copy(
        update={
            "rows": {f"{exp.search.row}_best": exp.rows[exp.search.row]},
            "search": None,
            "seeds": list(range(n_seeds)),
            "grid": {**exp.grid, **{key: [value] for key, value in best.items()}},
        }
    )
    tags = _confirm_tags(ws, search_name, "best")
    return launch_grid(
        confirm, ws, address=address, name=f"{search_name}-confirm", parent_tags=tags, job=job
    )


def confirm_defaults(
    exp: ExperimentConfig,
    ws: Workspace,
    search_name: str,
    n_seeds: int,
    *,
    address: str | None,
    job: Job,
) -> LaunchResult:
    """The searched row as its YAML declares it (``<row>_defaults``) over the same seeds as
    :func:`confirm_best`, so the best configuration has a paired baseline."""
    if exp.search is None:
        raise UserError(f"experiment '{exp.name}' has no 'search' section")
    defaults = exp.model_copy(
        update={
            "rows": {f"{exp.search.row}_defaults": exp.rows[exp.search.row]},
            "search": None,
            "seeds": list(range(n_seeds)),
        }
    )
    tags = _confirm_tags(ws, search_name, "defaults")
    return launch_grid(
        defaults, ws, address=address, name=f"{search_name}-defaults", parent_tags=tags, job=job
    )


def _confirm_tags(ws: Workspace, search_name: str, role: str) -> dict[str, str]:
    search_run = read_record(ws, search_name)["context"]["parent_run_id"]
    return {tracking.TAG_CONFIRMS: search_run, tracking.TAG_CONFIRM_ROLE: role}


def _status_line(run: Any) -> dict[str, Any]:
    """A started trial's line: state, PSNR, the plan's estimated wall seconds (``est_s``),
    the actual ones (``actual_s``: its ``wall_s``, or its time so far while it runs; None
    when unknown) and error."""
    metrics = run.data.metrics
    actual = metrics.get("wall_s")
    if actual is None and run.info.status == "RUNNING" and run.info.start_time:
        actual = time.time() - run.info.start_time / 1000
    return {
        "run": run.info.run_name or run.info.run_id,
        "status": run.data.tags.get(tracking.TAG_STATUS, run.info.status.lower()),
        "psnr": f"{metrics['psnr']:.3f}" if "psnr" in metrics else "-",
        "est_s": metrics.get("est_wall_s"),
        "actual_s": actual,
        "error": run.data.tags.get(tracking.TAG_ERROR, ""),
        "fold": run.data.tags.get(tracking.TAG_FOLD),  # cross-validated: ablate status groups
    }


def launch_status(ws: Workspace, name: str) -> list[dict[str, Any]]:
    """One line per trial of a launch, started or not: a started trial's state, PSNR and
    error come from its MLflow child run; a grid trial without one is ``not started``, as is
    each search sample not drawn yet."""
    record = read_record(ws, name)
    ctx = LaunchContext(**record["context"])
    exp, total = _launch_trials(record)
    runs = sorted(
        run_queries.child_runs(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id),
        key=lambda r: r.info.run_name or "",
    )
    if record["kind"] == "search":
        lines = [_status_line(run) for run in runs]
        missing = range(len(runs) + 1, total + 1)
        return lines + [_not_started(f"sample {i} of {total}") for i in missing]
    lines, unmatched = [], list(runs)
    for trial in expand(exp):
        expected = {k: str(v) for k, v in trial_params(trial).items()}
        run = next(
            (r for r in unmatched if all(r.data.params.get(k) == v for k, v in expected.items())),
            None,
        )
        if run is None:
            fold = None if trial.fold is None else str(trial.fold)
            lines.append(_not_started(f"{trial.row_name}-s{trial.seed}", fold))
        else:
            unmatched.remove(run)
            lines.append(_status_line(run))
    return lines + [_status_line(run) for run in unmatched]


def _not_started(name: str, fold: str | None = None) -> dict[str, Any]:
    return {
        "fold": fold,
        "run": name,
        "status": "not started",
        "psnr": "-",
        "est_s": None,
        "actual_s": None,
        "error": "",
    }


def search_space_path(filename: str) -> Path:
    """A YAML shipped with the package (:mod:`ablate.shipped`)."""
    path = shipped_space(filename)
    if path is None:
        raise UserError(f"{filename} is not shipped with this installation: pass a YAML path")
    return path
