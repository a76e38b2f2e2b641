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

import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from ablate import mlflow_ui, tracking
from ablate.callbacks import CheckpointGuard, MlflowTrialStates, TrialProgress
from ablate.config import ExperimentConfig, ResourcesConfig, parse_experiment
from ablate.errors import UserError
from ablate.interrupts import Interrupted, active_stop_signals, stoppable
from ablate.interrupts import reinstall as reinstall_stop_signals
from ablate.preflight import check_networks
from ablate.search import PruningAwareOptunaSearch, optuna_distribution
from ablate.trials import (
    ROW,
    SEED,
    check_search,
    expand,
    grid_axes,
    search_base,
    search_trials,
)
from trainables.ablation import LaunchContext, train_trial, trial_params

LAUNCH_RECORD = "ablate_launch.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workspace:
    """Where a launch keeps its things: MLflow store, Ray results, datasets, caches."""

    workdir: Path
    tracking_uri: str
    storage: str

    @classmethod
    def create(
        cls, workdir: Path, tracking_uri: str | None = None, storage: str | None = None
    ) -> Workspace:
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(
            workdir,
            tracking_uri or tracking.default_tracking_uri(workdir),
            storage or str(workdir / "ray_results"),
        )

    @property
    def datasets(self) -> Path:
        return self.workdir / "datasets"

    @property
    def cache(self) -> Path:
        return self.workdir / "cache"


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
    (see :mod:`ablate.local_ray`: bound to 127.0.0.1, its token file private)."""
    import ray

    from ablate import local_ray

    if ray.is_initialized():
        return
    local_ray.driver_env_read()
    if address and address != "auto":
        _check_reachable(address)
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
    except (ConnectionError, RuntimeError) as exc:
        raise UserError(
            f"cannot start/connect Ray (address={address or 'embedded'}): "
            f"{str(exc).splitlines()[0]}"
        ) from None
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


def _resources(res: ResourcesConfig) -> dict[str, float]:
    return {"cpu": res.cpu, "gpu": res.gpu}


def _prepare(
    exp: ExperimentConfig, ws: Workspace, kind: str, name: str, overrides: dict[str, Any]
) -> LaunchContext:
    """Build the dataset once, check it feeds every row, open the MLflow parent run."""
    from ablate.data.store import build_dataset
    from ablate.methods.registry import check_dataset

    dataset_root = build_dataset(exp.data, ws.datasets)
    for row_name, row in exp.rows.items():
        check_dataset(row_name, row, dataset_root)
    experiment_id = tracking.ensure_experiment(
        ws.tracking_uri, exp.name, tracking.artifact_root(ws.workdir)
    )
    mlflow_ui.publish_study_view(ws.tracking_uri, experiment_id)
    parent = tracking.start_parent(
        ws.tracking_uri,
        experiment_id,
        kind=kind,
        run_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        params={
            "rows": ",".join(exp.rows),
            "dataset": str(dataset_root),
            **{f"override.{key}": value for key, value in overrides.items()},
        },
        tags={tracking.TAG_STATUS: "running", **mlflow_ui.source_tags()},
    )
    ctx = LaunchContext(
        tracking_uri=ws.tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        dataset_root=str(dataset_root),
        cache_dir=str(ws.cache),
        kind=kind,
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


def _write_record(ws: Workspace, name: str, record: dict[str, Any]) -> None:
    folder = Path(ws.storage) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LAUNCH_RECORD).write_text(json.dumps(record, indent=2, default=str))


def _run_config(exp: ExperimentConfig, ws: Workspace, name: str, ctx: LaunchContext, total: int):
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=ws.storage,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=2,
            checkpoint_score_attribute=f"val_{exp.metric}",
            checkpoint_score_order=exp.mode,
        ),
        failure_config=tune.FailureConfig(max_failures=exp.max_failures),
        callbacks=[
            TrialProgress(total=total),
            MlflowTrialStates(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id),
            CheckpointGuard(),
        ],
        verbose=0,
    )


def _trial_name(trial: Any) -> str:
    return f"{trial.config.get(ROW, 'trial')}-s{trial.config.get(SEED, '')}-{trial.trial_id}"


def _trainable(exp: ExperimentConfig, ctx: LaunchContext) -> Any:
    """The Ray trainable of a launch: every trial resolves its settings from ``exp`` and
    its point of the param space, with the launch's resources."""
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(
            train_trial, context=ctx.to_dict(), experiment=exp.model_dump(mode="json")
        ),
        _resources(exp.resources),
    )


def resume_hint(ws: Workspace, name: str) -> str:
    """The command that continues launch ``name``."""
    storage = "" if ws.storage == str(ws.workdir / "ray_results") else f" --storage {ws.storage}"
    return f"ablate resume {name} --workdir {ws.workdir}{storage}"


@stoppable
def launch_grid(
    exp: ExperimentConfig,
    ws: Workspace,
    *,
    address: str | None = None,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> LaunchResult:
    """Run every row x seed (x grid axes) as one Ray Tune experiment; return how it ended.

    ``overrides`` are the command line's ``key=value`` settings, already applied to ``exp``:
    they are recorded in the launch record and as the parent run's ``override.*`` params.
    SIGINT/SIGTERM stop it cleanly (:mod:`ablate.interrupts`): the result then says
    ``interrupted``; a signal before the trials start raises :class:`Interrupted`."""
    from ray import tune

    name = name or exp.name
    overrides = overrides or {}
    trials = expand(exp)  # every trial checked before anything starts
    check_networks(trials)  # and its networks built on the meta device
    start_ray(address)
    ctx = _prepare(exp, ws, "launch", name, overrides)
    _write_record(
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
        _trainable(exp, ctx),
        param_space={axis: tune.grid_search(values) for axis, values in grid_axes(exp).items()},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=exp.resources.max_concurrent or None,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=_run_config(exp, ws, name, ctx, len(trials)),
    )
    return _fit(tuner, ctx, exp.name, name, len(trials), resume_hint(ws, name))


def _fit(
    tuner: Any, ctx: LaunchContext, experiment: str, name: str, total: int, hint: str
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
        if stop.signum is None:
            mlflow_ui.attach_report(ctx.tracking_uri, experiment, ctx.parent_run_id)
    except BaseException as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else stop.signum
        if signum is None and isinstance(exc, KeyboardInterrupt):
            signum = signal.SIGINT
        if signum is not None:
            _end_launch(ctx, total, signum=signum, hint=hint)
            raise Interrupted(signum, hint) from None
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
    children = tracking.child_runs(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id)
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
) -> LaunchResult:
    """Optuna TPE (multivariate) over ``exp.search.params`` of one row, with ASHA pruning.

    ``overrides`` and signals: as for :func:`launch_grid`."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    base = check_search(exp)  # every searched key checked before anything starts
    check_networks(search_trials(exp))  # the networks at the ends of every searched range
    assert exp.search is not None
    search = exp.search
    name = name or exp.name
    overrides = overrides or {}
    if base.train.eval_every == 0:
        raise UserError("a search needs train.eval_every > 0 so that ASHA can prune early")
    row_exp = exp.model_copy(update={"rows": {search.row: exp.rows[search.row]}})
    start_ray(address)
    ctx = _prepare(row_exp, ws, "search", name, overrides)
    storage_url = f"sqlite:///{(ws.workdir / 'optuna.db').resolve()}"
    study_name = f"{name}-{ctx.parent_run_id[:8]}"
    tracking.set_tags(
        ws.tracking_uri,
        ctx.parent_run_id,
        {tracking.TAG_OPTUNA_STORAGE: storage_url, tracking.TAG_OPTUNA_STUDY: study_name},
    )
    _write_record(
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
    metric = f"val_{search.metric}"
    searcher = PruningAwareOptunaSearch(
        metric=metric,
        mode=search.mode,
        sampler=optuna.samplers.TPESampler(multivariate=True, seed=exp.seeds[0]),
        study_name=study_name,
        storage=optuna.storages.RDBStorage(storage_url),
    )
    n_reports = len(range(base.train.eval_every, base.train.steps, base.train.eval_every)) + 1
    scheduler = ASHAScheduler(
        metric=metric,
        mode=search.mode,
        max_t=n_reports,
        grace_period=min(search.grace_period, n_reports),
        reduction_factor=search.reduction_factor,
    )
    tuner = tune.Tuner(
        _trainable(row_exp, ctx),
        param_space={
            **search_base(exp),
            **{key: optuna_distribution(p) for key, p in search.params.items()},
        },
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=search.num_samples,
            max_concurrent_trials=exp.resources.max_concurrent or None,
        ),
        run_config=_run_config(exp, ws, name, ctx, search.num_samples),
    )
    return _fit(tuner, ctx, exp.name, name, search.num_samples, resume_hint(ws, name))


def best_search_config(ws: Workspace, name: str) -> dict[str, Any]:
    """The searched knobs of the best completed (not pruned) trial of search ``name``."""
    import optuna

    record = read_record(ws, name)
    study = optuna.load_study(study_name=record["optuna_study"], storage=record["optuna_storage"])
    try:
        return dict(study.best_trial.params)
    except ValueError:
        raise UserError(f"search '{name}' has no completed trial yet: run or resume it") from None


def read_record(ws: Workspace, name: str) -> dict[str, Any]:
    path = Path(ws.storage) / name / LAUNCH_RECORD
    if not path.is_file():
        raise UserError(
            f"no launch named '{name}' under {ws.storage}: check the name and --workdir/--storage"
        )
    return json.loads(path.read_text())


def _launch_trials(record: dict[str, Any]) -> tuple[ExperimentConfig, int]:
    """A launch record's experiment (as its trials see it) and its number of trials."""
    exp = parse_experiment(record["experiment"], source="launch record")
    if record["kind"] == "search" and exp.search is not None:
        total = exp.search.num_samples
        return exp.model_copy(update={"rows": {exp.search.row: exp.rows[exp.search.row]}}), total
    return exp, len(expand(exp))


@stoppable
def resume(ws: Workspace, name: str, *, address: str | None = None) -> LaunchResult:
    """Restore an interrupted grid or search: errored and unfinished trials run again,
    each into its own MLflow child run (found by trial id), under the same parent run."""
    from ray import tune

    record = read_record(ws, name)
    ctx = LaunchContext(**record["context"])
    exp, total = _launch_trials(record)
    path = str(Path(ws.storage) / name)
    if not tune.Tuner.can_restore(path):
        raise UserError(f"Ray has no restorable state at {path}: the launch never started")
    start_ray(address)
    tracking.reopen_run(ctx.tracking_uri, ctx.parent_run_id)
    tuner = tune.Tuner.restore(
        path, trainable=_trainable(exp, ctx), resume_unfinished=True, resume_errored=True
    )
    return _fit(tuner, ctx, exp.name, name, total, resume_hint(ws, name))


def confirm_best(
    exp: ExperimentConfig, ws: Workspace, search_name: str, n_seeds: int, *, address: str | None
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
    return launch_grid(confirm, ws, address=address, name=f"{search_name}-confirm")


def _status_line(run: Any) -> dict[str, str]:
    metrics = run.data.metrics
    return {
        "run": run.info.run_name or run.info.run_id,
        "status": run.data.tags.get(tracking.TAG_STATUS, run.info.status.lower()),
        "psnr": f"{metrics['psnr']:.3f}" if "psnr" in metrics else "-",
        "error": run.data.tags.get(tracking.TAG_ERROR, ""),
    }


def launch_status(ws: Workspace, name: str) -> list[dict[str, str]]:
    """One line per trial of a launch, started or not: a started trial's state, PSNR and
    error come from its MLflow child run; a grid trial without one is ``not started``, as is
    each search sample not drawn yet."""
    record = read_record(ws, name)
    ctx = LaunchContext(**record["context"])
    exp, total = _launch_trials(record)
    runs = sorted(
        tracking.child_runs(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id),
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
            lines.append(_not_started(f"{trial.row_name}-s{trial.seed}"))
        else:
            unmatched.remove(run)
            lines.append(_status_line(run))
    return lines + [_status_line(run) for run in unmatched]


def _not_started(name: str) -> dict[str, str]:
    return {"run": name, "status": "not started", "psnr": "-", "error": ""}


def search_space_path(filename: str) -> Path:
    """A YAML shipped in the repository's ``search_spaces/`` (installed editable)."""
    path = Path(__file__).resolve().parents[1] / "search_spaces" / filename
    if not path.is_file():
        raise UserError(
            f"{path} not found: install the project editable from its repository "
            "(pip install -e .) or pass a YAML path"
        )
    return path
