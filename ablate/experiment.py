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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from ablate import tracking
from ablate.callbacks import CheckpointGuard, MlflowTrialStates, TrialProgress
from ablate.config import ExperimentConfig, ResourcesConfig, parse_experiment
from ablate.errors import UserError
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
from trainables.ablation import LaunchContext, train_trial

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
    name: str
    tracking_uri: str
    parent_run_id: str
    experiment_id: str
    n_trials: int
    n_errors: int
    wall_s: float


def start_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (``auto``, ``HOST:PORT``, ``ray://...``) or start an embedded one."""
    import ray

    if ray.is_initialized():
        return
    if address and address != "auto":
        _check_reachable(address)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # "local": a new embedded instance, never some other local cluster found running
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError) as exc:
        raise UserError(
            f"cannot start/connect Ray (address={address or 'embedded'}): "
            f"{str(exc).splitlines()[0]}"
        ) from None


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
    )
    config_file = ws.workdir / f"{name}.experiment.yaml"
    config_file.write_text(yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False))
    tracking.log_artifacts(ws.tracking_uri, parent, config_file)
    return LaunchContext(
        tracking_uri=ws.tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        dataset_root=str(dataset_root),
        cache_dir=str(ws.cache),
        kind=kind,
    )


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


def launch_grid(
    exp: ExperimentConfig,
    ws: Workspace,
    *,
    address: str | None = None,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> LaunchResult:
    """Run every row x seed (x grid axes) as one Ray Tune experiment; return a summary.

    ``overrides`` are the command line's ``key=value`` settings, already applied to ``exp``:
    they are recorded in the launch record and as the parent run's ``override.*`` params."""
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
    return _fit(tuner, ctx, name, len(trials))


def _fit(tuner: Any, ctx: LaunchContext, name: str, total: int) -> LaunchResult:
    started = time.perf_counter()
    try:
        grid = tuner.fit()
    finally:
        tracking.finish_run(ctx.tracking_uri, ctx.parent_run_id, "completed")
    errors = sum(1 for r in grid if r.error is not None)
    return LaunchResult(
        name=name,
        tracking_uri=ctx.tracking_uri,
        parent_run_id=ctx.parent_run_id,
        experiment_id=ctx.experiment_id,
        n_trials=len(grid) or total,
        n_errors=errors,
        wall_s=time.perf_counter() - started,
    )


def launch_search(
    exp: ExperimentConfig,
    ws: Workspace,
    *,
    address: str | None = None,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> LaunchResult:
    """Optuna TPE (multivariate) over ``exp.search.params`` of one row, with ASHA pruning.

    ``overrides``: as for :func:`launch_grid`."""
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
    return _fit(tuner, ctx, name, search.num_samples)


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


def resume(ws: Workspace, name: str, *, address: str | None = None) -> LaunchResult:
    """Restore an interrupted grid or search: errored and unfinished trials run again,
    each into its own MLflow child run (found by trial id), under the same parent run."""
    from ray import tune

    record = read_record(ws, name)
    ctx = LaunchContext(**record["context"])
    exp = parse_experiment(record["experiment"], source=f"launch record of '{name}'")
    path = str(Path(ws.storage) / name)
    if not tune.Tuner.can_restore(path):
        raise UserError(f"Ray has no restorable state at {path}: the launch never started")
    start_ray(address)
    if record["kind"] == "search" and exp.search is not None:
        exp = exp.model_copy(update={"rows": {exp.search.row: exp.rows[exp.search.row]}})
    tracking.client(ctx.tracking_uri).update_run(ctx.parent_run_id, status="RUNNING")
    tuner = tune.Tuner.restore(
        path, trainable=_trainable(exp, ctx), resume_unfinished=True, resume_errored=True
    )
    return _fit(tuner, ctx, name, 0)


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


def launch_status(ws: Workspace, name: str) -> list[dict[str, str]]:
    """One line per trial of a launch, from its MLflow child runs (status, PSNR, error)."""
    record = read_record(ws, name)
    ctx = LaunchContext(**record["context"])
    runs = tracking.child_runs(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id)
    out = []
    for run in sorted(runs, key=lambda r: r.info.run_name or ""):
        metrics = run.data.metrics
        out.append(
            {
                "run": run.info.run_name or run.info.run_id,
                "status": run.data.tags.get(tracking.TAG_STATUS, run.info.status.lower()),
                "psnr": f"{metrics['psnr']:.3f}" if "psnr" in metrics else "-",
                "error": run.data.tags.get(tracking.TAG_ERROR, ""),
            }
        )
    return out


def search_space_path(filename: str) -> Path:
    """A YAML shipped in the repository's ``search_spaces/`` (installed editable)."""
    path = Path(__file__).resolve().parents[1] / "search_spaces" / filename
    if not path.is_file():
        raise UserError(
            f"{path} not found: install the project editable from its repository "
            "(pip install -e .) or pass a YAML path"
        )
    return path
