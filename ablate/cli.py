"""The ``ablate`` command line: parses arguments and calls library functions, nothing more.

Every user-facing error is an :class:`ablate.errors.UserError` (or a
:class:`ablate.config.ConfigError`) and is printed as one red line with exit code 2,
never as a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ablate.errors import UserError

app = typer.Typer(
    help="Ablation studies and hyperparameter searches of diffusion-based PET reconstruction.",
    no_args_is_help=True,
    add_completion=False,
)
data_app = typer.Typer(help="Simulate, import and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`UserError` into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            Console(stderr=True, soft_wrap=True).print(
                f"[bold red]error:[/] {err}", highlight=False
            )
            raise typer.Exit(code=2) from None

    return wrapper


# --- commands ------------------------------------------------------------------------------
# Each command is a thin wrapper: parse, call one library function, print.

WORKDIR_OPT = typer.Option(Path("runs"), "--workdir", help="Work directory (MLflow, Ray, data).")
TRACKING_OPT = typer.Option(None, "--tracking-uri", help="MLflow URI (default: sqlite in workdir).")
ADDRESS_OPT = typer.Option(
    None, "--address", help="Ray cluster: auto, HOST:PORT or ray://... (default: embedded)."
)


def _workspace(workdir: Path, tracking_uri: str | None, storage: str | None = None) -> Any:
    from ablate.experiment import Workspace

    return Workspace.create(workdir, tracking_uri, storage)


def _parse_resources(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in ("cpu", "gpu") or not value:
            raise UserError(f"--resources '{text}': use e.g. cpu=1,gpu=0.25")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise UserError(f"--resources '{text}': '{value}' is not a number") from None
    return out


def _apply_overrides(exp: Any, seeds: int | None, resources: str | None) -> Any:
    update: dict[str, Any] = {}
    if seeds is not None:
        if seeds < 1:
            raise UserError("--seeds must be at least 1")
        update["seeds"] = list(range(seeds))
    res = _parse_resources(resources)
    if res:
        update["resources"] = exp.resources.model_copy(update=res)
    return exp.model_copy(update=update)


def _print_launch(result: Any, workdir: Path) -> None:
    console.print(
        f"[bold]{result.name}[/]: {result.n_trials} trials, {result.n_errors} failed, "
        f"{result.wall_s:.0f} s. MLflow store: {result.tracking_uri} "
        f"(parent run {result.parent_run_id}). Open it with: ablate ui --workdir {workdir}"
    )


@app.command()
@friendly_errors
def run(
    space: Path = typer.Argument(..., help="Search-space YAML (e.g. search_spaces/demo.yaml)."),
    address: str | None = ADDRESS_OPT,
    seeds: int | None = typer.Option(None, "--seeds", help="Seeds per row: 0..N-1."),
    resources: str | None = typer.Option(None, "--resources", help="Per trial: cpu=1,gpu=0.25"),
    storage: str | None = typer.Option(None, "--storage", help="Ray storage path (shared FS)."),
    tracking_uri: str | None = TRACKING_OPT,
    name: str | None = typer.Option(None, "--name", help="Launch name (default: config name)."),
    workdir: Path = WORKDIR_OPT,
) -> None:
    """Run an ablation grid: rows x seeds (x grid axes) as Ray Tune trials."""
    from ablate.config import load_experiment
    from ablate.experiment import launch_grid

    exp = _apply_overrides(load_experiment(space), seeds, resources)
    ws = _workspace(workdir, tracking_uri, storage)
    _print_launch(launch_grid(exp, ws, address=address, name=name), workdir)


@app.command()
@friendly_errors
def search(
    space: Path = typer.Argument(..., help="YAML with a 'search' section."),
    address: str | None = ADDRESS_OPT,
    confirm_seeds: int = typer.Option(0, "--confirm-seeds", help="Re-run the best over N seeds."),
    resources: str | None = typer.Option(None, "--resources", help="Per trial: cpu=1,gpu=0.25"),
    storage: str | None = typer.Option(None, "--storage", help="Ray storage path (shared FS)."),
    tracking_uri: str | None = TRACKING_OPT,
    name: str | None = typer.Option(None, "--name", help="Launch name (default: config name)."),
    workdir: Path = WORKDIR_OPT,
) -> None:
    """Optuna (TPE) search with ASHA pruning over the knobs declared in 'search'."""
    from ablate.config import load_experiment
    from ablate.experiment import best_search_config, confirm_best, launch_search

    exp = _apply_overrides(load_experiment(space), None, resources)
    ws = _workspace(workdir, tracking_uri, storage)
    result = launch_search(exp, ws, address=address, name=name)
    _print_launch(result, workdir)
    best = best_search_config(ws, result.name)
    console.print(f"best {exp.search.metric if exp.search else ''}: {best}")
    if confirm_seeds:
        _print_launch(confirm_best(exp, ws, result.name, confirm_seeds, address=address), workdir)


@app.command()
@friendly_errors
def resume(
    name: str = typer.Argument(..., help="Launch name (as given to run/search)."),
    address: str | None = ADDRESS_OPT,
    storage: str | None = typer.Option(None, "--storage", help="Ray storage path."),
    workdir: Path = WORKDIR_OPT,
) -> None:
    """Resume an interrupted grid or search; no MLflow run is duplicated."""
    from ablate.experiment import resume as resume_launch

    ws = _workspace(workdir, None, storage)
    _print_launch(resume_launch(ws, name, address=address), workdir)


@app.command()
@friendly_errors
def status(
    name: str = typer.Argument(..., help="Launch name."),
    storage: str | None = typer.Option(None, "--storage", help="Ray storage path."),
    workdir: Path = WORKDIR_OPT,
) -> None:
    """Trials of a launch, their states and failures (from its MLflow runs)."""
    from rich.table import Table

    from ablate.experiment import launch_status

    rows = launch_status(_workspace(workdir, None, storage), name)
    table = Table(title=f"launch {name}")
    for col in ("run", "status", "psnr", "error"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["run"], r["status"], r["psnr"], r["error"])
    console.print(table)


@app.command()
@friendly_errors
def demo(
    workdir: Path = WORKDIR_OPT,
    steps: int | None = typer.Option(None, "--steps", help="Training steps per trial."),
    seeds: int | None = typer.Option(None, "--seeds", help="Seeds per row (default 2)."),
) -> None:
    """Simulate a tiny PET dataset, run every Table-2 row x 2 seeds, print the table."""
    from ablate.config import load_experiment
    from ablate.experiment import launch_grid, search_space_path
    from dashboards.results import load_results
    from dashboards.tables import ablation_table

    exp = _apply_overrides(load_experiment(search_space_path("demo.yaml")), seeds, None)
    if steps is not None:
        exp = exp.model_copy(update={"train": exp.train.model_copy(update={"steps": steps})})
    ws = _workspace(workdir, None)
    console.print(
        f"[bold]ablate demo[/]: {len(exp.rows)} rows x {len(exp.seeds)} seeds on an embedded "
        f"Ray, MLflow store {ws.tracking_uri}"
    )
    result = launch_grid(exp, ws)
    console.print(ablation_table(load_results(ws.tracking_uri, exp.name)))
    _print_launch(result, workdir)


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
