"""The commands that plan and run launches: ``plan``, ``run``, ``search``, ``resume``,
``status`` and ``demo``. The CLI is the one layer above both the driver and the trainable and
reports, so it hands them to the driver here (:func:`standard_job`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ablate.cli.app import (
    ADDRESS_OPT,
    DRY_RUN_OPT,
    FOLDS_OPT,
    GPU_OPT,
    NAME_OPT,
    OVERRIDES_ARG,
    RESOURCES_OPT,
    ROWS_OPT,
    STORAGE_OPT,
    STRICT_OPT,
    TRACKING_OPT,
    WORKDIR_OPT,
    console,
    exit_for,
    friendly_errors,
)
from ablate.cli.reports import print_contrasts
from ablate.cli.settings import experiment_with_settings
from ablate.errors import UserError
from ablate.launch.interrupts import Interrupted
from ablate.launch.job import Job
from ablate.workspace import Workspace, tracking_uri_of


def standard_job() -> Job:
    """What every launch of the CLI runs: the project's Ray trainable, the report on the parent
    run and the table's analysis (for seed waves). The CLI is the layer above both the driver
    and them, so it is the one that hands them over (:mod:`ablate.launch.job`)."""
    from dashboards.contrasts import launch_analysis
    from dashboards.mlflow_report import attach_report
    from trainables.ablation import train_trial

    return Job(train=train_trial, attach_report=attach_report, analyse=launch_analysis)


def _ray_driver(address: str | None) -> None:
    """Before anything imports Ray (see :mod:`ablate.launch.local_ray`): SIGTERM reaches ablate's
    handler; without ``--address`` the embedded Ray binds 127.0.0.1."""
    from ablate.launch.local_ray import prepare_driver

    prepare_driver(embedded=address is None)


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
    from ablate.planning.printing import dry_run_summary, print_plan

    plan = plan_launch(exp, gpu=gpu, search=kind == "search", workdir=workdir)
    print_plan(plan, console)
    for line in dry_run_summary(exp, plan, kind, name, workdir, tracking_uri):
        console.print(line, highlight=False, soft_wrap=True)


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

    from ablate.planning import estimates, printing

    if (effect is not None or pilot is not None) and not power:
        raise UserError("--effect and --pilot go with --power: add --power")
    if power and effect is None:
        raise UserError("--power needs --effect: the effect to detect, e.g. --effect 0.3")
    options = dict(rows=rows, seeds=seeds, resources=resources, folds=folds)
    exp, _ = experiment_with_settings(space, overrides, **options)
    plan_options = dict(gpu=gpu, devices=gpus, mfu=mfu, workdir=workdir)
    if compare_designs:
        if exp.design is None:
            raise UserError(
                f"{space} has no design: to compare: add design: {{full: ROW, factors: "
                "[SWITCH, ...], kind: factorial}"
            )

        def load(keys: dict[str, Any]) -> Any:
            return experiment_with_settings(space, overrides, **options, design=keys)[0]

        costs = estimates.compare_designs(load, exp.design, **plan_options)
        printing.print_design_costs(costs, console)
        return
    if power:
        assert effect is not None
        frame, source = _pilot(pilot, workdir, tracking_uri)
        found = estimates.power_plan(exp, frame, source, effect, metric, **plan_options)
        printing.print_power(found, console)
        return
    _like_for_like(exp, strict and not search, show=False)  # the plan prints it
    result = estimates.plan_launch(exp, search=search, **plan_options)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return
    printing.print_plan(result, console)


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
    exp, settings = experiment_with_settings(
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
    options = dict(address=address, name=name, overrides=settings, gpu=gpu, job=standard_job())
    if exp.analysis.replicate is not None:
        result = launch_waves(exp, ws, **options, report=_print_decision)
    else:
        result = launch_grid(exp, ws, **options)
    _print_launch(result, workdir)
    exit_for(result)


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
    exp, settings = experiment_with_settings(space, overrides, resources=resources)
    if study_storage:
        check_study_url(study_storage)  # before the workspace: a bad URL creates nothing
    if dry_run:
        return _dry_run(exp, "search", name, workdir, tracking_uri, gpu)
    ws = Workspace.create(workdir, tracking_uri, storage)
    result = launch_search(
        exp, ws, address=address, name=name, overrides=settings, gpu=gpu,
        study_storage=study_storage, job=standard_job(),
    )  # fmt: skip
    _print_launch(result, workdir)
    if result.status == "interrupted" or not result.n_completed:
        exit_for(result)
    best = best_search_config(ws, result.name)
    objectives = exp.search.objectives if exp.search else [("", "max")]
    ranked = objectives[0][0] + (
        f" (the first of {len(objectives)} objectives, on the Pareto front)"
        if len(objectives) > 1
        else ""
    )
    console.print(f"best by validation {ranked}: {best}")
    if confirm_seeds and result.status == "completed":
        confirmed = confirm_best(
            exp, ws, result.name, confirm_seeds, address=address, job=standard_job()
        )
        _print_launch(confirmed, workdir)
        exit_for(confirmed)
        defaults = confirm_defaults(
            exp, ws, result.name, confirm_seeds, address=address, job=standard_job()
        )
        _print_launch(defaults, workdir)
        exit_for(defaults)
    exit_for(result)


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
        result = resume_waves(
            ws, launch, address=address, report=_print_decision, job=standard_job()
        )
    else:
        result = resume_launch(ws, launch, address=address, job=standard_job())
    _print_launch(result, workdir)
    exit_for(result)


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

    exp, settings = experiment_with_settings(
        search_space_path("demo.yaml"), overrides, rows=rows, seeds=seeds, steps=steps
    )
    ws = Workspace.create(workdir, None)
    folds = f" x {len(fold_values(exp))} folds" if exp.data.folds else ""
    console.print(
        f"[bold]ablate demo[/]: {len(exp.rows)} rows x {len(exp.seeds)} seeds{folds} on an "
        f"embedded Ray, MLflow store {ws.tracking_uri}"
    )
    result = launch_grid(exp, ws, overrides=settings, job=standard_job())
    if result.n_completed:
        table = table_for(exp.name, ws.tracking_uri, parent_run_id=result.parent_run_id)
        print_table(table, console)
        print_contrasts(ws.tracking_uri, exp.name, result.parent_run_id)
    _print_launch(result, workdir)
    exit_for(result)
