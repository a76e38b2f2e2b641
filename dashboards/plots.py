"""Plotly figures of a study: metric per row, quality vs cost with the Pareto front, quality vs
noise level (diffusion rows), loss curves, Optuna search plots, and colour-mapped sample images.

Figures are built from an :class:`~dashboards.tables.AblationTable` (means and std per line,
the same numbers the table prints) and the results frame (one value per trial), so the
dashboard and the table cannot disagree.
"""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.tables import AblationTable, Column, Line

if TYPE_CHECKING:
    from dashboards.study import Objective, TrialsTable

_PALETTE = plotly.colors.qualitative.Plotly


def _measured(table: AblationTable) -> list[Line]:
    return [ln for ln in table.lines if ln.kind == "measured" and ln.n]


def _colour(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(
        title=title, height=height, template="plotly_white", margin=dict(l=60, r=20, t=60, b=60)
    )
    return fig


def metric_per_row(table: AblationTable, df: pd.DataFrame, keys: list[str]) -> go.Figure:
    """Bars of the mean per line with std error bars, and one dot per seed on top."""
    columns = {c.key: c for c in table.columns}
    keys = [k for k in keys if k in columns]
    lines = _measured(table)
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=[_title(columns[k]) for k in keys])
    by_run = df.set_index("run_id")
    for j, key in enumerate(keys, start=1):
        shown = [ln for ln in lines if key in ln.values]
        means = [ln.values[key][0] for ln in shown]
        stds = [ln.values[key][1] or 0.0 for ln in shown]
        fig.add_bar(
            x=[ln.label for ln in shown],
            y=means,
            error_y=dict(type="data", array=stds, visible=True),
            marker_color=[_colour(lines.index(ln)) for ln in shown],
            name=columns[key].title,
            showlegend=False,
            row=1,
            col=j,
        )
        seeds_x, seeds_y, text = [], [], []
        for ln in shown:
            values = by_run.loc[ln.run_ids, f"metrics.{key}"]
            for seed, value in zip(ln.seeds, values, strict=True):
                seeds_x.append(ln.label)
                seeds_y.append(value)
                text.append(f"seed {seed}")
        fig.add_scatter(
            x=seeds_x,
            y=seeds_y,
            mode="markers",
            text=text,
            marker=dict(color="black", size=6, symbol="circle-open"),
            name="seeds",
            showlegend=j == 1,
            row=1,
            col=j,
        )
        spread = max(means) - min(means) + 2 * max(stds) if means else 0.0
        if means and spread > 1e-9 * max(abs(m) for m in means):
            # zoom on the differences: bars from 0 would hide a 0.3 dB ablation
            low, high = min(means) - max(stds), max(means) + max(stds)
            bottom = low - 0.3 * spread
            if min(means) >= 0:  # PSNR, SSIM, NMSE, SD are never negative
                bottom = max(bottom, 0.0)
            fig.update_yaxes(range=[bottom, high + 0.3 * spread], row=1, col=j)
    return _layout(fig, f"Metric per row (mean ± std over seeds, {table.convention} convention)")


def _title(col: Column) -> str:
    return f"{col.title} {'↑' if col.better == 'max' else '↓'}"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and quality (higher),
    ordered by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def quality_vs_cost(table: AblationTable, cost: str, quality: str) -> go.Figure | None:
    """One point per line (std error bars), the Pareto front as a step line; ``None`` without
    lines that logged both numbers."""
    columns = {c.key: c for c in table.columns}
    lines = [ln for ln in _measured(table) if cost in ln.values and quality in ln.values]
    if not lines or cost not in columns or quality not in columns:
        return None
    pts = [(ln.values[cost][0], ln.values[quality][0]) for ln in lines]
    fig = go.Figure()
    low, high = min(x for x, _ in pts), max(x for x, _ in pts)
    for i, (ln, (x, y)) in enumerate(zip(lines, pts, strict=True)):
        # a label centred on the leftmost or rightmost point would run past the plot's edge
        side = "right" if x == low and low < high else "left" if x == high and low < high else ""
        fig.add_scatter(
            x=[x],
            y=[y],
            error_y=dict(type="data", array=[ln.values[quality][1] or 0.0], visible=True),
            mode="markers+text",
            text=[ln.label],
            textposition=f"top {side or 'center'}",
            cliponaxis=False,
            marker=dict(size=12, color=_colour(i)),
            name=ln.label,
        )
    front = pareto_front(pts)
    fig.add_scatter(
        x=[pts[i][0] for i in front],
        y=[pts[i][1] for i in front],
        mode="lines",
        line=dict(shape="hv", dash="dash", color="grey"),
        name="Pareto front",
    )
    xs = [p[0] for p in pts]
    log = min(xs) > 0 and max(xs) / min(xs) > 20
    fig.update_xaxes(title=columns[cost].title, type="log" if log else "linear")
    fig.update_yaxes(title=columns[quality].title)
    return _layout(fig, f"{columns[quality].title} vs {columns[cost].title}")


def noise_level_quality(table: AblationTable, df: pd.DataFrame) -> go.Figure | None:
    """The one-step x0 PSNR of each diffusion line against the signal fraction gamma (log
    axis; mean ± std over seeds), with the line's sample PSNR as a dotted level: where in
    the schedule a row's denoiser fails, beside what its sampler delivers. None when no
    line logged the diagnostic (``x0_psnr/level_<i>``, ``x0_gamma/level_<i>``)."""
    levels = noise_level_columns(df)
    if not levels:
        return None
    by_run = df.set_index("run_id")
    fig = go.Figure()
    for i, ln in enumerate(_measured(table)):
        runs = by_run.loc[ln.run_ids]
        xs, ys, sds = [], [], []
        for psnr_col, gamma_col in levels:
            values = runs[psnr_col].dropna()
            if values.empty:
                continue
            xs.append(float(runs[gamma_col].mean()))
            ys.append(float(values.mean()))
            sds.append(float(values.std(ddof=1)) if len(values) > 1 else 0.0)
        if not xs:
            continue
        colour = _colour(i)
        fig.add_scatter(
            x=xs,
            y=ys,
            error_y=dict(type="data", array=sds, visible=True),
            mode="lines+markers",
            line=dict(color=colour),
            name=f"{ln.label}: one-step x0",
            legendgroup=ln.name,
        )
        if table.metric in ln.values:
            fig.add_scatter(
                x=[min(xs), max(xs)],
                y=[ln.values[table.metric][0]] * 2,
                mode="lines",
                line=dict(color=colour, dash="dot"),
                name=f"{ln.label}: sample {table.metric}",
                legendgroup=ln.name,
            )
    if not fig.data:
        return None
    fig.update_xaxes(title="signal fraction gamma (noisy ← → clean)", type="log")
    fig.update_yaxes(title="PSNR (dB) of the one-step x0 estimate")
    return _layout(fig, "Quality vs noise level (diffusion rows; dotted: the sample's PSNR)")


def noise_level_columns(df: pd.DataFrame) -> list[tuple[str, str]]:
    """``(metrics.x0_psnr/level_<i>, metrics.x0_gamma/level_<i>)`` pairs present in ``df``,
    by level."""
    prefix = "metrics.x0_psnr/level_"
    found = sorted(int(c.removeprefix(prefix)) for c in df.columns if c.startswith(prefix))
    pairs = [(f"{prefix}{i}", f"metrics.x0_gamma/level_{i}") for i in found]
    return [(p, g) for p, g in pairs if g in df.columns and df[p].notna().any()]


def loss_curves(table: AblationTable, histories: dict[str, pd.DataFrame]) -> go.Figure | None:
    """Training curves of every trial against the iteration, one colour per line.

    Every trial of the table is drawn, those that did not complete too (dashed, their status
    in the hover text): a failed or interrupted trial's loss is often what explains it.
    ``histories`` maps a metric (``loss``, ``loss/<term>``) to its per-step history; with
    several, a menu switches between them (the first is shown).
    """
    histories = {k: h for k, h in histories.items() if not h.empty}
    if not histories:
        return None
    fig = go.Figure()
    visible: dict[str, list[int]] = {}
    measured = [ln for ln in table.lines if ln.kind == "measured"]
    for n, (key, hist) in enumerate(histories.items()):
        start = len(fig.data)
        for i, ln in enumerate(measured):
            drawn = 0
            for run_id, seed, status in ln.trials:
                curve = hist[hist["run_id"] == run_id]
                if curve.empty:
                    continue
                done = status == "completed"
                fig.add_scatter(
                    x=curve["step"],
                    y=curve["value"],
                    mode="lines",
                    line=dict(color=_colour(i), dash="solid" if done else "dash"),
                    name=ln.label,
                    legendgroup=ln.name,
                    showlegend=drawn == 0,
                    hovertext=f"{key}: {ln.label}, seed {seed}" + ("" if done else f", {status}"),
                    visible=n == 0,
                )
                drawn += 1
        visible[key] = list(range(start, len(fig.data)))

    def axis(key: str) -> str:
        return "log" if bool((histories[key]["value"] > 0).all()) else "linear"

    first = next(iter(histories))
    fig.update_xaxes(title="iteration")
    fig.update_yaxes(title=first, type=axis(first))
    if len(histories) > 1:
        buttons = [
            dict(
                label=key,
                method="update",
                args=[
                    {"visible": [t in visible[key] for t in range(len(fig.data))]},
                    {"yaxis.title.text": key, "yaxis.type": axis(key)},
                ],
            )
            for key in histories
        ]
        menu = dict(buttons=buttons, x=0.5, xanchor="center", y=1.02, yanchor="bottom")
        fig.update_layout(updatemenus=[menu])
    return _layout(fig, "Training curves per row (one line per seed)")


# --- images ----------------------------------------------------------------------------------


def _lut(scale: str) -> np.ndarray:
    colours = plotly.colors.sample_colorscale(scale, list(np.linspace(0, 1, 256)))
    return np.array(
        [[int(float(v)) for v in c[c.index("(") + 1 : -1].split(",")] for c in colours],
        dtype=np.uint8,
    )


def image_png(image: np.ndarray, vmin: float, vmax: float, scale: str = "Greys_r") -> str:
    """A 2D array as a colour-mapped PNG data URI (min/max fixed by the caller)."""
    from PIL import Image

    span = vmax - vmin if vmax > vmin else 1.0
    index = np.clip((np.nan_to_num(image) - vmin) / span * 255, 0, 255).astype(np.uint8)
    rgb = _lut(scale)[index]
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def sample_panels(path: Path, max_samples: int = 2) -> list[list[tuple[str, str]]]:
    """Per sample of ``samples.npz``: (caption, PNG URI) for the input (the LPET slice in
    the reference's window, or the sinogram in its own), reference, output, error and, for
    stochastic rows, the per-pixel SD over the K samples."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    out = []
    for i in range(min(max_samples, len(arrays["reference"]))):
        ref = arrays["reference"][i]
        lo, hi = float(ref.min()), float(ref.max())
        if "sinogram" in arrays:
            sino = arrays["sinogram"][i]
            panels = [("sinogram", image_png(sino, float(sino.min()), float(sino.max())))]
        else:
            panels = [("input", image_png(arrays["input"][i], lo, hi))]
        panels += [(name, image_png(arrays[name][i], lo, hi)) for name in ("reference", "output")]
        err = np.abs(arrays["output"][i] - ref)
        scale = f"|error| (max {err.max():.3g})"
        panels.append((scale, image_png(err, 0.0, float(err.max()), "Inferno")))
        if "sd_map" in arrays:
            sd = arrays["sd_map"][i]
            panels.append(
                (f"SD (max {sd.max():.3g})", image_png(sd, 0.0, float(sd.max()), "Viridis"))
            )
        out.append(panels)
    return out


# --- Optuna searches --------------------------------------------------------------------------

#: How the dashboard names Optuna's importance evaluators (by class name).
EVALUATOR_NAMES = {
    "PedAnovaImportanceEvaluator": "PED-ANOVA",
    "FanovaImportanceEvaluator": "fANOVA",
    "MeanDecreaseImpurityImportanceEvaluator": "mean decrease impurity",
}


def importance_evaluator() -> Any:
    """The evaluator the importance plot uses: PED-ANOVA, the one Optuna 5's
    ``get_param_importances`` uses by default (``tests`` check that it still is)."""
    from optuna.importance import PedAnovaImportanceEvaluator

    return PedAnovaImportanceEvaluator()


def evaluator_name(evaluator: Any) -> str:
    name = type(evaluator).__name__
    return EVALUATOR_NAMES.get(name, name)


def intermediate_values(
    table: TrialsTable, history: pd.DataFrame, objective: Objective
) -> go.Figure | None:
    """The validation objective of every trial at each evaluation, pruned trials dashed with
    a cross where ASHA stopped them; ``None`` without any history."""
    if history.empty:
        return None
    fig = go.Figure()
    cut_x, cut_y, cut_text = [], [], []
    lines = sorted(table.lines, key=lambda ln: (ln.number is None, ln.number or 0))
    for i, line in enumerate(lines):
        curve = history[history["run_id"] == line.run_id].sort_values("step")
        if curve.empty:
            continue
        name = f"#{line.number}" if line.number is not None else line.run_id[:8]
        dash = {"pruned": "dash", "failed": "dot", "running": "dot"}.get(line.state, "solid")
        fig.add_scatter(
            x=curve["step"],
            y=curve["value"],
            mode="lines+markers",
            line=dict(color=_colour(i), dash=dash, width=4 if line.best else 2),
            marker=dict(size=5),
            name=f"{name} ({line.state_text})" + (" best" if line.best else ""),
            hovertemplate=f"trial {name}<br>step %{{x}}<br>{objective.title} %{{y:.4g}}"
            "<extra></extra>",
        )
        if line.state == "pruned":
            cut_x.append(int(curve["step"].iloc[-1]))
            cut_y.append(float(curve["value"].iloc[-1]))
            cut_text.append(f"trial {name} pruned at step {cut_x[-1]}")
    if cut_x:
        fig.add_scatter(
            x=cut_x,
            y=cut_y,
            mode="markers",
            marker=dict(symbol="x", size=13, color="#b00020", line=dict(width=1)),
            name="pruned here (ASHA)",
            hovertext=cut_text,
            hoverinfo="text",
        )
    fig.update_xaxes(title="training iteration")
    fig.update_yaxes(title=f"{objective.title} {objective.arrow}")
    return _layout(fig, f"Intermediate values: {objective.title} per validation", height=460)


def _target(objective: Objective, index: int, multi: bool) -> dict[str, Any]:
    """Arguments of Optuna's plots for one objective of a (multi-objective) study."""
    if not multi:
        return {"target_name": objective.title}
    return {"target": lambda t: t.values[index], "target_name": objective.title}


def optimisation_history(study: Any, objective: Objective) -> go.Figure:
    """Objective per completed trial and the best so far (one-objective studies)."""
    import optuna.visualization as vis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = vis.plot_optimization_history(study, target_name=objective.title)
    return _layout(fig, f"Optimisation history: {objective.title}, best so far")


def parallel_coordinates(
    study: Any, objective: Objective, index: int, multi: bool, params: list[str]
) -> go.Figure:
    import optuna.visualization as vis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = vis.plot_parallel_coordinate(study, params=params, **_target(objective, index, multi))
    return _layout(fig, f"Parallel coordinates: {objective.title} (completed trials)")


def slice_plot(
    study: Any, objective: Objective, index: int, multi: bool, params: list[str]
) -> go.Figure:
    """The objective against each searched parameter, one panel per parameter."""
    import optuna.visualization as vis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = vis.plot_slice(study, params=params, **_target(objective, index, multi))
    return _layout(fig, f"Slice plots: {objective.title} against each parameter", height=440)


def param_importances(
    study: Any, objectives: list[Objective], params: list[str]
) -> tuple[go.Figure, str]:
    """Importance of each parameter, computed by :func:`importance_evaluator`; with several
    objectives, for reaching the Pareto front and for each objective. Returns the figure and
    the evaluator's name (the figure is titled with it)."""
    import optuna

    evaluator = importance_evaluator()
    name = evaluator_name(evaluator)
    targets: list[tuple[str, Any]] = []
    if len(objectives) == 1:
        targets.append((objectives[0].title, None))  # Optuna follows the study's direction
    else:
        targets.append(("Pareto front", None))  # non-domination rank over every objective
        for i, obj in enumerate(objectives):
            # PED-ANOVA reads an explicit target as lower-is-better
            sign = -1.0 if obj.mode == "max" else 1.0
            targets.append((obj.title, lambda t, i=i, sign=sign: sign * t.values[i]))
    fig = go.Figure()
    for k, (label, target) in enumerate(targets):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = optuna.importance.get_param_importances(
                study, evaluator=evaluator, params=params, target=target, normalize=True
            )
        shown = list(reversed(params))
        fig.add_bar(
            x=[scores.get(p, 0.0) for p in shown],
            y=shown,
            orientation="h",
            name=label,
            marker_color=_colour(k),
            hovertemplate="%{y}: %{x:.3f}<extra>" + label + "</extra>",
        )
    fig.update_xaxes(title=f"importance ({name}, normalised to sum 1)")
    fig.update_layout(barmode="group", showlegend=len(targets) > 1)
    height = max(300, 90 + 40 * len(params) * len(targets))
    return _layout(fig, f"Parameter importance ({name})", height=height), name


def pareto_plot(table: TrialsTable) -> go.Figure | None:
    """Completed trials in objective space (2 or 3 objectives), the Pareto-optimal ones
    coloured and labelled by trial number, the dominated ones grey; ``None`` otherwise."""
    objectives = table.objectives
    done = [ln for ln in table.lines if ln.state == "complete" and None not in ln.objectives]
    if len(objectives) not in (2, 3) or not done:
        return None
    fig = go.Figure()
    for on_front in (False, True):
        group = [ln for ln in done if ln.pareto == on_front]
        if not group:
            continue
        coords = {
            axis: [ln.objectives[i] for ln in group]
            for i, axis in enumerate("xyz"[: len(objectives)])
        }
        hover = [
            f"trial #{ln.number}<br>"
            + "<br>".join(f"{k}={v}" for k, v in ln.params.items())
            + "".join(
                f"<br>{o.title} {v:.4g}" for o, v in zip(objectives, ln.objectives, strict=True)
            )
            for ln in group
        ]
        style = dict(
            mode="markers+text" if on_front else "markers",
            text=[f"#{ln.number}" for ln in group] if on_front else None,
            textposition="top center",
            marker=dict(
                size=12 if on_front else 9,
                color=_colour(1) if on_front else "#aaaaaa",
                line=dict(width=1, color="#333"),
            ),
            name="Pareto front" if on_front else "dominated",
            hovertext=hover,
            hoverinfo="text",
        )
        if len(objectives) == 2:
            fig.add_scatter(**coords, **style)
        else:
            fig.add_scatter3d(**coords, **style)
    if len(objectives) == 2:
        front = sorted((ln for ln in done if ln.pareto), key=lambda ln: ln.objectives[0])
        maximise_x = objectives[0].mode == "max"
        if len(front) > 1:
            fig.add_scatter(
                x=[ln.objectives[0] for ln in front],
                y=[ln.objectives[1] for ln in front],
                mode="lines",
                # through the corners the front attains (worse on both of two neighbours)
                line=dict(dash="dash", color="grey", shape="vh" if maximise_x else "hv"),
                name="front",
                hoverinfo="skip",
            )
        fig.update_xaxes(title=f"{objectives[0].title} {objectives[0].arrow}")
        fig.update_yaxes(title=f"{objectives[1].title} {objectives[1].arrow}")
    else:
        fig.update_layout(
            scene=dict(
                **{
                    f"{axis}axis_title": f"{o.title} {o.arrow}"
                    for axis, o in zip("xyz", objectives, strict=True)
                }
            )
        )
    goals = ", ".join(f"{o.title} {o.arrow}" for o in objectives)
    return _layout(fig, f"Pareto front of the completed trials ({goals})", height=480)
