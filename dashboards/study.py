"""The study view of an Optuna search: its trials as a table sorted by the objective, and the
``--confirm-seeds`` grids that re-run its best configuration next to the row's defaults.

A search is one parent run (``ablate.kind`` = ``search``) whose child runs are its trials.
:func:`find_searches` gathers, per search, what the table and the dashboard need: the
objectives and searched keys (the parent run's tags, else the experiment YAML it logged, else
the Optuna study), its trials from the results frame, the validation history of each objective
(where ASHA stopped a pruned trial), the Optuna study (trial numbers, plots) and its confirm
grids. :func:`trials_table` turns one into a :class:`TrialsTable`: one line per trial, one
column per searched parameter, the state ("pruned at step N"), the objective(s), the other
metrics and the MLflow run. :func:`tables_for` is what ``ablate table`` prints: the ablation
table of the study's grids, and for each search its trials table and confirm table.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from ablate.analysis.frame import is_tidy
from ablate.errors import UserError
from ablate.sqlite_urls import sqlite_file
from dashboards import contrasts
from dashboards.render import Align, Cell, Grid, GridLine, render_as, wide_console
from dashboards.render import to_rich as grid_to_rich
from dashboards.results import (
    Launch,
    dataset_trials,
    launch_yaml,
    load_histories,
    load_launches,
    load_slice_metrics,
    read_results,
    run_url,
)
from dashboards.tables import (
    AblationTable,
    Column,
    Convention,
    Format,
    PairedTest,
    ablation_table,
    metric_title,
    table_columns,
)
from dashboards.tables import print_table as print_ablation_table
from dashboards.tables import render as render_ablation_table
from dashboards.tidy import results_from_tidy

Part = Literal["grid", "trials", "confirm"]
PARTS: tuple[str, ...] = ("grid", "trials", "confirm", *contrasts.PARTS)
_STATE_ORDER = {"complete": 0, "pruned": 1, "running": 2, "failed": 3}


@dataclass(frozen=True)
class Objective:
    """One objective of a search: the run metric it optimises and in which direction."""

    key: str  # the metric of the trial runs, e.g. val_psnr
    mode: Literal["max", "min"]

    @property
    def name(self) -> str:
        return self.key.removeprefix("val_")

    @property
    def title(self) -> str:
        """``val PSNR``: the validation metric as tables and axes name it."""
        if self.key.startswith("val_"):
            return f"val {metric_title(self.name)}"
        return metric_title(self.key)

    @property
    def arrow(self) -> str:
        return "↑" if self.mode == "max" else "↓"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b


@dataclass
class Search:
    """One Optuna search of a study, with everything its view is built from."""

    experiment: str
    launch: Launch
    row: str
    objectives: list[Objective]
    params: list[str]
    trials: pd.DataFrame  # the results-frame lines of its trials, in start order
    histories: dict[str, pd.DataFrame]  # objective key -> (run_id, step, value)
    study: Any | None  # optuna.Study, None when it could not be loaded
    numbers: dict[str, int]  # run id -> Optuna trial number
    confirms: list[Launch]
    tracking_uri: str
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.launch.optuna_study or self.launch.run_name or self.launch.run_id[:8]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


# --- finding searches ------------------------------------------------------------------------


def load_study(storage: str, study_name: str) -> tuple[Any | None, str | None]:
    """The Optuna study a search parent run names (``journal:<path>`` or an RDB URL), or
    ``None`` and why it could not be loaded."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if storage.startswith("journal:"):
            path = Path(storage.removeprefix("journal:"))
            if not path.exists():
                raise FileNotFoundError(f"journal file {path} not found")
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            store: Any = optuna.storages.JournalStorage(backend)
        else:
            db = sqlite_file(storage)
            if db is not None:
                if not db.exists():
                    raise FileNotFoundError(f"{db} not found")
            store = storage
        return optuna.load_study(study_name=study_name, storage=store), None
    except (FileNotFoundError, KeyError, ValueError) as err:
        return None, f"Optuna study '{study_name}' could not be loaded from {storage}: {err}"


def _yaml_spec(tracking_uri: str, launch: Launch) -> dict[str, Any] | None:
    """The ``search`` section of the experiment YAML a search logged on its parent run."""
    search = (launch_yaml(tracking_uri, launch) or {}).get("search")
    return search if isinstance(search, dict) else None


def _spec(
    tracking_uri: str, launch: Launch, study: Any | None
) -> tuple[list[Objective], list[str]]:
    """Objectives and searched keys: the parent run's tags, else its logged YAML, else the
    Optuna study (directions and distributions; the objective then assumed val_psnr)."""
    objectives = [Objective(m, d) for m, d in launch.objectives]  # type: ignore[arg-type]
    params = list(launch.search_params)
    if objectives and params:
        return objectives, params
    spec = _yaml_spec(tracking_uri, launch)
    if spec:
        metrics = spec.get("metric", "psnr")
        modes = spec.get("mode", "max")
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        modes = [modes] if isinstance(modes, str) else list(modes)
        objectives = objectives or [
            Objective(f"val_{m}", d) for m, d in zip(metrics, modes, strict=False)
        ]
        params = params or list(spec.get("params") or {})
    if study is not None:
        import optuna

        if not objectives:
            names = ["val_psnr"] if len(study.directions) == 1 else []
            names = names or [f"objective {i}" for i in range(len(study.directions))]
            objectives = [
                Objective(n, "max" if d == optuna.study.StudyDirection.MAXIMIZE else "min")
                for n, d in zip(names, study.directions, strict=True)
            ]
        if not params:
            params = list(dict.fromkeys(k for t in study.trials for k in t.distributions))
    return objectives or [Objective("val_psnr", "max")], params


def _same(logged: Any, value: Any) -> bool:
    """An MLflow param (a string) and an Optuna param value are the same sample."""
    if not isinstance(logged, str):
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return logged == str(value)
    try:
        return math.isclose(float(logged), float(value), rel_tol=1e-9, abs_tol=0.0)
    except ValueError:
        return False


def _numbers(study: Any | None, trials: pd.DataFrame, params: list[str]) -> dict[str, int]:
    """Optuna trial number of each trial run, matched on the sampled values (Ray's
    OptunaSearch keeps its trial-id mapping in memory only)."""
    if study is None or not params:
        return {}
    free = list(study.trials)
    out: dict[str, int] = {}
    for _, run in trials.iterrows():
        for i, ot in enumerate(free):
            if set(ot.params) == set(params) and all(
                _same(run.get(f"params.{k}"), ot.params[k]) for k in params
            ):
                out[run["run_id"]] = ot.number
                del free[i]
                break
    return out


def _confirms(launches: list[Launch], search: Launch, row: str) -> list[Launch]:
    """The ``--confirm-seeds`` grids of a search: tagged with its run id, or (launches made
    before that tag) grids of ``<row>_best`` / ``<row>_defaults`` started after it and before
    the next search of the same row."""
    tagged = [la for la in launches if la.confirms == search.run_id]
    if tagged:
        return tagged
    later = sorted(
        (la for la in launches if la.start_time > search.start_time),
        key=lambda la: la.start_time,
    )
    out = []
    for la in later:
        if la.kind == "search" and la.rows == search.rows:
            break
        if la.kind != "search" and not la.confirms and la.rows:
            if all(r in (f"{row}_best", f"{row}_defaults") for r in la.rows):
                out.append(la)
    return out


def find_searches(tracking_uri: str, experiment: str, df: pd.DataFrame) -> list[Search]:
    """Every Optuna search of a study, oldest first (``df``: its results frame)."""
    launches = load_launches(tracking_uri, experiment)
    out = []
    for launch in launches:
        if launch.kind != "search":
            continue
        trials = df[df["parent_run_id"] == launch.run_id].sort_values("start_time", kind="stable")
        notes: list[str] = []
        study = None
        if launch.optuna_storage and launch.optuna_study:
            study, why = load_study(launch.optuna_storage, launch.optuna_study)
            if why:
                notes.append(why)
        else:
            notes.append(f"search run {launch.run_id} recorded no Optuna storage/study tags")
        objectives, params = _spec(tracking_uri, launch, study)
        row = launch.rows[0] if launch.rows else str(trials["row"].iloc[0]) if len(trials) else ""
        run_ids = trials["run_id"].tolist()
        histories = {o.key: load_histories(tracking_uri, run_ids, o.key) for o in objectives}
        out.append(
            Search(
                experiment=experiment,
                launch=launch,
                row=row,
                objectives=objectives,
                params=params,
                trials=trials.reset_index(drop=True),
                histories=histories,
                study=study,
                numbers=_numbers(study, trials, params),
                confirms=_confirms(launches, launch, row),
                tracking_uri=tracking_uri,
                notes=notes,
            )
        )
    return out


# --- the trials table ------------------------------------------------------------------------


@dataclass
class TrialLine:
    """One trial of a search."""

    number: int | None
    run_id: str
    params: dict[str, str | None]
    state: str  # complete, pruned, running or failed
    step: int | None  # the last evaluated step (where ASHA stopped a pruned trial)
    objectives: list[float | None]
    values: dict[str, float] = field(default_factory=dict)
    pareto: bool = False
    best: bool = False
    error: str = ""
    url: str = ""

    @property
    def state_text(self) -> str:
        if self.state == "pruned":
            return f"pruned at step {self.step}" if self.step is not None else "pruned"
        return self.state


@dataclass
class TrialsTable:
    experiment: str
    search: str
    objectives: list[Objective]
    params: list[str]
    columns: list[Column]
    lines: list[TrialLine]
    notes: list[str] = field(default_factory=list)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def caption(self) -> str:
        counts = pd.Series([ln.state for ln in self.lines]).value_counts().to_dict()
        states = ", ".join(f"{counts[s]} {s}" for s in _STATE_ORDER if s in counts)
        goals = ", ".join(f"{o.title} ({o.mode})" for o in self.objectives)
        order = (
            "Pareto-optimal trials first (the 'Pareto' column), then by the first objective"
            if self.multi_objective
            else "sorted by the objective"
        )
        pruned = (
            " A pruned trial's objective is its last validation value, at the step ASHA stopped it."
            if "pruned" in counts
            else ""
        )
        return (
            f"Optuna search '{self.search}' of study '{self.experiment}': {len(self.lines)} "
            f"trials ({states}). Objective{'s' * self.multi_objective}: {goals}; completed "
            f"trials first, {order}.{pruned} Test metrics (standard convention) only for "
            "completed trials."
        )

    def __rich__(self) -> RichTable:
        return trials_to_rich(self)


def _short(value: Any) -> str:
    """A sampled value as logged, floats to 4 significant digits."""
    if not isinstance(value, str):
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        return "–" if missing else str(value)
    try:
        return f"{float(value):.4g}" if any(c in value for c in ".eE") else value
    except ValueError:
        return value


def _logged(value: Any) -> str | None:
    """A param as logged; ``None`` where the run did not log it (NaN in the frame)."""
    return value if isinstance(value, str) else None


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def pareto_ranks(points: list[list[float]], modes: list[str]) -> list[int]:
    """Non-domination rank of each point (0: the Pareto front) under per-axis directions."""
    signed = np.array(
        [[v if m == "min" else -v for v, m in zip(p, modes, strict=True)] for p in points]
    )
    ranks = [-1] * len(points)
    left = set(range(len(points)))
    rank = 0
    while left:
        front = [
            i
            for i in left
            if not any(
                np.all(signed[j] <= signed[i]) and np.any(signed[j] < signed[i])
                for j in left
                if j != i
            )
        ]
        for i in front:
            ranks[i] = rank
        left -= set(front)
        rank += 1
    return ranks


def _state(status: str) -> str:
    return {"completed": "complete"}.get(status, status)


def trials_table(search: Search, convention: Convention = "standard") -> TrialsTable:
    """The trials of a search, best first, with one column per searched parameter."""
    df = search.trials
    first = search.objectives[0]
    last_step: dict[str, int] = {}
    hist = search.histories.get(first.key)
    if hist is not None and not hist.empty:
        last_step = hist.groupby("run_id")["step"].max().astype(int).to_dict()
    order = {run_id: i for i, run_id in enumerate(df["run_id"])}
    lines = []
    for _, run in df.iterrows():
        run_id = run["run_id"]
        number = search.numbers.get(run_id)
        if search.study is None and not search.numbers:
            number = order[run_id]  # no study: number the trials in launch order
        lines.append(
            TrialLine(
                number=number,
                run_id=run_id,
                params={k: _logged(run.get(f"params.{k}")) for k in search.params},
                state=_state(run["status"]),
                step=last_step.get(run_id),
                objectives=[_finite(run.get(f"metrics.{o.key}")) for o in search.objectives],
                error=run["error"] if isinstance(run["error"], str) else "",
                url=run_url(search.tracking_uri, search.launch.experiment_id, run_id)
                if search.launch.experiment_id
                else "",
            )
        )

    done = [ln for ln in lines if ln.state == "complete" and None not in ln.objectives]
    modes = [o.mode for o in search.objectives]
    ranks = pareto_ranks([ln.objectives for ln in done], modes) if done else []  # type: ignore[misc]
    rank_of = {ln.run_id: r for ln, r in zip(done, ranks, strict=True)}
    for ln in done:
        ln.pareto = rank_of[ln.run_id] == 0

    def key(ln: TrialLine) -> tuple:
        value = ln.objectives[0]
        signed = math.inf if value is None else (-value if first.mode == "max" else value)
        rank = rank_of.get(ln.run_id, 0) if search.multi_objective else 0
        number = ln.number if ln.number is not None else math.inf
        return (_STATE_ORDER.get(ln.state, 9), rank, signed, number)

    lines.sort(key=key)
    if done:
        top = min(done, key=key)
        top.best = True

    notes = list(search.notes)
    columns, constants = [], []
    for col in table_columns(convention, nrmse="metrics.nrmse" in df):
        values = df[f"metrics.{col.key}"].dropna() if f"metrics.{col.key}" in df else []
        if not len(values):
            continue
        if len(df) > 1 and len(values) > 1 and np.allclose(values, values.iloc[0], rtol=1e-9):
            constants.append(f"{col.title} {col.format(float(values.iloc[0]))}")
            continue
        columns.append(col)
    for ln in lines:
        run = df[df["run_id"] == ln.run_id].iloc[0]
        for col in columns:
            value = _finite(run.get(f"metrics.{col.key}"))
            if value is not None and ln.state == "complete":
                ln.values[col.key] = value
    if constants:
        notes.append("the same for every trial, so not a column: " + ", ".join(constants))
    for ln in lines:
        if ln.state == "failed":
            notes.append(f"trial #{_num(ln)} failed: {ln.error or 'no reason recorded'}")
    if search.multi_objective:
        notes.append(
            "multi-objective: no trial is pruned (ASHA ranks by one metric); 'Pareto' marks the "
            "trials no other completed trial beats on every objective"
        )
    return TrialsTable(
        experiment=search.experiment,
        search=search.name,
        objectives=search.objectives,
        params=search.params,
        columns=columns,
        lines=lines,
        notes=notes,
    )


def _num(line: TrialLine) -> str:
    return "–" if line.number is None else str(line.number)


def _header(table: TrialsTable) -> list[str]:
    objectives = [f"{o.title} {o.arrow}" for o in table.objectives]
    metrics = [f"{c.title} {'↑' if c.better == 'max' else '↓'}" for c in table.columns]
    pareto = ["Pareto"] if table.multi_objective else []
    return ["#", *table.params, "state", *objectives, *pareto, *metrics, "run"]


def _objective_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


_STATE_STYLE = {"pruned": "dim", "failed": "red", "running": "yellow"}


def _grid_line(table: TrialsTable, line: TrialLine) -> GridLine:
    cells = [Cell(_num(line), strong=line.best, sort=line.number)]
    cells += [Cell(_short(line.params.get(k)), sort=line.params.get(k)) for k in table.params]
    cells.append(Cell(line.state_text, sort=line.state_text))
    cells += [Cell(_objective_text(v), sort=v) for v in line.objectives]
    if table.multi_objective:
        cells.append(Cell("✓" if line.pareto else "", sort=int(line.pareto)))
    for col in table.columns:
        value = line.values.get(col.key)
        cells.append(Cell("–" if value is None else col.format(value), sort=value))
    link = html.escape(line.run_id[:8])
    if line.url:
        link = f'<a href="{html.escape(line.url)}" title="{line.run_id}">{link}</a>'
    cells.append(Cell(line.run_id, sort=line.run_id, html=link, rich=escape(line.run_id[:8])))
    return GridLine(
        cells,
        css=" ".join(c for c in (line.state, "best" if line.best else "") if c),
        style="bold green" if line.best else _STATE_STYLE.get(line.state),
    )


def trials_grid(table: TrialsTable) -> Grid:
    """The trials table's cells for :mod:`dashboards.render`: sortable in HTML (the
    dashboard sorts a column on a header click), the run ids left out of LaTeX."""

    def numeric(key: str) -> bool:
        return all(_finite(ln.params.get(key)) is not None for ln in table.lines)

    kinds = ["num"] + ["num" if numeric(k) else "text" for k in table.params] + ["text"]
    kinds += ["num"] * len(table.objectives)
    kinds += ["text"] * table.multi_objective + ["num"] * len(table.columns) + ["text"]
    header = _header(table)
    align: list[Align] = ["r"] + ["l"] * (len(table.params) + 1)
    align += ["r"] * (len(header) - len(align) - 1) + ["l"]
    return Grid(
        caption=table.caption,
        label=f"search-{table.search}",
        header=header,
        align=align,
        lines=[_grid_line(table, line) for line in table.lines],
        notes=table.notes,
        classes="ablation trials sortable",
        sort_kinds=kinds,
        screen_only=1,
    )


def _csv(table: TrialsTable) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    objectives = [o.key for o in table.objectives]
    metrics = [c.key for c in table.columns]
    pareto = ["pareto"] if table.multi_objective else []
    writer.writerow(
        ["number", *table.params, "state", "pruned_step", *objectives, *pareto, *metrics]
        + ["run_id", "error"]
    )
    for line in table.lines:
        writer.writerow(
            [_num(line) if line.number is not None else ""]
            + [line.params.get(k) or "" for k in table.params]
            + [line.state, line.step if line.state == "pruned" and line.step is not None else ""]
            + ["" if v is None else repr(v) for v in line.objectives]
            + ([int(line.pareto)] if table.multi_objective else [])
            + [repr(line.values[k]) if k in line.values else "" for k in metrics]
            + [line.run_id, line.error]
        )
    return buf.getvalue()


def render_trials(table: TrialsTable, fmt: Format) -> str:
    return render_as(table, fmt, trials_grid, _csv)


def trials_to_rich(table: TrialsTable) -> RichTable:
    """The trials table for the terminal: the best trial bold green, pruned dim, failed red."""
    return grid_to_rich(trials_grid(table))


# --- confirm grids ---------------------------------------------------------------------------


def confirm_table(
    search: Search,
    df: pd.DataFrame,
    slices: Callable[[list[str]], pd.DataFrame] | None = None,
    **options: Any,
) -> AblationTable | None:
    """The ``--confirm-seeds`` grids of a search as an ablation table: ``<row>_best`` (the
    best trial's values) and ``<row>_defaults`` (the row as declared), mean ± std over the
    same seeds, paired test against the defaults; ``None`` without confirm grids."""
    ids = {la.run_id for la in search.confirms}
    trials = df[df["parent_run_id"].isin(ids)]
    if trials.empty:
        return None
    defaults = f"{search.row}_defaults"
    reference = defaults if defaults in set(trials["row"]) else None
    # the best configuration first, then its baseline
    order = {f"{search.row}_best": 0, defaults: 1}
    trials = trials.assign(row_index=trials["row"].map(order).fillna(2).astype(int))
    trials = trials.assign(reference=reference)  # not the YAML's row: the confirm's own
    table = ablation_table(
        trials,
        reference=reference,
        slices=slices,
        title=f"Confirm grid of search '{search.name}'",
        **options,
    )
    best = trials[trials["row"] == f"{search.row}_best"]
    if len(best):
        values = {k: best.iloc[0].get(f"params.{k}") for k in search.params}
        shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        source = next(
            (
                f"trial #{search.numbers.get(r['run_id'], '?')}"
                for _, r in search.trials.iterrows()
                if all(r.get(f"params.{k}") == v for k, v in values.items())
            ),
            "the search",
        )
        table.notes.insert(0, f"{search.row}_best: the values of {source} ({shown})")
    if reference:
        table.notes.insert(1 if len(best) else 0, f"{defaults}: row '{search.row}' as declared")
    else:
        table.notes.append(
            f"no {defaults} grid (searches before it was added): no paired test against the "
            "row's defaults"
        )
    return table


# --- ablate table ----------------------------------------------------------------------------

AnyTable = AblationTable | TrialsTable | contrasts.AnalysisTable


def tables_for(
    source: str,
    tracking_uri: str,
    part: str | None = None,
    convention: Convention = "standard",
    paired_test: PairedTest = "t",
    parent_run_id: str | None = None,
    data: str | None = None,
    **options: Any,
) -> list[AnyTable]:
    """What ``ablate table`` shows: the ablation table of the study's grids, then per search
    its trials table and its confirm grid. ``part`` (grid, trials or confirm) keeps one kind;
    ``parent_run_id`` keeps one launch; the grids' table is of the dataset ``data`` names,
    by default the study's first (:func:`dashboards.results.dataset_trials`).

    A results ``.parquet`` has no launches: it is tabulated as a grid."""
    if part is not None and part not in PARTS:
        raise UserError(f"--part '{part}' is not one of: {', '.join(PARTS)}")
    df, tidy = _study_results(source, tracking_uri, parent_run_id)

    def slices(run_ids: list[str]) -> pd.DataFrame:
        return load_slice_metrics(tracking_uri, df[df["run_id"].isin(run_ids)])

    searches = [] if source.endswith(".parquet") else find_searches(tracking_uri, source, df)
    taken = {s.launch.run_id for s in searches} | {c.run_id for s in searches for c in s.confirms}
    # the grids' table holds one dataset (a search and its confirm grids are each one launch)
    one = dataset_trials(df[~df["parent_run_id"].isin(taken)], data, source)
    grid = one.trials
    out: list[AnyTable] = []
    common = dict(convention=convention, paired_test=paired_test)
    if len(grid) and part in (None, "grid", *contrasts.PARTS):
        table = ablation_table(grid, slices=slices, **common, **options)
        table.other_datasets = one.others
        grid_tidy = tidy_of_grid(source, tracking_uri, grid, tidy)
        settings = contrasts.settings_from(grid_tidy.attrs.get(contrasts.SETTINGS_KEY), source)
        found = contrasts.study_analysis(grid_tidy, settings, options.get("reference"))
        if not source.endswith(".parquet"):
            launches = set(grid["parent_run_id"].dropna())
            found.notes += contrasts.replication_notes(tracking_uri, source, launches)
        analysis = contrasts.tables(table.experiment, found)
        if part in contrasts.PARTS:
            out += [t for t in analysis if t.part == part]
        else:
            table.analysis_tables = analysis
            out.append(table)
    for search in searches:
        if part in (None, "trials"):
            out.append(trials_table(search, convention))
        if part in (None, "confirm"):
            options_ = {k: v for k, v in options.items() if k != "reference"}
            table = confirm_table(search, df, slices, **common, **options_)
            if table is not None:
                out.append(table)
    if not out:
        kinds = "grids" if part == "grid" else "confirm grids" if part == "confirm" else part
        raise UserError(f"experiment '{source}' has no {kinds}: drop --part to see what it has")
    return out


def _study_results(
    source: str, tracking_uri: str, parent_run_id: str | None
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The results frame of a study, a launch of it (``parent_run_id``) or a ``.parquet``,
    and the tidy frame when the source is one (None otherwise)."""
    df = read_results(source, tracking_uri)
    tidy = df if is_tidy(df) else None
    if tidy is not None:
        df = results_from_tidy(tidy)
    if parent_run_id is not None:
        df = df[df["parent_run_id"] == parent_run_id].reset_index(drop=True)
    return df, tidy


def tidy_for(source: str, tracking_uri: str, parent_run_id: str | None = None) -> pd.DataFrame:
    """What ``ablate table NAME --format parquet`` writes: the tidy frame of the study's grid
    trials (those of the ablation table), with their analysis settings."""
    df, tidy = _study_results(source, tracking_uri, parent_run_id)
    searches = [] if source.endswith(".parquet") else find_searches(tracking_uri, source, df)
    taken = {s.launch.run_id for s in searches} | {c.run_id for s in searches for c in s.confirms}
    grid = df[~df["parent_run_id"].isin(taken)]
    if grid.empty:
        raise UserError(f"'{source}' has no grid trials to write as a tidy frame")
    return tidy_of_grid(source, tracking_uri, grid, tidy)


def tidy_of_grid(
    source: str, tracking_uri: str, grid: pd.DataFrame, tidy: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The tidy frame (``ablate.analysis.frame``) of a study's grid trials, with the analysis
    settings of their latest launch in its metadata; of a tidy ``.parquet``, its own lines."""
    if tidy is not None:
        kept = tidy[tidy["run_id"].isin(grid["run_id"])].copy()
        kept.attrs = dict(tidy.attrs)
        return kept
    settings = contrasts.Settings()
    if not source.endswith(".parquet"):
        launches = set(grid["parent_run_id"].dropna())
        settings = contrasts.launch_settings(tracking_uri, source, launches)
    return contrasts.tidy_with_settings(grid, tracking_uri, settings)


def render_tables(tables: list[AnyTable], fmt: Format) -> str:
    """Tables as one text; CSV holds one table, so several need ``--part``."""
    if fmt == "csv" and len(tables) > 1:
        raise UserError(
            f"this study has {len(tables)} tables ({', '.join(_kind(t) for t in tables)}) and a "
            "CSV holds one: pick one with --part grid, --part trials or --part confirm"
        )
    texts = []
    for t in tables:
        if isinstance(t, TrialsTable):
            texts.append(render_trials(t, fmt))
        elif isinstance(t, contrasts.AnalysisTable):
            texts.append(contrasts.render(t, fmt))
        else:
            texts.append(render_ablation_table(t, fmt))
            if fmt != "csv":
                texts += [contrasts.render(a, fmt) for a in t.analysis_tables]
    return "\n".join(texts)


def _kind(table: AnyTable) -> str:
    if isinstance(table, TrialsTable):
        return "trials"
    if isinstance(table, contrasts.AnalysisTable):
        return table.part
    return "confirm" if table.title.startswith("Confirm") else "grid"


def print_tables(tables: list[AnyTable], console: Console | None = None) -> None:
    """Print each table for the terminal (200 columns wide in a pipe or CI log)."""
    console = wide_console(console)
    for table in tables:
        if isinstance(table, TrialsTable):
            console.print(trials_to_rich(table))
        elif isinstance(table, contrasts.AnalysisTable):
            console.print(contrasts.to_rich(table))
        else:
            print_ablation_table(table, console)
            for analysis in table.analysis_tables:
                console.print(contrasts.to_rich(analysis))
