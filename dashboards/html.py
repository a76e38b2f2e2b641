"""The static dashboard: one self-contained HTML file (plotly.js inlined, images as data URIs)
that opens offline, from a study's MLflow runs.

The page reports its own health for headless checks: ``<html data-plots-rendered="N">`` once
every plot has rendered, and script errors written into ``#js-errors``
(``<html data-js-errors="yes">``).
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path
from string import Template

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from dashboards import plots
from dashboards.results import (
    fetch_artifact,
    load_histories,
    load_launches,
    load_results,
    load_slice_metrics,
    save_results,
)
from dashboards.tables import AblationTable, Convention, ablation_table, render

_TEMPLATE = Path(__file__).parent / "templates" / "dashboard.html"


class _Page:
    """Sections of the page, and the figures they reference by div id."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n_figures = 0

    def section(self, title: str) -> None:
        self.parts.append(f"<h2>{html.escape(title)}</h2>")

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def figure(self, fig: go.Figure) -> str:
        div = f"plot-{self.n_figures}"
        self.n_figures += 1
        spec = fig.to_json().replace("</", "<\\/")  # never close the script tag early
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


def _metric_sections(page: _Page, table: AblationTable, df: pd.DataFrame) -> None:
    keys = [c.key for c in table.columns]
    quality = [k for k in keys if not k.startswith("ams_") and k in keys[:3]]
    page.section("Metric per row")
    page.figures([plots.metric_per_row(table, df, quality)])
    stochastic = [k for k in keys if k.startswith("ams_")] + (["sd"] if "sd" in keys else [])
    if stochastic:
        page.figures([plots.metric_per_row(table, df, stochastic)])

    page.section("Quality vs cost")
    figs = [plots.quality_vs_cost(table, cost, table.metric) for cost in ("gmacs", "params_m")]
    shown = [f for f in figs if f is not None]
    if shown:
        page.note("Dashed: the Pareto front (no other row is both cheaper and better).")
        page.figures(shown, columns=2)
    else:
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
    run_ids = [r for ln in table.lines for r in ln.run_ids]
    terms = sorted(c.removeprefix("metrics.") for c in df.columns if c.startswith("metrics.loss/"))
    keys = ["loss", *terms]
    fig = plots.loss_curves(table, {k: load_histories(tracking_uri, run_ids, k) for k in keys})
    if fig is None:
        page.note("No trial logged a 'loss' history.")
    else:
        if terms:
            page.note("The menu switches between the total loss and its terms.")
        page.figures([fig])


def _optuna_section(page: _Page, tracking_uri: str, experiment: str) -> None:
    searches = [la for la in load_launches(tracking_uri, experiment) if la.kind == "search"]
    page.section("Optuna search")
    if not searches:
        page.note("No Optuna search in this study (its launches are grids).")
        return
    for launch in searches:
        if not (launch.optuna_storage and launch.optuna_study):
            page.note(f"Search run {launch.run_id} recorded no Optuna storage/study tags.")
            continue
        figs, notes = plots.optuna_figures(launch.optuna_storage, launch.optuna_study)
        for text in notes:
            page.note(text)
        page.figures(figs)


def _samples_section(
    page: _Page, table: AblationTable, df: pd.DataFrame, tracking_uri: str
) -> None:
    page.section("Samples")
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


def build_dashboard(
    experiment: str,
    tracking_uri: str,
    out_dir: str | Path,
    convention: Convention = "standard",
) -> Path:
    """Write ``<out_dir>/index.html`` (and the results as ``results.parquet``) for a study."""
    df = load_results(tracking_uri, experiment)
    table = ablation_table(
        df,
        convention=convention,
        slices=lambda ids: load_slice_metrics(tracking_uri, df[df["run_id"].isin(ids)]),
    )
    page = _Page()
    _table_section(page, table)
    _metric_sections(page, table, df)
    _noise_level_section(page, table, df)
    _curve_section(page, table, tracking_uri, df)
    _optuna_section(page, tracking_uri, experiment)
    _samples_section(page, table, df, tracking_uri)

    counts = df["status"].value_counts().to_dict()
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"{len(df)} trials ({status}) · tracking store {tracking_uri} · generated {when}"
    text = Template(_TEMPLATE.read_text()).substitute(
        title=html.escape(f"{experiment}: ablation dashboard"),
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
