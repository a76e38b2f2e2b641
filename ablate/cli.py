"""The ``ablate`` command line: parses arguments and calls library functions, nothing more.

Every user-facing error is an :class:`ablate.errors.UserError` (or a
:class:`ablate.config.ConfigError`) and is printed as one red line with exit code 2,
never as a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ablate.errors import UserError
from ablate.launch.interrupts import Interrupted
from ablate.workspace import Workspace, storage_of, tracking_uri_of

app = typer.Typer(
    help="Ablation studies and hyperparameter searches of diffusion-based PET reconstruction.",
    no_args_is_help=True,
    add_completion=False,
)
data_app = typer.Typer(help="Simulate, import and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`UserError` into one line on stderr and exit code 2, a launch stopped
    by SIGINT/SIGTERM into a line naming ``ablate resume`` and exit code 130/143; shut down
    the embedded Ray a command started, however it ends."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            Console(stderr=True, soft_wrap=True).print(
                f"[bold red]error:[/] {err}", highlight=False
            )
            raise typer.Exit(code=2) from None
        except Interrupted as stop:
            then = f": continue with: {stop.hint}" if stop.hint else ""
            Console(stderr=True, soft_wrap=True).print(
                f"[bold yellow]interrupted[/] by {stop.signal_name}{then}", highlight=False
            )
            raise typer.Exit(code=stop.exit_code) from None
        finally:
            if "ablate.launch.driver" in sys.modules:
                sys.modules["ablate.launch.driver"].stop_ray()

    return wrapper


def _ray_driver(address: str | None) -> None:
    """Before anything imports Ray (see :mod:`ablate.launch.local_ray`): SIGTERM reaches ablate's
    handler; without ``--address`` the embedded Ray binds 127.0.0.1."""
    from ablate.launch.local_ray import prepare_driver

    prepare_driver(embedded=address is None)


# --- commands ------------------------------------------------------------------------------
# Each command is a thin wrapper: parse, call one library function, print.

WORKDIR_OPT = typer.Option(Path("runs"), "--workdir", help="Work directory (MLflow, Ray, data).")
TRACKING_OPT = typer.Option(None, "--tracking-uri", help="MLflow URI (default: sqlite in workdir).")
RESOURCES_OPT = typer.Option(None, "--resources", help="Per trial: cpu=1,gpu=0.25")
STORAGE_HELP = (
    "Where launches keep records and checkpoints: a local/shared path or an object store "
    "URI (s3://bucket/prefix; endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
    "AWS_SECRET_ACCESS_KEY). Default: WORKDIR/ray_results."
)
STORAGE_OPT = typer.Option(None, "--storage", help=STORAGE_HELP)
NAME_OPT = typer.Option(None, "--name", help="Launch name (default: config name).")
OVERRIDES_ARG = typer.Argument(
    None, help="Settings as dotted key=value, e.g. train.steps=50 loss.k=1e-4.", show_default=False
)
ROWS_OPT = typer.Option(None, "--rows", help="Only these rows, e.g. --rows cpm,full.")
FOLDS_OPT = typer.Option(
    None, "--folds", help="With data.folds: only these folds (0-based), e.g. --folds 1,3."
)
ADDRESS_OPT = typer.Option(
    None, "--address", help="Ray cluster: auto, HOST:PORT or ray://... (default: embedded)."
)
DRY_RUN_OPT = typer.Option(
    False, "--dry-run", help="Print the plan, resources and MLflow target; start nothing."
)
STRICT_OPT = typer.Option(
    False,
    "--strict",
    help="Refuse (exit 2) when a contrast's rows differ in a setting beyond their switches.",
)
GPU_OPT = typer.Option(
    None, "--gpu", help="Plan for this device: H100, H200, A100 or cpu (default: by resources)."
)


def _quiet_mlflow() -> None:
    """No download bars or MLflow notices between our lines (the CLI owns the process)."""
    import logging
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.ERROR)


def _parse_resources(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in ("cpu", "gpu") or not value:
            raise UserError(f"--resources '{text}': use e.g. cpu=1,gpu=0.25")
        try:
            out[f"resources.{key.strip()}"] = float(value)
        except ValueError:
            raise UserError(f"--resources '{text}': '{value}' is not a number") from None
    return out


def _experiment(
    space: Path,
    assignments: list[str] | None,
    *,
    rows: str | None = None,
    seeds: int | None = None,
    resources: str | None = None,
    steps: int | None = None,
    design: dict[str, Any] | None = None,
    folds: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The experiment of ``space`` with the command line's settings applied, and those
    settings as dotted overrides (recorded with the launch). ``--seeds``, ``--resources``
    and ``--steps`` are shorthands for ``seeds=``, ``resources.*=`` and ``train.steps=``;
    ``--folds 1,3`` runs those folds of ``data.folds`` (``run_folds=``);
    ``--rows`` keeps the named rows; ``design.*=`` (and ``design``) replace keys of the YAML's
    ``design:`` before its rows are generated. Everything is checked here, before anything
    starts."""
    from ablate.config import ExperimentConfig, check_row_names, load_experiment
    from ablate.data.folds import check_folds
    from ablate.overrides import apply_overrides, parse_assignments
    from ablate.trials import select_rows

    overrides = parse_assignments(assignments or [])
    if seeds is not None:
        if seeds < 1:
            raise UserError("--seeds must be at least 1")
        overrides["seeds"] = list(range(seeds))
    overrides.update(_parse_resources(resources))
    if folds is not None:
        overrides["run_folds"] = _parse_folds(folds)
    if steps is not None:
        overrides["train.steps"] = steps
    # design.* keys change which rows the YAML generates: applied where it is read
    keys = {k.removeprefix("design."): v for k, v in overrides.items() if k.startswith("design.")}
    settings = {k: v for k, v in overrides.items() if not k.startswith("design.")}
    loaded = load_experiment(space, design={**keys, **(design or {})} or None)
    exp = apply_overrides(ExperimentConfig, loaded, settings, "command line")
    check_row_names(exp, "command line")
    check_folds(exp.data)
    if rows is not None:
        exp = select_rows(exp, [name.strip() for name in rows.split(",") if name.strip()])
    return exp, overrides


def _parse_folds(text: str) -> list[int]:
    """``--folds 1,3``: fold numbers (0-based, like seeds)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--folds '{text}': name fold numbers, e.g. --folds 0,2") from None


def _print_launch(result: Any, workdir: Path) -> None:
    # an interrupted launch's count is of the trials that finished, never "0 failed"
    counted = (
        f"interrupted, {result.n_completed} of {result.n_trials} trials finished"
        if result.status == "interrupted"
        else f"{result.n_trials} trials, {result.n_errors} failed"
    )
    console.print(
        f"[bold]{result.name}[/]: {counted}, "
        f"{result.wall_s:.0f} s. MLflow store: {result.tracking_uri} "
        f"(parent run {result.parent_run_id}). Open it with: ablate ui --workdir {workdir}"
    )
    if result.status == "interrupted":
        console.print(
            f"[bold yellow]interrupted[/] by {Interrupted(result.signum).signal_name} after "
            f"{result.n_completed} of {result.n_trials} trials: the parent run and the running "
            f"trials are KILLED. Continue with: {result.resume_hint}",
            highlight=False,
            soft_wrap=True,
        )
    elif result.status == "failed":
        console.print(
            f"[bold red]{result.n_errors} of {result.n_trials} trials failed[/]: see "
            f"ablate status {result.name} --workdir {workdir}; rerun them with: "
            f"{result.resume_hint}",
            highlight=False,
            soft_wrap=True,
        )


def _print_decision(decision: Any) -> None:
    """One replicated launch's decision after a wave: the states, then the next wave or why
    replication stops."""
    states = ", ".join(f"{t.name}: {t.state}" for t in decision.targets)
    console.print(
        f"[bold]wave {decision.wave}[/] ({decision.spent_hours:.3g} trial-hours so far): {states}",
        highlight=False,
        soft_wrap=True,
    )
    if decision.stop:
        console.print(f"replication stopped: {decision.reason}", highlight=False, soft_wrap=True)
    else:
        console.print(
            f"wave {decision.wave + 1}: seeds {decision.next_seeds} for rows "
            f"{', '.join(decision.next_rows)}",
            highlight=False,
            soft_wrap=True,
        )


def _exit_for(result: Any) -> None:
    """Exit 1 when some trials failed, 130/143 when a signal stopped the launch."""
    if result.exit_code:
        raise typer.Exit(code=result.exit_code)


def _like_for_like(exp: Any, strict: bool, show: bool) -> None:
    """Print what the rows differ in beyond their switches (``show``); with ``--strict``,
    refuse a launch in which that confounds a contrast."""
    from ablate.confounds import of_experiment

    report = of_experiment(exp)
    if strict and report.confounds:
        more = len(report.confounds) - 1
        also = f" (and {more} more contrast(s))" if more else ""
        raise UserError(
            f"--strict: {report.confounds[0].message(report.labels)}{also}: give the rows "
            "the same settings, or drop --strict"
        )
    for line in report.lines() if show else []:
        style = "yellow" if line.startswith("warning:") else None
        console.print(line, style=style, highlight=False, soft_wrap=True)


def _dry_run(
    exp: Any, kind: str, name: str | None, workdir: Path, tracking_uri: str | None, gpu: str | None
) -> None:
    """What ``run``/``search`` would do, without doing it: the plan, the Ray resources
    of each trial and the MLflow experiment it would write to (nothing is created)."""
    from ablate.planning.estimates import plan_launch
    from ablate.planning.render import dry_run_summary, print_plan

    plan = plan_launch(exp, gpu=gpu, search=kind == "search", workdir=workdir)
    print_plan(plan, console)
    for line in dry_run_summary(exp, plan, kind, name, workdir, tracking_uri):
        console.print(line, highlight=False, soft_wrap=True)


@app.command()
@friendly_errors
def plan(
    space: Path = typer.Argument(..., help="Search-space YAML (e.g. search_spaces/demo.yaml)."),
    overrides: list[str] | None = OVERRIDES_ARG,
    rows: str | None = ROWS_OPT,
    seeds: int | None = typer.Option(None, "--seeds", help="Seeds per row: 0..N-1."),
    folds: str | None = FOLDS_OPT,
    resources: str | None = RESOURCES_OPT,
    gpu: str | None = GPU_OPT,
    gpus: int | None = typer.Option(
        None, "--gpus", help="Devices the wall time is planned on (default 1 GPU / all cores)."
    ),
    search: bool = typer.Option(False, "--search", help="Plan the 'search' section instead."),
    mfu: float | None = typer.Option(
        None, "--mfu", help="Assume this MFU (0-1) for every trial instead of the records."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    compare_designs: bool = typer.Option(
        False, "--compare-designs", help="Each kind of the YAML's design: rows, trials, hours."
    ),
    power: bool = typer.Option(
        False, "--power", help="Seeds and test subjects each contrast needs (with --effect)."
    ),
    effect: float | None = typer.Option(
        None, "--effect", help="--power: the effect to detect, in the metric's units (0.3)."
    ),
    pilot: str | None = typer.Option(
        None,
        "--pilot",
        help="--power: an earlier experiment (or tidy .parquet) whose variance to use "
        "(default: the committed toy-study record of the demo's rows).",
    ),
    metric: str = typer.Option("psnr", "--metric", help="--power: the metric of the effect."),
    workdir: Path = WORKDIR_OPT,
    tracking_uri: str | None = TRACKING_OPT,
    strict: bool = STRICT_OPT,
) -> None:
    """What a launch will cost before it runs: per trial FLOPs, memory, it/s and time (measured
    where benchmarks/results has the row, else estimated at a stated MFU); GPU-hours in all.
    A YAML's design: lists its rows; --compare-designs sets the kinds side by side; --power
    says how many seeds and test subjects detect --effect at 80% power."""
    import json

    from ablate.planning import estimates, render

    if (effect is not None or pilot is not None) and not power:
        raise UserError("--effect and --pilot go with --power: add --power")
    if power and effect is None:
        raise UserError("--power needs --effect: the effect to detect, e.g. --effect 0.3")
    options = dict(rows=rows, seeds=seeds, resources=resources, folds=folds)
    exp, _ = _experiment(space, overrides, **options)
    plan_options = dict(gpu=gpu, devices=gpus, mfu=mfu, workdir=workdir)
    if compare_designs:
        if exp.design is None:
            raise UserError(
                f"{space} has no design: to compare: add design: {{full: ROW, factors: "
                "[SWITCH, ...], kind: factorial}"
            )

        def load(keys: dict[str, Any]) -> Any:
            return _experiment(space, overrides, **options, design=keys)[0]

        costs = estimates.compare_designs(load, exp.design, **plan_options)
        render.print_design_costs(costs, console)
        return
    if power:
        assert effect is not None
        frame, source = _pilot(pilot, workdir, tracking_uri)
        found = estimates.power_plan(exp, frame, source, effect, metric, **plan_options)
        render.print_power(found, console)
        return
    _like_for_like(exp, strict and not search, show=False)  # the plan prints it
    result = estimates.plan_launch(exp, search=search, **plan_options)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return
    render.print_plan(result, console)


def _pilot(name: str | None, workdir: Path, tracking_uri: str | None) -> tuple[Any, str]:
    """The tidy frame whose variance ``plan --power`` uses, and how to name it: an earlier
    experiment of the store (or a tidy .parquet), else the committed record of the demo."""
    if name is None:
        import json

        from ablate.analysis.power import frame_from_record
        from ablate.shipped import benchmark_records_dir

        record = json.loads((benchmark_records_dir() / "pilot-demo.json").read_text())
        return frame_from_record(record), "committed record pilot-demo.json (toy study)"
    from dashboards.study import tidy_for

    return tidy_for(name, tracking_uri_of(workdir, tracking_uri)), f"pilot '{name}'"


@app.command()
@friendly_errors
def run(
    space: Path = typer.Argument(..., help="Search-space YAML (e.g. search_spaces/demo.yaml)."),
    overrides: list[str] | None = OVERRIDES_ARG,
    rows: str | None = ROWS_OPT,
    address: str | None = ADDRESS_OPT,
    seeds: int | None = typer.Option(None, "--seeds", help="Seeds per row: 0..N-1."),
    folds: str | None = FOLDS_OPT,
    resources: str | None = RESOURCES_OPT,
    storage: str | None = STORAGE_OPT,
    tracking_uri: str | None = TRACKING_OPT,
    name: str | None = NAME_OPT,
    workdir: Path = WORKDIR_OPT,
    dry_run: bool = DRY_RUN_OPT,
    gpu: str | None = GPU_OPT,
    strict: bool = STRICT_OPT,
    until_resolved: bool = typer.Option(
        False,
        "--until-resolved",
        help="Add seed waves to the rows of unresolved contrasts until they resolve, the cap "
        "or the budget is reached (analysis.replicate in the YAML does the same).",
    ),
    max_seeds: int | None = typer.Option(
        None, "--max-seeds", help="--until-resolved: the most seeds any row gets."
    ),
    budget: str | None = typer.Option(
        None, "--budget", help="--until-resolved: trial-hours to spend at most, e.g. 200h, 90m."
    ),
) -> None:
    """Run an ablation grid: rows x seeds (x grid axes) as Ray Tune trials.

    Exit code 0 when every trial finished, 1 when some failed, 130/143 on Ctrl-C/SIGTERM."""
    _ray_driver(address)
    from ablate.launch.driver import launch_grid
    from ablate.launch.replicate import check_replicable, describe, launch_waves

    if (max_seeds is not None or budget is not None) and not until_resolved:
        raise UserError("--max-seeds and --budget go with --until-resolved: add it")
    replicate = [f"analysis.replicate.{key}={value}" for key, value in
                 (("max_seeds", max_seeds), ("budget", budget)) if value is not None]  # fmt: skip
    exp, settings = _experiment(
        space,
        [*(overrides or []), *replicate],
        rows=rows,
        seeds=seeds,
        resources=resources,
        folds=folds,
    )
    if until_resolved or exp.analysis.replicate is not None:
        console.print(describe(check_replicable(exp)), highlight=False, soft_wrap=True)
    _like_for_like(exp, strict, show=not dry_run)  # a dry run's plan prints it
    if dry_run:
        return _dry_run(exp, "grid", name, workdir, tracking_uri, gpu)
    ws = Workspace.create(workdir, tracking_uri, storage)
    options = dict(address=address, name=name, overrides=settings, gpu=gpu)
    if exp.analysis.replicate is not None:
        result = launch_waves(exp, ws, **options, report=_print_decision)
    else:
        result = launch_grid(exp, ws, **options)
    _print_launch(result, workdir)
    _exit_for(result)


@app.command()
@friendly_errors
def search(
    space: Path = typer.Argument(..., help="YAML with a 'search' section."),
    overrides: list[str] | None = OVERRIDES_ARG,
    address: str | None = ADDRESS_OPT,
    confirm_seeds: int = typer.Option(0, "--confirm-seeds", help="Re-run the best over N seeds."),
    resources: str | None = RESOURCES_OPT,
    storage: str | None = STORAGE_OPT,
    study_storage: str | None = typer.Option(
        None,
        "--study-storage",
        help="Optuna study database URL (default: sqlite in workdir). A database every driver "
        "reaches, e.g. postgresql+psycopg2://USER@HOST:PORT/DB, lets another machine resume "
        "or confirm the search; keep the password in PGPASSWORD or ~/.pgpass.",
    ),
    tracking_uri: str | None = TRACKING_OPT,
    name: str | None = NAME_OPT,
    workdir: Path = WORKDIR_OPT,
    dry_run: bool = DRY_RUN_OPT,
    gpu: str | None = GPU_OPT,
) -> None:
    """Optuna (TPE) search with ASHA pruning over the knobs declared in 'search'."""
    _ray_driver(address)
    from ablate.launch.driver import (
        best_search_config,
        confirm_best,
        confirm_defaults,
        launch_search,
    )
    from ablate.launch.preflight import check_study_url

    if confirm_seeds < 0:
        raise UserError("--confirm-seeds must be 0 (no confirm grid) or more")
    exp, settings = _experiment(space, overrides, resources=resources)
    if study_storage:
        check_study_url(study_storage)  # before the workspace: a bad URL creates nothing
    if dry_run:
        return _dry_run(exp, "search", name, workdir, tracking_uri, gpu)
    ws = Workspace.create(workdir, tracking_uri, storage)
    result = launch_search(
        exp, ws, address=address, name=name, overrides=settings, gpu=gpu,
        study_storage=study_storage,
    )  # fmt: skip
    _print_launch(result, workdir)
    if result.status == "interrupted" or not result.n_completed:
        _exit_for(result)
    best = best_search_config(ws, result.name)
    objectives = exp.search.objectives if exp.search else [("", "max")]
    ranked = objectives[0][0] + (
        f" (the first of {len(objectives)} objectives, on the Pareto front)"
        if len(objectives) > 1
        else ""
    )
    console.print(f"best by validation {ranked}: {best}")
    if confirm_seeds and result.status == "completed":
        confirmed = confirm_best(exp, ws, result.name, confirm_seeds, address=address)
        _print_launch(confirmed, workdir)
        _exit_for(confirmed)
        defaults = confirm_defaults(exp, ws, result.name, confirm_seeds, address=address)
        _print_launch(defaults, workdir)
        _exit_for(defaults)
    _exit_for(result)


@app.command()
@friendly_errors
def resume(
    name: str = typer.Argument(..., help="Launch name (run/search --name) or experiment name."),
    address: str | None = ADDRESS_OPT,
    storage: str | None = STORAGE_OPT,
    workdir: Path = WORKDIR_OPT,
) -> None:
    """Resume an interrupted grid or search; no MLflow run is duplicated."""
    _ray_driver(address)
    from ablate.launch.driver import read_record
    from ablate.launch.driver import resume as resume_launch
    from ablate.launch.replicate import is_replicated, resume_waves
    from ablate.launches import resolve_launch

    ws = Workspace.of_launches(workdir, storage)
    launch = resolve_launch(name, ws.storage, ws.tracking_uri)
    replicated = is_replicated(read_record(ws, launch))
    if replicated:
        result = resume_waves(ws, launch, address=address, report=_print_decision)
    else:
        result = resume_launch(ws, launch, address=address)
    _print_launch(result, workdir)
    _exit_for(result)


@app.command()
@friendly_errors
def status(
    name: str = typer.Argument(..., help="Launch name (run/search --name) or experiment name."),
    storage: str | None = STORAGE_OPT,
    workdir: Path = WORKDIR_OPT,
) -> None:
    """Trials of a launch (an experiment's latest): states, PSNR, estimated and actual wall
    time, failures (MLflow)."""
    from rich.table import Table

    from ablate.launch.driver import launch_status
    from ablate.launches import resolve_launch

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} s"

    ws = Workspace.of_launches(workdir, storage)
    launch = resolve_launch(name, ws.storage, ws.tracking_uri)
    rows = launch_status(ws, launch)
    # a cross-validated launch: one table per fold, each saying how many of its trials finished
    folds = sorted({r["fold"] for r in rows if r["fold"] is not None}, key=int)
    groups = [(f, [r for r in rows if r["fold"] == f]) for f in folds]
    rest = [r for r in rows if r["fold"] is None]
    groups += [(None, rest)] if rest or not groups else []
    for fold, group in groups:
        title = f"launch {launch}"
        if fold is not None:
            done = sum(r["status"] == "completed" for r in group)
            title += f", fold {fold}: {done} of {len(group)} trials completed"
        table = Table(title=title)
        for col in ("run", "status", "psnr", "estimated", "actual", "error"):
            right = col in ("estimated", "actual")
            table.add_column(col, justify="right" if right else "left", no_wrap=col != "error")
        for r in group:
            table.add_row(
                r["run"], r["status"], r["psnr"], secs(r["est_s"]), secs(r["actual_s"]), r["error"]
            )
        console.print(table)
    both = [r for r in rows if r["est_s"] is not None and r["actual_s"] is not None]
    if both:
        est, actual = sum(r["est_s"] for r in both), sum(r["actual_s"] for r in both)
        console.print(
            f"{len(both)} trials with both: estimated {secs(est)}, actual {secs(actual)} "
            f"(actual / estimated = {actual / est:.2f})"
        )


@app.command()
@friendly_errors
def export(
    name: str = typer.Argument(..., help="Experiment name, or launch name (run --name)."),
    metric: str | None = typer.Option(
        None,
        "--metric",
        help="Metric that ranks the trials (default psnr; a multi-objective "
        "search asks which objective).",
    ),
    mode: str | None = typer.Option(None, "--mode", help="max or min (default: the metric's)."),
    row: str | None = typer.Option(None, "--row", help="Only trials of this row."),
    data: str | None = typer.Option(
        None, "--data", help="The dataset whose trials compete (needed when there are several)."
    ),
    fold: int | None = typer.Option(
        None,
        "--fold",
        help="Cross-validated study: export this fold's model of the best row instead of the "
        "ensemble of all folds (the default).",
    ),
    model_name: str | None = typer.Option(
        None,
        "--model-name",
        help="Registered model name (default NAME-best; NAME-DATA-best for a dataset other "
        "than the study's first).",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Standalone folder: new, empty or a previous export of the model "
        "(default <workdir>/exports/NAME, or NAME-DATA for another dataset than the "
        "study's first); its parent folder must exist.",
    ),
    storage: str | None = STORAGE_OPT,
    tracking_uri: str | None = TRACKING_OPT,
    workdir: Path = WORKDIR_OPT,
) -> None:
    """Register the best trial as an MLflow pyfunc model ('champion'; 2nd: 'challenger') and
    write a standalone copy. Exporting the same best trial again changes nothing."""
    import shlex

    from ablate import storage as storage_mod
    from ablate.export import default_model_name, export_best, ranking, study_dataset
    from ablate.launches import is_launch, read_launch_record, resolve_study

    if mode not in (None, "max", "min"):
        raise UserError(f"--mode '{mode}': use max or min")
    _quiet_mlflow()
    records = storage_mod.normalize(storage) if storage else None
    if tracking_uri is None and records and is_launch(records, name):
        # another machine: the launch record in the storage names the tracking server
        tracking_uri = read_launch_record(records, name)["context"]["tracking_uri"]
    ws = Workspace.existing(workdir, tracking_uri, storage)
    study = resolve_study(name, ws.storage, ws.tracking_uri)
    metric, mode = ranking(study.tracking_uri, study.experiment, metric, mode)
    dataset = study_dataset(study, data)
    model_name = model_name or default_model_name(name, dataset)
    if out is None:
        out = ws.export_folder(name if dataset.first else f"{name}-{dataset.label}")
        out.parent.mkdir(parents=True, exist_ok=True)
    result = export_best(study, metric, mode, model_name, out, row, dataset, fold)
    for alias, version in result.versions.items():
        state = "new" if result.changed[alias] else "unchanged"
        console.print(
            f"{result.model_name}@{alias} = version {version} ({state}; "
            f"run {result.run_ids[alias]})",
            soft_wrap=True,
        )
    what = "MLflow model + model.pt, config.yaml" if not result.ensemble else result.ensemble
    console.print(
        f"best {result.metric} {result.value:.4f}; standalone copy ({what}) in {result.folder}",
        soft_wrap=True,
    )
    where = f" --tracking-uri {shlex.quote(tracking_uri)}" if tracking_uri else ""
    if not where and workdir != Path("runs"):
        where = f" --workdir {shlex.quote(str(workdir))}"
    print(
        f"Use it with: ablate predict --model models:/{result.model_name}@champion{where} "
        "INPUT OUTPUT"
    )


@app.command()
@friendly_errors
def predict(
    input_path: Path = typer.Argument(
        ..., help="Low-dose volume: .nii, .nii.gz, a DICOM series folder, or .npy."
    ),
    output_path: Path = typer.Argument(
        ...,
        help="Output file (.nii/.nii.gz for NIfTI or DICOM input, .npy for .npy); "
        "folder must exist.",
    ),
    model: str = typer.Option(..., "--model", help="models:/NAME@champion or an export folder."),
    samples: int | None = typer.Option(
        None, "--samples", help="K samples averaged (AMS; default: the row's)."
    ),
    scale: float | None = typer.Option(
        None, "--scale", help="Known full-dose intensity scale (default: estimated)."
    ),
    seed: int = typer.Option(0, "--seed", help="Sampler seed of stochastic rows."),
    series: str | None = typer.Option(
        None,
        "--series",
        help="The series of a DICOM folder holding several (description, number or UID).",
    ),
    clamp: bool = typer.Option(
        True,
        "--clamp/--no-clamp",
        help="Set negative activity to 0 (default); --no-clamp writes the raw model output.",
    ),
    tracking_uri: str | None = TRACKING_OPT,
    workdir: Path = WORKDIR_OPT,
) -> None:
    """Run an exported model on a volume; the output keeps the input's grid and header."""
    from ablate.predict import predict_volume

    _quiet_mlflow()
    uri = tracking_uri_of(workdir, tracking_uri)
    info = predict_volume(
        model, input_path, output_path, uri, samples, scale, seed, series=series, clamp=clamp
    )
    how = "estimated" if info.estimated else "given"
    console.print(
        f"wrote {output_path}: {info.slices} slices, K={info.samples}, "
        f"full-dose scale {info.scale:.4g} ({how}), units {info.units}",
        soft_wrap=True,
    )


@app.command()
@friendly_errors
def demo(
    overrides: list[str] | None = OVERRIDES_ARG,
    rows: str | None = ROWS_OPT,
    workdir: Path = WORKDIR_OPT,
    steps: int | None = typer.Option(None, "--steps", help="Training steps per trial."),
    seeds: int | None = typer.Option(None, "--seeds", help="Seeds per row (default 2)."),
) -> None:
    """Simulate a tiny PET dataset, run every Table-2 row x 2 seeds, print the table."""
    _ray_driver(None)
    from ablate.launch.driver import launch_grid, search_space_path
    from ablate.trials import fold_values
    from dashboards.tables import print_table, table_for

    exp, settings = _experiment(
        search_space_path("demo.yaml"), overrides, rows=rows, seeds=seeds, steps=steps
    )
    ws = Workspace.create(workdir, None)
    folds = f" x {len(fold_values(exp))} folds" if exp.data.folds else ""
    console.print(
        f"[bold]ablate demo[/]: {len(exp.rows)} rows x {len(exp.seeds)} seeds{folds} on an "
        f"embedded Ray, MLflow store {ws.tracking_uri}"
    )
    result = launch_grid(exp, ws, overrides=settings)
    if result.n_completed:
        table = table_for(exp.name, ws.tracking_uri, parent_run_id=result.parent_run_id)
        print_table(table, console)
        _print_contrasts(ws.tracking_uri, exp.name, result.parent_run_id)
    _print_launch(result, workdir)
    _exit_for(result)


@app.command()
@friendly_errors
def evaluate(
    pred: Path = typer.Argument(..., help="Prediction: .npy, .nii or .nii.gz (2D or 3D)."),
    ref: Path = typer.Argument(..., help="Reference (full-dose) image/volume, same shape."),
    convention: str = typer.Option(
        "standard", help="'standard' or 'paper' (paper 003's evaluation; see ablate.metrics)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """PSNR/SSIM/NMSE between two images or volumes, per slice and averaged.

    Volumes are sliced along the last axis for NIfTI (x, y, z) and the first for .npy.
    """
    import json

    from rich.table import Table

    from ablate.volumes import evaluate_files, jsonable

    result = evaluate_files(pred, ref, convention)  # type: ignore[arg-type]
    if as_json:
        print(json.dumps(jsonable(result), indent=2))
        return
    keys = list(result["mean"])
    table = Table(title=f"{pred} vs {ref} ({result['convention']} convention)")
    table.add_column("slice", justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    for row in result["slices"]:
        table.add_row(str(row["slice"]), *(f"{row[k]:.4f}" for k in keys))
    table.add_section()
    table.add_row("mean", *(f"{result['mean'][k]:.4f}" for k in keys), style="bold")
    console.print(table)
    skipped = {k: n for k, n in result["undefined"].items() if n}
    if skipped:
        console.print(f"undefined slices, left out of the mean (empty/flat reference): {skipped}")


# --- results, tables, dashboards (dashboards/) -----------------------------------------------

_WORKDIR_HELP = "Work directory whose MLflow store (mlflow.db) to read."
_URI_HELP = "MLflow tracking URI (overrides --workdir), e.g. http://127.0.0.1:5000."


def _study(name: str, workdir: str, tracking_uri: str, storage: str | None = None) -> Any:
    """The experiment or launch ``name`` refers to; launch records are read from
    ``--storage`` (default <workdir>/ray_results), so a machine that shares nothing with the
    launch's driver finds a cluster launch through the bucket and its tracking server."""
    from ablate.launches import resolve_study

    return resolve_study(name, storage_of(workdir, storage), tracking_uri)


@app.command()
@friendly_errors
def results(
    experiment: str = typer.Argument(..., help="Experiment (study) name in MLflow."),
    out: str = typer.Option("results.parquet", "--out", help="Parquet file to write."),
    workdir: str = typer.Option("runs", "--workdir", help=_WORKDIR_HELP),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help=_URI_HELP),
) -> None:
    """Export a study's trials (config, metrics, run ids) as one Parquet table."""
    from dashboards.results import load_results, save_results

    df = load_results(tracking_uri_of(workdir, tracking_uri), experiment)
    path = save_results(df, out)
    console.print(f"{len(df)} trials of '{experiment}' -> {path}")


@app.command()
@friendly_errors
def table(
    experiment: str = typer.Argument(
        ..., help="Experiment name, launch name (run --name) or a results .parquet file."
    ),
    fmt: str = typer.Option(
        "", "--format", help="md, latex, csv, html or parquet (the tidy frame; default: terminal)."
    ),
    convention: str = typer.Option("standard", "--convention", help="standard or paper."),
    reference: str | None = typer.Option(
        None, "--reference", help="Row tested against (default: the YAML's 'reference:')."
    ),
    data: str | None = typer.Option(
        None, "--data", help="The dataset whose trials to tabulate (default: the study's first)."
    ),
    paper: bool = typer.Option(False, "--paper", help="Show the papers' numbers beside ours."),
    metric: str = typer.Option("psnr", "--metric", help="Metric of the paired test."),
    test: str = typer.Option("t", "--test", help="Paired test: t or wilcoxon."),
    part: str | None = typer.Option(
        None, "--part", help="Only the grids' table, a search's trials or its confirm grid."
    ),
    out: str | None = typer.Option(None, "--out", help="Write to this file instead."),
    storage: str | None = STORAGE_OPT,
    workdir: str = typer.Option("runs", "--workdir", help=_WORKDIR_HELP),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help=_URI_HELP),
) -> None:
    """The ablation table: mean +- std over seeds, best marked, paired test vs a reference.
    For an Optuna search: its trials sorted by the objective, then its confirm grid."""
    from pathlib import Path

    from dashboards.study import print_tables, render_tables, tables_for

    if convention not in ("standard", "paper"):
        raise UserError(f"--convention '{convention}' is not one of: standard, paper")
    if test not in ("t", "wilcoxon"):
        raise UserError(f"--test '{test}' is not one of: t, wilcoxon")
    if out and not fmt:
        suffixes = {".tex": "latex", ".csv": "csv", ".html": "html", ".parquet": "parquet"}
        fmt = suffixes.get(Path(out).suffix, "md")
    uri, parent = tracking_uri_of(workdir, tracking_uri), None
    if not experiment.endswith(".parquet"):
        study = _study(experiment, workdir, uri, storage)
        experiment, uri, parent = study.experiment, study.tracking_uri, study.parent_run_id
    if fmt == "parquet":
        _write_tidy(experiment, uri, parent, out)
        return
    result = tables_for(
        experiment,
        uri,
        part=part,
        parent_run_id=parent,
        data=data,
        convention=convention,  # type: ignore[arg-type]
        reference=reference,
        paper=paper,
        metric=metric,
        paired_test=test,  # type: ignore[arg-type]
    )
    others = [o for t in result for o in getattr(t, "other_datasets", [])]
    if others:  # on stderr: the table itself stays what it was before the other data came
        Console(stderr=True, soft_wrap=True).print(
            f"note: '{experiment}' also holds trials on other data, each its own table: "
            + ", ".join(f"--data {o}" for o in others),
            highlight=False,
        )
    if not fmt:
        print_tables(result, console)
        return
    text = render_tables(result, fmt)  # type: ignore[arg-type]
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        console.print(f"table ({fmt}) -> {out}")
    else:
        print(text, end="")


def _print_contrasts(tracking_uri: str, experiment: str, parent_run_id: str) -> None:
    """The launch's contrasts, claims and variance shares, as ``ablate table`` shows them."""
    from rich.console import Console

    from dashboards import contrasts

    analysis = contrasts.launch_analysis(tracking_uri, experiment, parent_run_id)
    wide = console if console.is_terminal else Console(width=max(console.width, 200))
    for part in contrasts.tables(experiment, analysis):
        wide.print(contrasts.to_rich(part))


def _write_tidy(source: str, tracking_uri: str, parent: str | None, out: str | None) -> None:
    """``ablate table NAME --format parquet``: the tidy frame (README "The tidy results")."""
    from pathlib import Path

    from dashboards.study import tidy_for

    frame = tidy_for(source, tracking_uri, parent)
    path = Path(out or f"{Path(source).stem}.parquet")
    if source.endswith(".parquet") and path.resolve() == Path(source).resolve():
        raise UserError(f"--out {path} is the file being read: choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    levels = frame["level"].value_counts()
    counts = ", ".join(f"{levels.get(k, 0)} {k}" for k in ("trial", "subject", "sample"))
    console.print(f"tidy results ({counts} lines) -> {path}")


@app.command()
@friendly_errors
def count(
    rows: list[str] = typer.Argument(None, help="Rows to count (default: every row)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """Parameters (M, thop convention) and GMACs per full inference of each row at paper scale,
    next to the paper's numbers (paper 003 Table 2 at 128x128; PMDM rows at 256x256)."""
    import json

    from rich import box
    from rich.table import Table

    from ablate.planning.complexity import count_rows

    with console.status("building rows at paper scale and counting on the meta device..."):
        result = count_rows(rows or None)
    if as_json:
        print(json.dumps(result, indent=2))
        return

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    table = Table(
        title="Parameters and GMACs at paper scale (conv + linear, as thop counts; "
        "--json adds the total parameter count)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    table.add_column("row", no_wrap=True)
    for name in ("size", "MParam", "paper", "diff", "GMACs", "paper", "diff"):
        table.add_column(name, justify="right")
    for r in result:
        table.add_row(
            r["row"],
            str(r["image_size"]),
            num(r["params_m"], ".3f"),
            num(r["paper_params_m"], ".3f"),
            num(r["params_rel_diff"], "+.2%"),
            num(r["gmacs"], ".1f"),
            num(r["paper_gflops"], ".0f"),
            num(r["gmacs_rel_diff"], "+.2%"),
        )
    console.print(table)


@app.command()
@friendly_errors
def dashboard(
    experiment: str = typer.Argument(..., help="Experiment name or launch name (run --name)."),
    out: str | None = typer.Option(
        None, "--out", help="Folder (default <workdir>/dashboards/NAME)."
    ),
    convention: str = typer.Option("standard", "--convention", help="standard or paper."),
    storage: str | None = STORAGE_OPT,
    workdir: str = typer.Option("runs", "--workdir", help=_WORKDIR_HELP),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help=_URI_HELP),
) -> None:
    """A self-contained static HTML dashboard of a study (works offline)."""

    from dashboards.html import build_dashboard

    if convention not in ("standard", "paper"):
        raise UserError(f"--convention '{convention}' is not one of: standard, paper")
    folder = out or str(Workspace.at(workdir).dashboard_folder(experiment))
    study = _study(experiment, workdir, tracking_uri_of(workdir, tracking_uri), storage)
    index = build_dashboard(
        study.experiment,
        study.tracking_uri,
        folder,
        convention=convention,  # type: ignore[arg-type]
        parent_run_id=study.parent_run_id,
        name=study.name,
    )
    console.print(f"dashboard -> {index} (open it in a browser; no network needed)")


@app.command()
@friendly_errors
def ui(
    port: int = typer.Option(5000, "--port", help="Port of the MLflow UI."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (0.0.0.0: all)."),
    workdir: str = typer.Option("runs", "--workdir", help=_WORKDIR_HELP),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help=_URI_HELP),
) -> None:
    """Start the MLflow UI on the study store (bound to 127.0.0.1 unless told otherwise).

    Ctrl-C or SIGTERM stops the server and every process it started."""
    from ablate.mlflow_ui import serve, study_links
    from ablate.ui_links import runs_page_url
    from dashboards.results import mlflow_ui_command

    cmd = mlflow_ui_command(workdir, host, port, tracking_uri)
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(
            f"[yellow]warning:[/] the MLflow UI is reachable by anyone who can reach {host}"
        )
    base = f"http://{host}:{port}"
    console.print(f"MLflow UI on {runs_page_url(base)} (Ctrl-C stops it)", highlight=False)
    for name, url in study_links(tracking_uri_of(workdir, tracking_uri), base):
        console.print(f"  study '{name}': {url}", highlight=False, soft_wrap=True)
    raise typer.Exit(serve(cmd))


@data_app.command("simulate")
@friendly_errors
def data_simulate(
    out: Path = typer.Option(..., "--out", help="Dataset folder to create (must not exist)."),
    preset: str = typer.Option("tiny", "--preset", help="tiny, lowdose-128 or sinogram-256."),
    seed: int = typer.Option(0, "--seed", help="Subject k is reproducible from (seed, k)."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a simulator knob: --set subjects=10 --set dose_reduction=50."
    ),
) -> None:
    """Simulate a PET dataset (brain phantoms, Poisson counts, OSEM) with the offline simulator."""
    from rich.progress import Progress

    from ablate.data.simulate import parse_overrides, simulate_dataset

    overrides = parse_overrides(set_)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"simulating {preset}", total=None)
        root = simulate_dataset(
            preset, seed, overrides, out, lambda k, n: bar.update(task, completed=k, total=n)
        )
    console.print(f"dataset -> {root} (inspect it with `ablate data info {root}`)")


@data_app.command("import")
@friendly_errors
def data_import(
    source: Path = typer.Argument(..., help="Folder of NIfTI files / DICOM series folders."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to create (must not exist)."),
    pairs: Path | None = typer.Option(
        None,
        "--pairs",
        help="CSV with columns subject, spet and optionally lpet, sinogram, split, mask "
        "(paths relative to the CSV).",
    ),
    masks: Path | None = typer.Option(
        None,
        "--masks",
        help="Folder of lesion label NIfTIs, SUBJECT.nii.gz on the full-dose grid (0 = none): "
        "lesion metrics.",
    ),
    pair_by: str = typer.Option(
        "{subject}_{dose}", "--pair-by", help="Naming rule, e.g. '{subject}_{dose}' (low/full)."
    ),
    size: int = typer.Option(128, "--size", help="Slice size after resampling (pixels)."),
    split: str = typer.Option("0.7,0.1,0.2", "--split", help="train,val,test fractions."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subject split."),
    dose_reduction: float | None = typer.Option(
        None, "--dose-reduction", help="Dose reduction factor of the low-dose scans (recorded)."
    ),
    units: str = typer.Option(
        "native",
        "--units",
        help="native (as stored, e.g. Bq/mL) or suv (SUVbw from the DICOM tags or the "
        "NIfTI's _pet.json sidecar).",
    ),
    series: str | None = typer.Option(
        None,
        "--series",
        help="The series to read from DICOM folders holding several: its description, "
        "number or UID.",
    ),
    full: str | None = typer.Option(
        None, "--full", help="PET-BIDS source: the entity of the full-dose scans, e.g. acq-std."
    ),
    low: str | None = typer.Option(
        None, "--low", help="PET-BIDS source: the entity of the low-dose scans, e.g. acq-low."
    ),
) -> None:
    """Import your own volumes (NIfTI, DICOM series, a PET-BIDS tree) as an ablate dataset."""
    from ablate.data.format import read_provenance
    from ablate.data.importing import attach_masks, import_dataset, pairs_by_name, pairs_from_csv

    try:
        fractions = tuple(float(f) for f in split.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise UserError(f"--split '{split}': three fractions adding up to 1, e.g. 0.7,0.1,0.2")
    if not source.is_dir():
        raise UserError(f"{source}: not a folder")
    from ablate.data.bids import is_bids, pairs_from_bids

    if full is not None:
        found = pairs_from_bids(source, full, low)
    elif low is not None:
        raise UserError("--low needs --full: give the entity of both doses, e.g. --full acq-std")
    elif is_bids(source) and pairs is None:
        raise UserError(
            f"{source} is a BIDS tree: say which scans are which, e.g. --full acq-std --low acq-low"
        )
    else:
        found = pairs_from_csv(pairs) if pairs is not None else pairs_by_name(source, pair_by)
    if masks is not None:
        found = attach_masks(found, masks)
    root = import_dataset(
        out, found, size, fractions, seed, dose_reduction, str(source), units, series
    )
    provenance = read_provenance(root)
    skipped = provenance["skipped_files"]
    console.print(
        f"imported {len(found)} subjects -> {root} (units: {provenance['units']})", soft_wrap=True
    )
    if skipped:
        names = sorted({Path(name).name for name in skipped})
        console.print(
            f"skipped {len(skipped)} non-image files in DICOM folders ({', '.join(names)})",
            soft_wrap=True,
            highlight=False,
        )
    _print_constant_slices(root)


def _print_constant_slices(root: Path) -> None:
    from ablate.data.inspection import constant_slices_report

    for line in constant_slices_report(root):
        console.print(f"[yellow]note[/]: {line}", highlight=False, soft_wrap=True)


@data_app.command("info")
@friendly_errors
def data_info(path: Path = typer.Argument(..., help="A dataset folder.")) -> None:
    """Subjects, splits, shapes, intensity statistics and provenance of a dataset."""
    import json

    from rich.table import Table

    from ablate.data.inspection import dataset_info

    info = dataset_info(path)
    console.print(f"[bold]{info['path']}[/]: {info['subjects']} subjects, {info['slices']} slices")
    parts = [f"{k} {v['subjects']} ({v['slices']} slices)" for k, v in info["splits"].items()]
    console.print(f"splits: {', '.join(parts)}")
    console.print(f"units: {info['provenance'].get('units', 'unknown')}", highlight=False)
    table = Table("array", "shape", "min", "mean", "p99", "max")
    for kind, s in info["arrays"].items():
        values = (f"{s[k]:.4g}" for k in ("min", "mean", "p99", "max"))
        table.add_row(kind, "x".join(map(str, s["shape"])), *values)
    console.print(table)
    _print_constant_slices(path)
    prov = {k: v for k, v in info["provenance"].items() if k not in ("lesions", "subjects")}
    console.print_json(json.dumps(prov, default=str))


if __name__ == "__main__":
    app()
