"""``ablate data simulate | import | info``: datasets before any launch."""

from __future__ import annotations

from pathlib import Path

import typer

from ablate.cli.app import console, friendly_errors
from ablate.errors import UserError


@friendly_errors
def data_simulate(
    out: Path = typer.Option(..., "--out", help="Dataset folder to create (must not exist)."),
    preset: str = typer.Option("tiny", "--preset", help="tiny, lowdose-128 or sinogram-256."),
    seed: int = typer.Option(0, "--seed", help="Subject k is reproducible from (seed, k)."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a simulator knob: --set subjects=10 --set dose_reduction=50."
    ),
) -> None:
    """Simulate a PET dataset (brain phantoms, Poisson counts, OSEM) with the offline simulator."""
    from rich.progress import Progress

    from ablate.data.simulate import parse_overrides, simulate_dataset

    overrides = parse_overrides(set_)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"simulating {preset}", total=None)
        root = simulate_dataset(
            preset, seed, overrides, out, lambda k, n: bar.update(task, completed=k, total=n)
        )
    console.print(f"dataset -> {root} (inspect it with `ablate data info {root}`)")


@friendly_errors
def data_import(
    source: Path = typer.Argument(..., help="Folder of NIfTI files / DICOM series folders."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to create (must not exist)."),
    pairs: Path | None = typer.Option(
        None,
        "--pairs",
        help="CSV with columns subject, spet and optionally lpet, sinogram, split, mask "
        "(paths relative to the CSV).",
    ),
    masks: Path | None = typer.Option(
        None,
        "--masks",
        help="Folder of lesion label NIfTIs, SUBJECT.nii.gz on the full-dose grid (0 = none): "
        "lesion metrics.",
    ),
    pair_by: str = typer.Option(
        "{subject}_{dose}", "--pair-by", help="Naming rule, e.g. '{subject}_{dose}' (low/full)."
    ),
    size: int = typer.Option(128, "--size", help="Slice size after resampling (pixels)."),
    split: str = typer.Option("0.7,0.1,0.2", "--split", help="train,val,test fractions."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subject split."),
    dose_reduction: float | None = typer.Option(
        None, "--dose-reduction", help="Dose reduction factor of the low-dose scans (recorded)."
    ),
    units: str = typer.Option(
        "native",
        "--units",
        help="native (as stored, e.g. Bq/mL) or suv (SUVbw from the DICOM tags or the "
        "NIfTI's _pet.json sidecar).",
    ),
    series: str | None = typer.Option(
        None,
        "--series",
        help="The series to read from DICOM folders holding several: its description, "
        "number or UID.",
    ),
    full: str | None = typer.Option(
        None, "--full", help="PET-BIDS source: the entity of the full-dose scans, e.g. acq-std."
    ),
    low: str | None = typer.Option(
        None, "--low", help="PET-BIDS source: the entity of the low-dose scans, e.g. acq-low."
    ),
) -> None:
    """Import your own volumes (NIfTI, DICOM series, a PET-BIDS tree) as an ablate dataset."""
    from ablate.data.format import read_provenance
    from ablate.data.importing import attach_masks, import_dataset, pairs_by_name, pairs_from_csv

    try:
        fractions = tuple(float(f) for f in split.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise UserError(f"--split '{split}': three fractions adding up to 1, e.g. 0.7,0.1,0.2")
    if not source.is_dir():
        raise UserError(f"{source}: not a folder")
    from ablate.data.bids import is_bids, pairs_from_bids

    if full is not None:
        found = pairs_from_bids(source, full, low)
    elif low is not None:
        raise UserError("--low needs --full: give the entity of both doses, e.g. --full acq-std")
    elif is_bids(source) and pairs is None:
        raise UserError(
            f"{source} is a BIDS tree: say which scans are which, e.g. --full acq-std --low acq-low"
        )
    else:
        found = pairs_from_csv(pairs) if pairs is not None else pairs_by_name(source, pair_by)
    if masks is not None:
        found = attach_masks(found, masks)
    root = import_dataset(
        out, found, size, fractions, seed, dose_reduction, str(source), units, series
    )
    provenance = read_provenance(root)
    skipped = provenance["skipped_files"]
    console.print(
        f"imported {len(found)} subjects -> {root} (units: {provenance['units']})", soft_wrap=True
    )
    if skipped:
        names = sorted({Path(name).name for name in skipped})
        console.print(
            f"skipped {len(skipped)} non-image files in DICOM folders ({', '.join(names)})",
            soft_wrap=True,
            highlight=False,
        )
    _print_constant_slices(root)


def _print_constant_slices(root: Path) -> None:
    from ablate.data.inspection import constant_slices_report

    for line in constant_slices_report(root):
        console.print(f"[yellow]note[/]: {line}", highlight=False, soft_wrap=True)


@friendly_errors
def data_info(path: Path = typer.Argument(..., help="A dataset folder.")) -> None:
    """Subjects, splits, shapes, intensity statistics and provenance of a dataset."""
    import json

    from rich.table import Table

    from ablate.data.inspection import dataset_info

    info = dataset_info(path)
    console.print(f"[bold]{info['path']}[/]: {info['subjects']} subjects, {info['slices']} slices")
    parts = [f"{k} {v['subjects']} ({v['slices']} slices)" for k, v in info["splits"].items()]
    console.print(f"splits: {', '.join(parts)}")
    console.print(f"units: {info['provenance'].get('units', 'unknown')}", highlight=False)
    table = Table("array", "shape", "min", "mean", "p99", "max")
    for kind, s in info["arrays"].items():
        values = (f"{s[k]:.4g}" for k in ("min", "mean", "p99", "max"))
        table.add_row(kind, "x".join(map(str, s["shape"])), *values)
    console.print(table)
    _print_constant_slices(path)
    prov = {k: v for k, v in info["provenance"].items() if k not in ("lesions", "subjects")}
    console.print_json(json.dumps(prov, default=str))
