"""The contrasts, claims, variance shares and design effects of a study, as tables under the
ablation table.

:func:`study_analysis` runs ``ablate.analysis`` on a study's trials with the ``analysis:``,
``claims:`` and ``design:`` settings of its latest launch (the experiment YAML the launch
logged), or of a tidy ``.parquet`` (kept in the file's metadata). A factorial or fractional
``design:`` adds the effects table (main effects and two-way interactions,
``ablate.analysis.factorial``). :func:`render` writes the tables in the ablation table's formats
(Markdown, LaTeX booktabs, CSV, HTML) and :func:`to_rich` for the terminal. Every caption names
the test (or model) and the correction.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from pydantic import TypeAdapter, ValidationError
from rich.markup import escape
from rich.table import Table as RichTable

from ablate import designs
from ablate.analysis import Analysis, analyse
from ablate.analysis.factorial import FactorEffect, Layout
from ablate.analysis.study import Effect, format_value, unit
from ablate.config import AnalysisConfig, Claim, ConfigError, DesignConfig, parse_row
from dashboards.render import Cell, Grid, GridLine, render_as
from dashboards.render import to_rich as grid_to_rich
from dashboards.results import launch_yaml, load_launches
from dashboards.tables import metric_title
from dashboards.tidy import tidy_frame

Part = Literal["contrasts", "claims", "shares", "effects"]
PARTS: tuple[Part, ...] = ("contrasts", "claims", "shares", "effects")
#: Where a tidy frame keeps the analysis settings of the study it came from.
SETTINGS_KEY = "ablate.analysis"
_CLAIMS = TypeAdapter(list[Claim])


@dataclass(frozen=True)
class Settings:
    """What the study's YAML says about its statistics (defaults when it says nothing)."""

    contrasts: Any = "reference"
    correction: str = "holm"
    claims: tuple[Any, ...] = ()
    reference: str | None = None
    source: str = "defaults"
    #: The YAML's ``design:`` and ``rows:`` as logged (the design's rows are regenerated
    #: from them to know each row's factor levels).
    design: dict[str, Any] | None = None
    rows: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The settings in the experiment YAML's shape (what :func:`settings_from` reads)."""
        pairs = self.contrasts
        return {
            "analysis": {
                "contrasts": pairs if isinstance(pairs, str) else [list(p) for p in pairs],
                "correction": self.correction,
            },
            "claims": [c.model_dump() for c in self.claims],
            "reference": self.reference,
            "design": self.design,
            "rows": self.rows,
        }

    def layout(self) -> Layout | None:
        """The factor levels of a factorial or fractional design's rows (None for another
        kind, no design, or a logged design this version cannot regenerate)."""
        if not self.design or not self.rows:
            return None
        try:
            spec = DesignConfig.model_validate(self.design)
            rows = {name: parse_row(raw, f"rows.{name}") for name, raw in self.rows.items()}
            design = designs.generate(spec, rows)
        except (ValidationError, ConfigError, designs.DesignError):
            return None
        if design.kind not in ("factorial", "fractional"):
            return None
        return Layout(design.factors, design.levels(), design.kind, design.aliases)


def settings_from(raw: dict[str, Any] | None, source: str) -> Settings:
    """Settings from an experiment YAML's (or a tidy frame's) mapping; a section this version
    cannot read counts as absent (defaults), never as an error that hides the table."""
    if not raw:
        return Settings()
    try:
        section = AnalysisConfig.model_validate(raw.get("analysis") or {})
        claims = tuple(_CLAIMS.validate_python(raw.get("claims") or []))
    except ValidationError:
        return Settings(source=f"defaults ({source} holds settings this version cannot read)")
    reference = raw.get("reference")
    rows = raw.get("rows") if isinstance(raw.get("rows"), dict) else None
    if reference is None and rows:
        reference = next(iter(rows))  # config.reference_row's rule, on the logged YAML
    design = raw.get("design") if isinstance(raw.get("design"), dict) else None
    return Settings(section.contrasts, section.correction, claims, reference, source, design, rows)


def launch_settings(tracking_uri: str, experiment: str, launch_ids: set[str]) -> Settings:
    """The settings of the latest of ``launch_ids`` (the launches whose trials are shown)."""
    launches = [la for la in load_launches(tracking_uri, experiment) if la.run_id in launch_ids]
    if not launches:
        return Settings()
    latest = max(launches, key=lambda la: la.start_time)
    return settings_from(launch_yaml(tracking_uri, latest), f"launch '{latest.run_name}'")


def replication_notes(tracking_uri: str, experiment: str, launch_ids: set[str]) -> list[str]:
    """Why the seed waves of each replicated launch among ``launch_ids`` stopped
    (``ablate run --until-resolved``): one note line each."""
    return [
        f"seed waves of launch '{la.run_name}': {la.replication_waves}; stopped: "
        f"{la.replication_stop}"
        for la in load_launches(tracking_uri, experiment)
        if la.run_id in launch_ids and la.replication_stop
    ]


def study_analysis(
    tidy: pd.DataFrame, settings: Settings, reference: str | None = None
) -> Analysis:
    """``ablate.analysis.analyse`` of a tidy frame with a study's settings; ``reference``
    (``--reference``) replaces the YAML's reference row."""
    return analyse(
        tidy,
        contrasts=settings.contrasts,
        reference=reference or settings.reference,
        claims=settings.claims,
        correction=settings.correction,  # type: ignore[arg-type]
        layout=settings.layout(),
    )


def tidy_with_settings(
    results: pd.DataFrame, tracking_uri: str | None, settings: Settings
) -> pd.DataFrame:
    """The tidy frame of some trials, carrying the settings in its metadata (Parquet keeps
    them, so ``ablate table FILE.parquet`` analyses the file as the study was analysed)."""
    tidy = tidy_frame(results, tracking_uri)
    tidy.attrs[SETTINGS_KEY] = settings.as_dict()
    return tidy


def grid_analysis(tracking_uri: str, experiment: str, grid: pd.DataFrame) -> Analysis:
    """The analysis of some grid trials (a results frame) with their latest launch's
    settings: the parent run's report and the dashboard."""
    launches = set(grid["parent_run_id"].dropna())
    settings = launch_settings(tracking_uri, experiment, launches)
    found = study_analysis(tidy_with_settings(grid, tracking_uri, settings), settings)
    found.notes += replication_notes(tracking_uri, experiment, launches)
    return found


def launch_analysis(tracking_uri: str, experiment: str, parent_run_id: str) -> Analysis:
    """The analysis of one launch's trials with its own settings (the parent run's report)."""
    from dashboards.results import load_results

    results = load_results(tracking_uri, experiment)
    return grid_analysis(
        tracking_uri, experiment, results[results["parent_run_id"] == parent_run_id]
    )


def _forest(items: list[Any], names: list[str], title: str, unit_: str, margin: int) -> Any:
    """Estimates with their 95% CIs against the zero line (corrected p in the hover)."""
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Scatter(
            x=[e.effect for e in items],
            y=names,
            mode="markers",
            marker={"size": 10},
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [e.high - e.effect for e in items],
                "arrayminus": [e.effect - e.low for e in items],
            },
            text=[f"p (corr.) {_p(e.p_adjusted)}" for e in items],
            name="effect, 95% CI",
        )
    )
    fig.add_vline(x=0, line_dash="dash", line_color="grey")
    fig.update_layout(
        title=title,
        xaxis_title=unit_,
        yaxis={"autorange": "reversed"},
        height=140 + 40 * len(items),
        margin={"l": margin},
    )
    return fig


def forest_plot(analysis: Analysis, metric: str) -> Any:
    """Effects of the tested contrasts on ``metric`` with their 95% CIs and the zero line
    (a plotly figure), or None when none was tested."""
    tested = [e for e in analysis.effects if e.metric == metric and e.tested]
    if not tested:
        return None
    return _forest(
        tested,
        [e.contrast.name for e in tested],
        f"{metric_title(metric)}: effect per contrast, 95% CI ({analysis.correction} "
        "-corrected p in the hover)",
        f"difference of means {unit(metric)}".strip(),
        180,
    )


def effects_forest_plot(analysis: Analysis, metric: str) -> Any:
    """A factorial design's main effects and two-way interactions on ``metric`` with their
    95% CIs (None without a factorial design or a tested term)."""
    tested = [e for e in (analysis.factorial.effects if analysis.factorial else []) if e.tested]
    tested = [e for e in tested if e.metric == metric]
    if not tested:
        return None
    return _forest(
        tested,
        [e.term for e in tested],
        f"{metric_title(metric)}: main effects and two-way interactions, 95% CI "
        f"({analysis.correction}-corrected p in the hover)",
        f"effect {unit(metric)}".strip(),
        140,
    )


def interaction_plot(analysis: Analysis, metric: str) -> Any:
    """One panel per estimated two-way interaction a:b: the model's change in ``metric`` from
    the mean as a goes off -> on, one line with b off and one with b on (parallel lines: no
    interaction). None without a factorial design or an estimated interaction."""
    from plotly.subplots import make_subplots

    effects = analysis.factorial.effects if analysis.factorial else []
    found = {e.term: e for e in effects if e.metric == metric and e.effect is not None}
    pairs = [t for t in found if ":" in t]
    if not pairs:
        return None
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=pairs)
    for i, term in enumerate(pairs):
        a, b = term.split(":")
        main_a = found[a].effect if a in found else 0.0
        main_b = found[b].effect if b in found else 0.0
        ab = found[term].effect
        for b_on, dash in ((False, "dot"), (True, "solid")):
            xb = 0.5 if b_on else -0.5
            ys = [main_a * xa + main_b * xb + ab * xa * xb for xa in (-0.5, 0.5)]
            fig.add_scatter(
                x=[f"{a} off", f"{a} on"],
                y=ys,
                mode="lines+markers",
                line={"dash": dash},
                name=f"{b} {'on' if b_on else 'off'}",
                showlegend=False,
                row=i // cols + 1,
                col=i % cols + 1,
            )
    fig.update_layout(
        title=f"{metric_title(metric)}: two-way interactions a:b, the model's change from the "
        f"mean {unit(metric)} (dotted: b off, solid: b on; parallel lines: no interaction)",
        height=260 * rows + 80,
    )
    return fig


def effect_metrics(analysis: Analysis) -> dict[str, float]:
    """The tested effects and claims as MLflow metrics: ``effect/<contrast>/<metric>`` with
    ``.low``/``.high`` (95% CI) and ``.p_adjusted``; ``claim/<i>/effect`` likewise; a factorial
    or fractional design's terms as ``factorial/<term>/<metric>`` (``irm:spectrum``)."""
    out: dict[str, float] = {}
    named = [(f"effect/{e.contrast.key}/{e.metric}", e) for e in analysis.effects]
    named += [(f"claim/{i}/effect", c.effect) for i, c in enumerate(analysis.claims)]
    terms = analysis.factorial.effects if analysis.factorial else []
    named += [(f"factorial/{e.term}/{e.metric}", e) for e in terms]
    for name, e in named:
        if e.tested:
            out |= {name: e.effect, f"{name}.low": e.low, f"{name}.high": e.high}
            if e.p_adjusted is not None:
                out[f"{name}.p_adjusted"] = e.p_adjusted
    return out


# --- the three tables --------------------------------------------------------------------------


@dataclass
class AnalysisTable:
    """One of the three tables of an analysis (``part``), for rendering."""

    experiment: str
    analysis: Analysis
    part: Part

    @property
    def caption(self) -> str:
        a = self.analysis
        if self.part == "contrasts":
            n = sum(e.tested for e in a.effects)
            return (
                f"Contrasts of '{self.experiment}' ({a.reading}): effect = difference of means "
                f"in the metric's units, 95% CI and p from a {a.method}; p corrected by "
                f"{a.correction_name} across the table's {n} tests. A slice is never a "
                "replicate."
            )
        if self.part == "effects":
            assert a.factorial is not None
            f = a.factorial
            n = sum(e.tested for e in f.effects)
            return (
                f"Effects of '{self.experiment}' ({f.layout.kind} design over "
                f"{', '.join(f.layout.factors)}): a main effect is the change from switching the "
                "factor on, averaged over the other factors; an interaction (a:b), how much one "
                f"factor's effect changes when the other is on. Model: {f.model}; p corrected "
                f"by {a.correction_name} across the table's {n} tests. A CI that covers 0 is "
                "an unresolved effect."
            )
        if self.part == "claims":
            n = len(a.claims)
            return (
                f"Claims of '{self.experiment}': verdict at the {a.correction_name}-corrected "
                f"{a.alpha:.0%} level across the {n} claim(s) ({a.method}); MDE at 80% power "
                f"at level {a.alpha:g}/{n}; seeds needed for the paper's effect "
                "(ablate.paper) at the same test subjects."
            )
        return (
            f"Where the variance of one subject's value comes from in '{self.experiment}' "
            "(shares of the variance: two-way ANOVA moments over seeds x test subjects, AMS "
            "sampling from the per-sample metrics; '–' where not measured)."
        )

    def header(self) -> list[str]:
        if self.part == "effects":
            return ["Term", "Metric", "Effect", "95% CI", "p", "p (corr.)", "n"]
        if self.part == "contrasts":
            return ["Contrast", "Metric", "Effect", "95% CI", "p", "p (corr.)", "n"]
        if self.part == "claims":
            return ["Claim", "Effect", "95% CI", "p (corr.)", "Verdict", "Power"]
        return ["Row", "Metric", "n", "Seeds", "Subjects", "Seed × subject", "Sampling"]

    def rows(self) -> list[list[str]]:
        a = self.analysis
        if self.part == "effects":
            assert a.factorial is not None
            return [
                [e.term, metric_title(e.metric), *_effect_cells(e), _n(e)]
                for e in a.factorial.effects
            ]
        if self.part == "contrasts":
            return [
                [e.contrast.name, metric_title(e.metric), *_effect_cells(e), _n(e)]
                for e in a.effects
            ]
        if self.part == "claims":
            out = []
            for c in a.claims:
                effect, ci, _, _ = _effect_cells(c.effect)
                out.append([c.text, effect, ci, _p(c.effect.p_adjusted), c.verdict, c.explanation])
            return out
        return [
            [
                s.row,
                metric_title(s.metric),
                f"{s.n_seeds}×{s.n_subjects}" + (f"×{s.n_samples}" if s.n_samples > 1 else ""),
                *(_share(v) for v in (s.seeds, s.subjects, s.seed_x_subject, s.sampling)),
            ]
            for s in a.shares
        ]

    def notes(self) -> list[str]:
        a = self.analysis
        if self.part == "effects":
            assert a.factorial is not None
            return list(a.factorial.notes)
        notes = list(a.notes) if self.part == "contrasts" else []
        effects = a.effects if self.part == "contrasts" else [c.effect for c in a.claims]
        if any(e.over == "trial means" and e.n_seeds for e in effects):
            notes.append(
                "n without '× subjects': these runs logged no per-subject metrics "
                "(test_subjects.parquet), so the test is over trial means (seed level)"
            )
        if self.part == "shares" and not a.shares:
            notes.append("no row has per-subject metrics from at least 2 seeds x 2 subjects")
        return notes

    def raw(self) -> tuple[list[str], list[list[Any]]]:
        """Header and unformatted values, for CSV."""
        if self.part == "effects":
            assert self.analysis.factorial is not None
            head = ["term", "metric", "effect", "ci_low", "ci_high", "se", "df", "p"]
            head += ["p_adjusted", "n_seeds", "n_subjects", "n_rows", "over", "note"]
            return head, [
                [e.term, e.metric, e.effect, e.low, e.high, e.se, e.df, e.p, e.p_adjusted]
                + [e.n_seeds, e.n_subjects, e.n_rows, e.over, e.note]
                for e in self.analysis.factorial.effects
            ]
        if self.part == "contrasts":
            head = ["contrast", "metric", "effect", "ci_low", "ci_high", "se", "df", "p"]
            head += ["p_adjusted", "n_seeds", "n_subjects", "over", "note"]
            return head, [
                [e.contrast.name, e.metric, e.effect, e.low, e.high, e.se, e.df, e.p]
                + [e.p_adjusted, e.n_seeds, e.n_subjects, e.over, e.note]
                for e in self.analysis.effects
            ]
        if self.part == "claims":
            head = ["claim", "metric", "effect", "ci_low", "ci_high", "p_adjusted", "verdict"]
            head += ["mde", "paper_effect", "seeds_needed", "n_seeds", "n_subjects", "note"]
            return head, [
                [c.text, c.effect.metric, c.effect.effect, c.effect.low, c.effect.high]
                + [c.effect.p_adjusted, c.verdict, c.mde, c.paper_effect, c.seeds_needed]
                + [c.effect.n_seeds, c.effect.n_subjects, c.explanation]
                for c in self.analysis.claims
            ]
        head = ["row", "metric", "n_seeds", "n_subjects", "n_samples", "seeds", "subjects"]
        head += ["seed_x_subject", "sampling"]
        return head, [
            [s.row, s.metric, s.n_seeds, s.n_subjects, s.n_samples, s.seeds, s.subjects]
            + [s.seed_x_subject, s.sampling]
            for s in self.analysis.shares
        ]


def tables(experiment: str, analysis: Analysis) -> list[AnalysisTable]:
    """The tables worth showing: a design's effects when it is factorial or fractional,
    contrasts, claims when the YAML states some, shares when measured."""
    out = [AnalysisTable(experiment, analysis, "contrasts")]
    if analysis.factorial is not None:
        out.insert(0, AnalysisTable(experiment, analysis, "effects"))
    if analysis.claims:
        out.append(AnalysisTable(experiment, analysis, "claims"))
    if analysis.shares:
        out.append(AnalysisTable(experiment, analysis, "shares"))
    return out


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _effect_cells(e: Effect | FactorEffect) -> list[str]:
    if e.effect is None:
        return ["–", e.note, "–", "–"]
    effect = format_value(e.metric, e.effect, signed=True)
    if not e.tested:
        return [effect, e.note, "–", "–"]
    ci = f"[{format_value(e.metric, e.low, True)}, {format_value(e.metric, e.high, True)}]"
    return [effect, ci, _p(e.p), _p(e.p_adjusted)]


def _n(e: Effect | FactorEffect) -> str:
    seeds = f"{e.n_seeds} seed" + ("" if e.n_seeds == 1 else "s")
    return seeds + (f" × {e.n_subjects} subj." if e.over == "subjects" else "")


def _share(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.0%}"


# --- rendering -------------------------------------------------------------------------------


_VERDICT_STYLE = {"supported": "green", "contradicted": "red", "unresolved": "yellow"}
_VERDICT = 4  # the claims table's verdict column


def _cells(t: AnalysisTable, row: list[str]) -> list[Cell]:
    cells = [Cell(text) for text in row]
    if t.part == "claims" and row[_VERDICT] in _VERDICT_STYLE:
        style = _VERDICT_STYLE[row[_VERDICT]]
        cells[_VERDICT] = Cell(row[_VERDICT], rich=f"[{style}]{escape(row[_VERDICT])}[/]")
    return cells


def grid(t: AnalysisTable) -> Grid:
    """The table's cells for :mod:`dashboards.render`; a claim's row is classed (HTML) and
    coloured (terminal) by its verdict."""
    header = t.header()
    return Grid(
        caption=t.caption,
        label=f"{t.part}-{t.experiment}",
        header=header,
        align=["l", "l"] + ["r"] * (len(header) - 2),
        lines=[
            GridLine(_cells(t, row), css=row[_VERDICT] if t.part == "claims" else "")
            for row in t.rows()
        ],
        notes=t.notes(),
        classes=f"ablation {t.part}",
    )


def _csv(t: AnalysisTable) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    head, rows = t.raw()
    writer.writerow(head)
    for row in rows:
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    return buf.getvalue()


def render(table: AnalysisTable, fmt: str) -> str:
    return render_as(table, fmt, grid, _csv)


def to_rich(table: AnalysisTable) -> RichTable:
    return grid_to_rich(grid(table))
