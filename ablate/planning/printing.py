"""What a plan says, printed: the per-trial table and its totals (``ablate plan``), what a
``--dry-run`` adds (Ray resources, the MLflow experiment it would write to), the designs side
by side (``--compare-designs``) and the seeds each contrast needs (``--power``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ablate.analysis import power
from ablate.analysis.study import format_value
from ablate.config import ExperimentConfig
from ablate.planning.estimates import DesignCost, LaunchPlan, PowerPlan
from ablate.sqlite_urls import sqlite_file
from ablate.workspace import Workspace

# --- the plan -----------------------------------------------------------------------------


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def print_plan(plan: LaunchPlan, console: Any) -> None:
    """The plan as a table (one line per trial; a search's samples, alike, as one line),
    then the sources of its numbers, the totals and the assumptions."""
    from rich import box
    from rich.table import Table

    on = plan.device if plan.device != "cpu" else "this CPU"
    trials = plan.trials[:1] if plan.kind == "search" else plan.trials
    steps = sorted({(t.steps, t.batch) for t in plan.trials})
    if len(steps) == 1:
        every = f", {steps[0][0]:,} steps at batch {steps[0][1]} each"
    else:
        every = ""
    table = Table(
        title=f"Plan: {plan.name} ({plan.kind}) on {on}{every}",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    measured_mem = any(t.measured_memory_gb is not None for t in plan.trials)
    columns = ["trial", "MParam", "GMACs", "PFLOP", "GB"]
    columns += ["meas"] if measured_mem else []
    columns += ["it/s", "time", "src"]
    for col in columns:
        table.add_column(col, justify="left" if col == "trial" else "right", no_wrap=True)
    sources: dict[str, int] = {}
    for t in trials:
        ref = sources.setdefault(t.train_source, len(sources) + 1)
        mem = f"{t.memory_gb:.1f}" if t.memory_gb >= 0.1 else f"{t.memory_gb:.2f}"
        cells = [
            t.name if plan.kind == "grid" else f"{len(plan.trials)} x {t.row}-s{t.seed}",
            f"{t.params_m:.2f}",
            f"{t.gmacs:.1f}" if t.gmacs < 100 else f"{t.gmacs:.0f}",
            f"{t.train_pflop + t.eval_pflop:.3g}",
            mem if t.fits else f"[red]{mem}[/]",
        ]
        if measured_mem:
            m = t.measured_memory_gb
            cells.append("-" if m is None else f"{m:.1f}")
        cells += [f"{t.it_per_s:.3g}", _hms(t.total_s), f"[{ref}]"]
        table.add_row(*cells)
    console.print(table)
    for text, ref in sources.items():
        console.print(f"  [{ref}] it/s {text}", highlight=False, soft_wrap=True)
    evals = sorted({t.eval_source for t in plan.trials})
    console.print(f"  evaluation: {'; '.join(evals)}", highlight=False, soft_wrap=True)
    console.print(
        "  GMACs: one reconstruction of one image; PFLOP: training (3 x 2 x forward MACs x "
        "batch x steps) + evaluation; GB: estimated peak memory"
        + ("; meas: measured by the same record" if measured_mem else ""),
        highlight=False,
        soft_wrap=True,
    )
    d = plan.data
    console.print(
        f"dataset: {d.source}, {d.image_size}x{d.image_size}, "
        f"{sum(d.slices.values())} slices, build {_hms(d.build_s)} ({d.build_note})",
        highlight=False,
        soft_wrap=True,
    )
    unit = "GPU-hours" if plan.device != "cpu" else "CPU trial-hours"
    total = f"[bold]{len(plan.trials)} trials, {plan.gpu_hours:,.1f} {unit}[/]"
    if plan.search is not None:
        s = plan.search
        total += (
            f" if no trial is pruned; with ASHA (rungs at validations {s['rungs']} of "
            f"{s['validations']}) ~{100 * s['expected_fraction']:.0f}% of that: "
            f"~{plan.gpu_hours * s['expected_fraction']:,.1f} {unit}"
        )
    console.print(total, soft_wrap=True)
    console.print(
        f"wall time: {_hms(plan.wall_s)} on {plan.devices} "
        f"{'GPU(s)' if plan.device != 'cpu' else 'CPU core(s)'} "
        f"({plan.slots} trial(s) at a time, dataset build included)",
        highlight=False,
        soft_wrap=True,
    )
    res = plan.resources
    line = f"resources per trial: cpu={res['cpu']:g}, gpu={res['gpu']:g}"
    if plan.suggested_gpu is not None and plan.suggested_gpu != res["gpu"]:
        line += (
            f"; suggested --resources cpu={res['cpu']:g},gpu={plan.suggested_gpu:g} "
            f"({int(round(1 / plan.suggested_gpu))} trials per GPU fit in memory)"
        )
    console.print(line, highlight=False, soft_wrap=True)
    for note in plan.assumptions:
        console.print(f"  assuming {note}", highlight=False, soft_wrap=True)
    for t in trials:
        for note in t.notes:
            console.print(f"  {t.name}: {note}", highlight=False, soft_wrap=True)
    for line in plan.like_for_like:
        style = "yellow" if line.startswith("warning:") else None
        console.print(line, style=style, highlight=False, soft_wrap=True)
    for line in plan.design:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


# --- a dry run ----------------------------------------------------------------------------


def dry_run_summary(
    exp: ExperimentConfig,
    plan: LaunchPlan,
    kind: str,
    name: str | None,
    workdir: Path,
    tracking_uri: str | None,
) -> list[str]:
    """What ``ablate run/search --dry-run`` adds to the plan: the Ray resources each trial
    asks for and where MLflow would write; it creates nothing (not even ``workdir``)."""
    ws = Workspace.at(workdir, tracking_uri)
    res = exp.resources
    concurrent = f", at most {res.max_concurrent} at a time" if res.max_concurrent else ""
    trials = plan.search["samples"] if plan.search else len(plan.trials)
    what = "Optuna + ASHA search samples" if kind == "search" else "grid trials"
    return [
        f"Ray: {trials} {what}, each asking tune.with_resources("
        f"{{'cpu': {res.cpu:g}, 'gpu': {res.gpu:g}}}){concurrent}",
        f"MLflow: experiment '{exp.name}' {_experiment_state(ws.tracking_uri, exp.name)}; "
        f"parent run '{name or exp.name}-<time>', one child run per trial",
        f"Ray results: {ws.launch_results(name or exp.name)}",
        "dry run: nothing started, no dataset built, no MLflow run created",
    ]


def _experiment_state(tracking_uri: str, experiment: str) -> str:
    """Whether the launch would add to an existing experiment of the store or create it (and
    the store), read without creating either: a sqlite store that is not there is not opened."""
    from ablate import run_queries, tracking

    db = sqlite_file(tracking_uri)
    if db is not None and not db.is_file():
        return f"would be created, in a new store {tracking_uri}"
    try:
        tracking.check_server(tracking_uri)  # a server that does not answer: seconds
        mlf = tracking.client(tracking_uri)
        found = mlf.get_experiment_by_name(experiment)
    except Exception as err:  # noqa: BLE001 - a dry run reports, the launch's preflight refuses
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"in {tracking_uri}: unknown, the store cannot be read ({reason})"
    if found is None:
        return f"would be created in {tracking_uri}"
    if found.lifecycle_stage == "deleted":
        return f"exists in {tracking_uri} but is deleted: restore it or pick another name"
    launches = run_queries.find_runs(
        tracking_uri, found.experiment_id, {tracking.TAG_KIND: "launch"}, max_results=1000
    )
    return f"exists in {tracking_uri} ({len(launches)} earlier launch(es); this one adds to it)"


# --- designs compared ---------------------------------------------------------------------


def _wide(console: Any) -> Any:
    """``console``, or one 200 columns wide when it writes to a pipe (as the tables do)."""
    from rich.console import Console

    if console.is_terminal:
        return console
    return Console(width=max(console.width, 200), file=console.file)


def print_design_costs(costs: list[DesignCost], console: Any) -> None:
    """The designs side by side: rows, trials, hours."""
    from rich import box
    from rich.table import Table

    console = _wide(console)
    unit = next((c.unit for c in costs if c.unit), "GPU-hours")
    table = Table(title="Designs compared (every row of the launch x seeds)", box=box.SIMPLE_HEAD)
    for col in ("design", "rows", "trials", unit, "note"):
        table.add_column(col, justify="left" if col in ("design", "note") else "right")
    for c in costs:
        hours = "–" if not math.isfinite(c.hours) else f"{c.hours:,.2f}"
        rows = str(c.rows) if c.trials else "–"
        table.add_row(c.kind.replace("_", "-"), rows, str(c.trials or "–"), hours, c.note)
    console.print(table)


# --- power before launch ------------------------------------------------------------------


def print_power(pp: PowerPlan, console: Any) -> None:
    """One line per contrast: seeds, test subjects, and the launch at those seeds."""
    from rich import box
    from rich.table import Table

    console = _wide(console)
    size = format_value(pp.metric, pp.effect)
    over = {n.components.over for n in pp.needs}
    console.print(
        f"Power: seeds and test subjects to detect {size} of {pp.metric} at "
        f"{power.POWER:.0%} power, level {pp.alpha:.3g} (0.05 / {len(pp.needs)} contrasts, "
        f"Holm's strictest step); variance of the {pp.source}"
        + (", trial means: its seed variance holds its test set's" if "trial means" in over
           else ""),
        highlight=False,
        soft_wrap=True,
    )  # fmt: skip
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    at = f"seeds at {pp.subjects} subj."
    heads = ("contrast", "seeds", "test subjects", "trials", pp.unit, at, "variance")
    for col in heads:
        table.add_column(
            col, justify="left" if col in ("contrast", "variance") else "right", no_wrap=True
        )
    for need in pp.needs:
        seeds = need.seeds
        cost = ["–", "–"] if seeds is None else [
            f"{pp.trials_per_seed * seeds:,.0f}", f"{pp.hours_per_seed * seeds:,.2f}"
        ]  # fmt: skip
        count = "–" if seeds is None else str(seeds)
        launch = "none" if need.at_launch is None else str(need.at_launch)
        subjects = "–" if seeds is None else str(need.subjects)
        table.add_row(need.name, count, subjects, *cost, launch, need.components.source)
    console.print(table)
    reachable = [n for n in pp.needs if n.seeds is not None]
    if reachable:
        most = max(n.seeds for n in reachable)
        subjects = max(n.subjects for n in reachable)
        console.print(
            f"every reachable contrast: {most} seeds x {subjects} test subjects: "
            f"{pp.trials_per_seed * most:,.0f} trials, {pp.hours_per_seed * most:,.2f} {pp.unit} "
            f"(this launch: {pp.seeds} seeds x {pp.subjects} test subjects, "
            f"{pp.trials_per_seed * pp.seeds:,.0f} trials, {pp.hours_per_seed * pp.seeds:,.2f} "
            f"{pp.unit}); more test subjects cost evaluation, not training",
            highlight=False,
            soft_wrap=True,
        )
    if len(reachable) < len(pp.needs):
        console.print(
            f"'–': out of reach below {power.MOST_SUBJECTS:,} test subjects",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"test subjects: the fewest (at least the launch's) at which the seeds needed are within "
        f"{power.WITHIN:g}x the fewest any number of subjects allows; 'seeds at {pp.subjects} "
        "subj.': on the launch's own test set ('none': no number of seeds there)",
        highlight=False,
        soft_wrap=True,
    )
