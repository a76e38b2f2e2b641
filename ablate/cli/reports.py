"""The commands that read finished work: ``results``, ``table``, ``count``, ``dashboard``,
``ui``, ``export``, ``predict`` and ``evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ablate.cli.app import (
    STORAGE_OPT,
    TRACKING_OPT,
    WORKDIR_OPT,
    console,
    friendly_errors,
    quiet_mlflow,
)
from ablate.errors import UserError
from ablate.workspace import Workspace, storage_of, tracking_uri_of


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
    quiet_mlflow()
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

    quiet_mlflow()
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


_WORKDIR_HELP = "Work directory whose MLflow store (mlflow.db) to read."

_URI_HELP = "MLflow tracking URI (overrides --workdir), e.g. http://127.0.0.1:5000."


def _study(name: str, workdir: str, tracking_uri: str, storage: str | None = None) -> Any:
    """The experiment or launch ``name`` refers to; launch records are read from
    ``--storage`` (default <workdir>/ray_results), so a machine that shares nothing with the
    launch's driver finds a cluster launch through the bucket and its tracking server."""
    from ablate.launches import resolve_study

    return resolve_study(name, storage_of(workdir, storage), tracking_uri)


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


def print_contrasts(tracking_uri: str, experiment: str, parent_run_id: str) -> None:
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
