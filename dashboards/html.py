"""The static dashboard: one self-contained HTML file (plotly.js inlined, images as data URIs)
that opens offline, from a study's MLflow runs.

The page reports its own health for headless checks: ``<html data-plots-rendered="N">`` once
every plot has rendered, and script errors written into ``#js-errors``
(``<html data-js-errors="yes">``).
"""

from __future__ import annotations

import html
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.utils import PlotlyJSONEncoder

from dashboards import contrasts, plots
from dashboards.results import (
    UI_URL,
    dataset_trials,
    fetch_artifact,
    load_histories,
    load_results,
    load_slice_metrics,
    save_results,
)
from dashboards.study import (
    Search,
    TrialsTable,
    confirm_table,
    find_searches,
    render_trials,
    trials_table,
)
from dashboards.tables import AblationTable, Convention, ablation_table, render

_TEMPLATE = Path(__file__).parent / "templates" / "dashboard.html"


class _Page:
    """Sections of the page, and the figures they reference by div id."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n_figures = 0

    def section(self, title: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(title)}</h{level}>")

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def figure(self, fig: go.Figure) -> str:
        div = f"plot-{self.n_figures}"
        self.n_figures += 1
        # Plotly's own to_json writes "↑" raw with orjson installed and as "\\u2191" without:
        # one encoder (Plotly's, for numpy and NaN) and raw UTF-8, whatever is installed.
        spec = json.dumps(fig.to_dict(), cls=PlotlyJSONEncoder, ensure_ascii=False)
        spec = spec.replace("</", "<\\/")  # never close the script tag early
        return (
            f'<div id="{div}" class="plot"></div>'
            f'<script type="application/json" class="ablate-figure" data-target="{div}">'
            f"{spec}</script>"
        )

    def figures(self, figs: list[go.Figure], columns: int = 1) -> None:
        blocks = "".join(f"<div>{self.figure(f)}</div>" for f in figs)
        self.parts.append(f'<div class="row2">{blocks}</div>' if columns == 2 else blocks)


def _table_section(page: _Page, table: AblationTable) -> None:
    page.section("Ablation table")
    page.parts.append(f'<div class="scroll">{render(table, "html")}</div>')


def _contrasts_section(
    page: _Page, table: AblationTable, tracking_uri: str, grid: pd.DataFrame
) -> None:
    """A factorial design's effects and interactions, the forest plot of the contrasts on the
    table's metric, then the analysis tables."""
    analysis = contrasts.grid_analysis(tracking_uri, table.experiment, grid)
    page.section("Effects and claims")
    metric = table.metric.removeprefix("paper_")
    figs = [
        contrasts.effects_forest_plot(analysis, metric),
        contrasts.interaction_plot(analysis, metric),
        contrasts.forest_plot(analysis, metric),
    ]
    page.figures([f for f in figs if f is not None])
    for part in contrasts.tables(table.experiment, analysis):
        page.parts.append(f'<div class="scroll">{contrasts.render(part, "html")}</div>')


def _metric_sections(page: _Page, table: AblationTable, df: pd.DataFrame) -> None:
    keys = [c.key for c in table.columns]
    quality = [k for k in keys if not k.startswith("ams_") and k in keys[:3]]
    page.section("Metric per row")
    page.figures([plots.metric_per_row(table, df, quality)])
    stochastic = [k for k in keys if k.startswith("ams_")] + (["sd"] if "sd" in keys else [])
    if stochastic:
        page.figures([plots.metric_per_row(table, df, stochastic)])

    page.section("Quality vs cost")
    columns = {c.key: c for c in table.columns}
    shown, constant = [], []
    for cost in ("gmacs", "params_m"):
        costs = {ln.values[cost][0] for ln in table.lines if ln.n and cost in ln.values}
        if len(costs) == 1 and sum(1 for ln in table.lines if ln.n) > 1:
            constant.append(f"{columns[cost].title} ({columns[cost].format(costs.pop())})")
            continue
        fig = plots.quality_vs_cost(table, cost, table.metric)
        if fig is not None:
            shown.append(fig)
    if constant:
        page.note(
            f"Left out: quality against {' and '.join(constant)}, the same for every row, so "
            "the x-axis would be constant and the plot would say nothing."
        )
    if shown:
        page.note("Dashed: the Pareto front (no other row is both cheaper and better).")
        page.figures(shown, columns=2)
    elif not constant:
        page.note("No row logged both its cost (gmacs, params_m) and quality.")


def _noise_level_section(page: _Page, table: AblationTable, df: pd.DataFrame) -> None:
    fig = plots.noise_level_quality(table, df)
    if fig is None:
        return  # no diffusion row in this study
    page.section("Quality vs noise level")
    page.note(
        "Diffusion rows: PSNR of the network's one-step x0 estimate of the test slices "
        "noised to 8 levels of its training schedule. A sample PSNR far below the curve's "
        "clean end, or a curve collapsing at the noisy end, shows where sampling goes wrong."
    )
    page.figures([fig])


def _curve_section(page: _Page, table: AblationTable, tracking_uri: str, df: pd.DataFrame) -> None:
    page.section("Training curves")
    run_ids = [run_id for ln in table.lines for run_id, _, _ in ln.trials]
    terms = sorted(c.removeprefix("metrics.") for c in df.columns if c.startswith("metrics.loss/"))
    keys = ["loss", *terms]
    fig = plots.loss_curves(table, {k: load_histories(tracking_uri, run_ids, k) for k in keys})
    if fig is None:
        page.note("No trial logged a 'loss' history.")
    else:
        if terms:
            page.note("The menu switches between the total loss and its terms.")
        if any(status != "completed" for ln in table.lines for _, _, status in ln.trials):
            page.note("Dashed: trials that did not complete (failed, interrupted, pruned).")
        page.figures([fig])


def _trials_section(page: _Page, search: Search, table: TrialsTable) -> None:
    page.section("Trials", 3)
    page.parts.append(f'<div class="scroll">{render_trials(table, "html")}</div>')
    if any(ln.url for ln in table.lines):
        uri = search.tracking_uri
        where = (
            "on the tracking server"
            if uri.startswith(("http://", "https://"))
            else f"in the MLflow UI: run `ablate ui` on this store first ({UI_URL})"
        )
        page.note(f"Click a header to sort. 'run' opens the trial's MLflow run {where}.")


def _varying(study: Any, params: list[str]) -> tuple[list[str], list[str]]:
    """Searched keys with several values among the completed trials, and the others."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varying = [p for p in params if len({repr(t.params.get(p)) for t in done}) > 1]
    return varying, [p for p in params if p not in varying]


def _study_plots(page: _Page, search: Search, table: TrialsTable) -> None:
    import optuna

    multi = search.multi_objective
    curves = [
        plots.intermediate_values(table, search.histories.get(o.key, pd.DataFrame()), o)
        for o in search.objectives
    ]
    page.section("Intermediate values and optimisation history", 3)
    shown = [f for f in curves if f is not None]
    if shown:
        page.note(
            "Intermediate values: the objective on the validation split at each evaluation, as "
            "logged to MLflow (x: training iteration); dashed: pruned trials, ✕: where ASHA "
            "stopped them."
        )
    else:
        page.note("No trial logged a validation history of the objective.")
    study = search.study
    if study is None:
        page.figures(shown, columns=2 if len(shown) > 1 else 1)
        page.note("No Optuna study: no history, parallel coordinates, importance or slices.")
        return
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    page.note(
        f"Optuna study '{study.study_name}': {len(done)} complete, {len(pruned)} pruned "
        f"of {len(study.trials)} trials."
    )
    if multi:
        page.figures(shown, columns=2)
        page.note(
            "No optimisation history: with several objectives there is no single best so far; "
            "the Pareto front below shows the trade-off."
        )
    elif done:
        page.figures([*shown, plots.optimisation_history(study, search.objectives[0])], 2)
    else:
        page.figures(shown)
        page.note("No optimisation history: no trial completed.")
    if not done:
        page.note("No parallel coordinates, importance or slices: no trial completed.")
        return

    varying, fixed = _varying(study, search.params)
    if fixed:
        page.note(
            f"Left out of the plots below: {', '.join(fixed)}, the same value in every "
            "completed trial (a constant axis)."
        )
    if multi:
        page.section("Pareto front", 3)
        pareto = plots.pareto_plot(table)
        if pareto is not None:
            page.note(
                "Coloured: the Pareto-optimal trials (no other completed trial is at least as "
                "good on every objective and better on one); grey: dominated trials."
            )
            page.figures([pareto])
        else:
            page.note(f"{len(search.objectives)} objectives: a Pareto plot needs 2 or 3.")

    page.section("Parallel coordinates", 3)
    if varying:
        figs = [
            plots.parallel_coordinates(study, o, i, multi, varying)
            for i, o in enumerate(search.objectives)
        ]
        page.figures(figs, columns=2 if multi else 1)
    else:
        page.note("Every completed trial sampled the same values: nothing to compare.")

    page.section("Parameter importance", 3)
    if len(done) < 2 or not varying:
        page.note(f"No importance: needs 2 differing completed trials, the study has {len(done)}.")
    else:
        fig, name = plots.param_importances(study, search.objectives, varying)
        text = (
            f"Computed by {name} (Optuna's default evaluator in "
            f"optuna.importance.get_param_importances): how differently each parameter is "
            f"distributed in the top 10% of completed trials than in all of them."
        )
        if multi:
            text += " 'Pareto front': the importance of reaching the front, over every objective."
        if len(done) < 50:
            text += (
                f" With {len(done)} completed trials the top 10% is "
                f"{max(1, math.ceil(0.1 * len(done)))} trial(s): read it as a hint (Optuna "
                "advises at least 5 trials in the top quantile)."
            )
        page.note(text)
        page.figures([fig])

    page.section("Slice plots", 3)
    if varying:
        page.figures(
            [plots.slice_plot(study, o, i, multi, varying) for i, o in enumerate(search.objectives)]
        )
    else:
        page.note("Every completed trial sampled the same values: no slices.")


def _cost_note(page: _Page, search: Search, table: TrialsTable) -> None:
    """A search varies loss weights, not the model: say so instead of a constant-x plot."""
    costs = {"gmacs": "GMACs", "params_m": "MParam"}
    same = []
    for key, title in costs.items():
        col = f"metrics.{key}"
        values = search.trials[col].dropna() if col in search.trials else pd.Series(dtype=float)
        if len(values) and values.nunique() == 1:
            same.append(f"{title} {values.iloc[0]:.3g}")
    if same:
        page.note(
            f"No quality-vs-cost plot: every trial has the same cost ({', '.join(same)}), so "
            "its x-axis would be constant."
        )


def _confirm_section(
    page: _Page, search: Search, df: pd.DataFrame, tracking_uri: str, convention: Convention
) -> None:
    page.section("Confirm grid: the best configuration over seeds", 3)
    slices = _slices(tracking_uri, df)
    table = confirm_table(search, df, slices, convention=convention)
    if table is None:
        page.note(
            "No confirm grid: rerun with `ablate search SPACE --confirm-seeds N` to train the "
            "best configuration and the row's defaults over N seeds, with a paired test."
        )
        return
    page.parts.append(f'<div class="scroll">{render(table, "html")}</div>')
    trials = df[df["parent_run_id"].isin({la.run_id for la in search.confirms})]
    keys = [c.key for c in table.columns]
    page.figures([plots.metric_per_row(table, trials, [k for k in keys if k in keys[:3]])])
    _samples_section(page, table, trials, tracking_uri, level=4)


def _study_view(
    page: _Page, search: Search, df: pd.DataFrame, tracking_uri: str, convention: Convention
) -> None:
    page.section(f"Optuna search '{search.name}'")
    table = trials_table(search, convention)
    _trials_section(page, search, table)
    _cost_note(page, search, table)
    _study_plots(page, search, table)
    _confirm_section(page, search, df, tracking_uri, convention)


def _slices(tracking_uri: str, df: pd.DataFrame) -> Any:
    def load(ids: list[str]) -> pd.DataFrame:
        return load_slice_metrics(tracking_uri, df[df["run_id"].isin(ids)])

    return load


def _samples_section(
    page: _Page, table: AblationTable, df: pd.DataFrame, tracking_uri: str, level: int = 2
) -> None:
    page.section("Samples", level)
    uris = df.set_index("run_id")["artifact_uri"]
    rows = []
    for ln in table.lines:
        for run_id, seed in zip(ln.run_ids, ln.seeds, strict=True):
            path = fetch_artifact(tracking_uri, run_id, "samples.npz", uris[run_id])
            if path is None:
                continue
            for i, panels in enumerate(plots.sample_panels(path)):
                cells = "".join(
                    f'<td><img alt="{html.escape(cap)}" src="{uri}">{html.escape(cap)}</td>'
                    for cap, uri in panels
                )
                head = f"{html.escape(ln.label)}<br>seed {seed}, sample {i}"
                rows.append(f"<tr><th>{head}</th>{cells}</tr>")
            break  # one seed per line is enough to see what it does
    if rows:
        page.note("Grey: input, reference and output share the reference's range.")
        page.parts.append(f'<table class="samples">{"".join(rows)}</table>')
    else:
        page.note("No trial logged samples.npz.")


def _status_counts(df: pd.DataFrame, table: AblationTable | None) -> str:
    """Trials per status, as the table counts them (a completed trial without the table's
    metric is failed there), MLflow's status for the trials the table does not show."""
    status = df.set_index("run_id")["status"].to_dict()
    if table is not None:
        status.update({run_id: s for ln in table.lines for run_id, _, s in ln.trials})
    counts = pd.Series(list(status.values()), dtype=object).value_counts().to_dict()
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def build_dashboard(
    experiment: str,
    tracking_uri: str,
    out_dir: str | Path,
    convention: Convention = "standard",
    parent_run_id: str | None = None,
    name: str | None = None,
) -> Path:
    """Write ``<out_dir>/index.html`` (and the results as ``results.parquet``) for a study;
    with ``parent_run_id``, of that one launch only. ``name`` (the launch's, ``run --name``)
    titles the page; by default the experiment's."""
    df = load_results(tracking_uri, experiment)
    if parent_run_id is not None:
        df = df[df["parent_run_id"] == parent_run_id].reset_index(drop=True)
    searches = find_searches(tracking_uri, experiment, df)
    taken = {s.launch.run_id for s in searches} | {c.run_id for s in searches for c in s.confirms}
    grid = dataset_trials(df[~df["parent_run_id"].isin(taken)], None, experiment).trials
    name = name or experiment
    subject = name if name == experiment else f"{name} (experiment {experiment})"
    page = _Page()
    table = None
    if len(grid):  # the ablation view, for the study's grids
        caption = "" if name == experiment else f"Launch '{name}' of ablation study '{experiment}'"
        table = ablation_table(
            grid, convention=convention, slices=_slices(tracking_uri, grid), title=caption
        )
        _table_section(page, table)
        _contrasts_section(page, table, tracking_uri, grid)
        _metric_sections(page, table, grid)
        _noise_level_section(page, table, grid)
        _curve_section(page, table, tracking_uri, grid)
        _samples_section(page, table, grid, tracking_uri)
    for search in searches:  # the study view, for each Optuna search
        _study_view(page, search, df, tracking_uri, convention)

    status = _status_counts(df, table)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    kind = "search" if not len(grid) else "ablation and search" if searches else "ablation"
    meta = f"{len(df)} trials ({status}) · tracking store {tracking_uri} · generated {when}"
    text = Template(_TEMPLATE.read_text()).substitute(
        title=html.escape(f"{subject}: {kind} dashboard"),
        meta=html.escape(meta),
        n_plots=page.n_figures,
        body="\n".join(page.parts),
        plotly_js=get_plotlyjs(),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = out / "index.html"
    index.write_text(text, encoding="utf-8")
    save_results(df, out / "results.parquet")  # the numbers behind the page, for notebooks
    return index
