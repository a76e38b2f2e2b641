"""Adaptive replication: a grid launch that adds seed waves until its contrasts resolve.

``ablate run SPACE --until-resolved --max-seeds 10 --budget 200h`` (or ``analysis.replicate:``
in the YAML) is one launch: one MLflow parent run, whose trials are the waves' trials. Wave 1
is the YAML's rows x seeds, run as any grid launch (:func:`ablate.launch.driver.launch_grid`).
After each wave the launch is analysed as ``ablate table`` analyses it (the job's
``analyse``, which the CLI sets to :func:`dashboards.contrasts.launch_analysis`) and
:func:`ablate.analysis.replication.decide` says which rows the next wave gives which new
seeds, or why replication stops.

Each wave is its own Ray Tune experiment (wave 1 at ``<storage>/<name>``, wave k at
``<storage>/<name>/wave<k>``), all under the one parent run. The waves and decisions are kept
in the launch record (``replication``: what ``ablate resume`` continues from: the last wave is
restored, or started when the driver stopped before it had), and on the parent run: the tags
:data:`ablate.tracking.TAG_REPLICATION_WAVES` and :data:`ablate.tracking.TAG_REPLICATION_STOP`
(the stop reason the table's notes show) and the artifact ``<name>.replication.json`` (every
wave and every decision with each contrast's state).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from ablate import run_queries, tracking
from ablate import storage as storage_mod
from ablate.analysis.replication import Decision, decide
from ablate.config import ExperimentConfig, ReplicateConfig, parse_experiment
from ablate.errors import UserError
from ablate.launch.driver import (
    REUSE_ACTORS,
    LaunchResult,
    fit,
    launch_grid,
    preflight_launch,
    read_record,
    resume_hint,
    run_config,
    trainable,
    trial_name,
    write_record,
)
from ablate.launch.interrupts import Interrupted, stoppable
from ablate.launch.job import Job
from ablate.training.context import LaunchContext
from ablate.trials import ROW, SEED, expand
from ablate.workspace import Workspace

#: The launch record's key of the waves and decisions.
RECORD_KEY = "replication"
#: Trial statuses whose wall time the budget counts.
FINISHED = ("completed", "failed", "pruned")
#: What a launch calls with each decision (the CLI prints it).
Report = Callable[[Decision], None]


def check_replicable(exp: ExperimentConfig) -> ReplicateConfig:
    """The launch's replication settings; a launch whose trials are more than rows x seeds
    (grid axes) is refused: its contrasts would pool the axes' values."""
    replicate = exp.analysis.replicate
    if replicate is None:
        raise UserError(
            "--until-resolved needs a seed cap: add --max-seeds N (or analysis.replicate: "
            "{max_seeds: N} in the YAML)"
        )
    if exp.grid:
        raise UserError(
            f"--until-resolved replicates rows x seeds, and this launch has grid axes "
            f"({', '.join(exp.grid)}): drop grid:, or make each value a row"
        )
    if len(exp.seeds) > replicate.max_seeds:
        raise UserError(
            f"seeds: {exp.seeds} are more than --max-seeds {replicate.max_seeds}: raise the cap "
            "or list fewer seeds"
        )
    return replicate


def describe(replicate: ReplicateConfig) -> str:
    """The replication a launch will do, in one line (printed before it starts)."""
    budget = "no budget"
    if replicate.budget_hours is not None:
        budget = f"{replicate.budget_hours:g} trial-hours (the summed wall time of its trials)"
    return (
        "replication: seed waves until every contrast and claim resolves, at most "
        f"{replicate.max_seeds} seeds per row, {budget}"
    )


@stoppable
def launch_waves(
    exp: ExperimentConfig,
    ws: Workspace,
    *,
    address: str | None = None,
    name: str | None = None,
    overrides: dict[str, Any] | None = None,
    gpu: str | None = None,
    report: Report | None = None,
    job: Job,
) -> LaunchResult:
    """Run wave 1 (the YAML's rows x seeds) as a grid launch, then waves until the decision
    stops (the module's rule); ``report`` is called with each decision (the CLI prints it).
    Signals: as :func:`ablate.launch.driver.launch_grid`."""
    check_replicable(exp)
    name = name or exp.name
    started = time.perf_counter()
    first = launch_grid(exp, ws, address=address, name=name, overrides=overrides, gpu=gpu, job=job)
    return _drive(ws, name, address, first, report, started, job)


@stoppable
def resume_waves(
    ws: Workspace,
    name: str,
    *,
    job: Job,
    address: str | None = None,
    report: Report | None = None,
) -> LaunchResult:
    """Continue a replicated launch where it stopped: the wave it was in (restored, or started
    if the driver stopped before it had), then the waves that follow."""
    started = time.perf_counter()
    record = read_record(ws, name)
    ctx = LaunchContext(**record["context"])
    preflight_launch(ctx.tracking_uri, ws.storage, address, job)
    return _drive(ws, name, address, None, report, started, job)


def is_replicated(record: dict[str, Any]) -> bool:
    """Whether a launch record is of a launch that runs seed waves."""
    return bool(((record.get("experiment") or {}).get("analysis") or {}).get("replicate"))


def _state(record: dict[str, Any], exp: ExperimentConfig) -> dict[str, Any]:
    """The record's waves and decisions (wave 1 is the YAML's rows x seeds)."""
    first = {"wave": 1, "rows": list(exp.rows), "seeds": list(exp.seeds), "ray_name": ""}
    return record.setdefault(RECORD_KEY, {"waves": [first], "decisions": []})


def _drive(
    ws: Workspace,
    name: str,
    address: str | None,
    result: LaunchResult | None,
    report: Report | None,
    started: float,
    job: Job,
) -> LaunchResult:
    """The wave loop from the record's state. ``result``: how wave 1 just ended, if it ran in
    this process (which began the launch at ``started``); ``report`` is shown each decision.
    A signal between waves ends the parent run ``interrupted`` with the resume command, as a
    signal inside a wave does."""
    record = read_record(ws, name)
    exp = parse_experiment(record["experiment"], source="launch record")
    ctx = LaunchContext(**record["context"])
    try:
        return _waves(exp, ws, name, ctx, record, address, result, report, started, job)
    except Interrupted as stop:
        if stop.hint:  # stopped in a wave's fit, which ended the runs and named the resume
            raise
        hint = resume_hint(ws, name)  # between waves: the parent is ended here
        why = f"interrupted by {stop.signal_name} between seed waves; continue with: {hint}"
        tracking.finish_run(ctx.tracking_uri, ctx.parent_run_id, "interrupted", why)
        raise Interrupted(stop.signum, hint) from None


def _waves(
    exp: ExperimentConfig,
    ws: Workspace,
    name: str,
    ctx: LaunchContext,
    record: dict[str, Any],
    address: str | None,
    result: LaunchResult | None,
    report: Report | None,
    started: float,
    job: Job,
) -> LaunchResult:
    """The loop of :func:`_drive`: decide after each wave, run the next."""
    replicate = check_replicable(exp)
    state = _state(record, exp)
    while True:
        waves, decisions = state["waves"], state["decisions"]
        if len(decisions) == len(waves):  # the last wave is decided
            last = decisions[-1]
            if last["stop"]:
                return _final(ctx, name, result, state, last["reason"], started)
            waves.append(
                {
                    "wave": len(waves) + 1,
                    "rows": last["next_rows"],
                    "seeds": last["next_seeds"],
                    "ray_name": f"wave{len(waves) + 1}",
                }
            )
            _save(ws, name, record, ctx)
            continue
        if result is None or len(waves) > 1:
            result = _run_wave(exp, ws, name, ctx, waves, address, job)
        if result.status != "completed":  # interrupted or failed: `ablate resume` goes on
            return result
        decision = _decide(exp, replicate, ctx, waves, job)
        decisions.append(decision.to_dict())
        _save(ws, name, record, ctx)
        if report is not None:
            report(decision)


def _decide(
    exp: ExperimentConfig,
    replicate: ReplicateConfig,
    ctx: LaunchContext,
    waves: list[dict],
    job: Job,
) -> Decision:
    """The decision after the last wave, from the launch's analysis and its trials' wall time."""
    analysis = job.analyse(ctx.tracking_uri, exp.name, ctx.parent_run_id)
    seeds: dict[str, list[int]] = {row: [] for row in exp.rows}
    for wave in waves:
        for row in wave["rows"]:
            seeds[row] += wave["seeds"]
    spent, per_row = _trial_hours(ctx)
    return decide(
        analysis,
        wave=len(waves),
        metric=exp.metric,
        seeds_by_row=seeds,
        max_seeds=replicate.max_seeds,
        wave_size=len(exp.seeds),
        spent_hours=spent,
        budget_hours=replicate.budget_hours,
        hours_per_trial=per_row,
    )


def _trial_hours(ctx: LaunchContext) -> tuple[float, dict[str, float]]:
    """Trial-hours the launch's finished trials spent (their ``wall_s``), and each row's mean
    trial wall time in hours."""
    walls: dict[str, list[float]] = defaultdict(list)
    for run in run_queries.child_runs(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id):
        wall = run.data.metrics.get("wall_s")
        if wall is not None and run.data.tags.get(tracking.TAG_STATUS) in FINISHED:
            walls[run.data.tags.get(tracking.TAG_ROW, "")].append(wall / 3600)
    spent = sum(sum(w) for w in walls.values())
    return spent, {row: sum(w) / len(w) for row, w in walls.items()}


def _run_wave(
    exp: ExperimentConfig,
    ws: Workspace,
    name: str,
    ctx: LaunchContext,
    waves: list[dict],
    address: str | None,
    job: Job,
) -> LaunchResult:
    """Run the last wave under the launch's parent run: restored where Ray saved its state,
    else started; the parent's trial count is every wave's so far."""
    from ray import tune

    wave = waves[-1]
    home = ws.launch_results(name)
    path = storage_mod.join(home, wave["ray_name"]) if wave["ray_name"] else home
    total = sum(len(w["rows"]) * len(w["seeds"]) for w in waves)
    tracking.reopen_run(ctx.tracking_uri, ctx.parent_run_id)
    if not storage_mod.is_uri(path) and storage_mod.exists(path):
        storage_mod.check_private(path)  # Tuner.restore unpickles what is there
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(
            path, trainable=trainable(exp, ctx, job), resume_unfinished=True, resume_errored=True
        )
    else:
        if not wave["ray_name"]:
            raise UserError(f"Ray has no restorable state at {path}: the launch never started")
        wave_exp = exp.model_copy(update={"rows": {r: exp.rows[r] for r in wave["rows"]}})
        expand(wave_exp.model_copy(update={"seeds": wave["seeds"]}))  # checked before it starts
        tuner = tune.Tuner(
            trainable(exp, ctx, job),
            param_space={
                ROW: tune.grid_search(wave["rows"]),
                SEED: tune.grid_search(wave["seeds"]),
            },
            tune_config=tune.TuneConfig(
                max_concurrent_trials=exp.resources.max_concurrent or None,
                reuse_actors=REUSE_ACTORS,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
            ),
            run_config=run_config(
                exp,
                dataclasses.replace(ws, storage=home),
                wave["ray_name"],
                ctx,
                len(wave["rows"]) * len(wave["seeds"]),
            ),
        )
    return fit(tuner, ctx, exp.name, name, total, resume_hint(ws, name), job)


def _save(ws: Workspace, name: str, record: dict[str, Any], ctx: LaunchContext) -> None:
    """The waves and decisions into the launch record (what resume reads) and onto the
    parent run (tag: the number of waves; artifact: ``<name>.replication.json``)."""
    write_record(ws, name, record)
    state = record[RECORD_KEY]
    path = ws.workdir / f"{name}.replication.json"
    path.write_text(json.dumps(state, indent=2, default=str))
    tracking.log_artifacts(ctx.tracking_uri, ctx.parent_run_id, path)
    tracking.set_tags(
        ctx.tracking_uri, ctx.parent_run_id, {tracking.TAG_REPLICATION_WAVES: len(state["waves"])}
    )


def _final(
    ctx: LaunchContext,
    name: str,
    result: LaunchResult | None,
    state: dict[str, Any],
    reason: str,
    started: float,
) -> LaunchResult:
    """Tag the stop reason on the parent run; the launch's result counts every wave's trials
    and the time since this process began it."""
    tracking.set_tags(ctx.tracking_uri, ctx.parent_run_id, {tracking.TAG_REPLICATION_STOP: reason})
    total = sum(len(w["rows"]) * len(w["seeds"]) for w in state["waves"])
    if result is None:  # resumed after the last decision: nothing ran
        runs = run_queries.child_runs(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id)
        done = sum(r.data.tags.get(tracking.TAG_STATUS) == "completed" for r in runs)
        return LaunchResult(
            name=name, tracking_uri=ctx.tracking_uri, parent_run_id=ctx.parent_run_id,
            experiment_id=ctx.experiment_id, n_trials=total, n_errors=0,
            wall_s=time.perf_counter() - started,
            n_completed=done,
        )  # fmt: skip
    return dataclasses.replace(result, n_trials=total, wall_s=time.perf_counter() - started)
