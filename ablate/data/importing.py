"""Import of the user's own volumes (NIfTI via nibabel, DICOM series via pydicom) as a dataset.

``ablate data import``: find the files of each subject (a pairs CSV or a naming rule), read
and check every volume, resample it to axial slices of the requested size, normalise by the
subject's full-dose scale and write the dataset with :func:`ablate.data.format.write_dataset`.
Everything is read before anything is written, so a bad file leaves no partial dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ablate.data.format import (
    NORMALISATION,
    SPLITS,
    SubjectArrays,
    full_dose_scale,
    package_version,
    write_dataset,
)
from ablate.errors import UserError
from ablate.suv import SUV_UNITS, stored_units, suv_factor
from ablate.volumes import Volume, read_volume, volume_to_slices

DOSE_TAGS = {
    "lpet": ("low", "ld", "lowdose", "lpet", "lowdosepet"),
    "spet": ("full", "fd", "fulldose", "spet", "std", "standard"),
    "sinogram": ("sino", "sinogram"),
}
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy")
#: ``--units``: keep the scanner's values, or convert them to SUV (:mod:`ablate.suv`).
UNITS = ("native", "suv")


@dataclass
class Pair:
    """The files of one subject: full-dose image, optional low-dose image and sinogram."""

    subject: str
    spet: Path
    lpet: Path | None = None
    sinogram: Path | None = None
    split: str | None = None
    mask: Path | None = None  # lesion label NIfTI on the full-dose grid (ablate.lesions)
    group: str | None = None  # the person: sessions of one person share a split (BIDS)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def pairs_from_csv(csv: Path) -> list[Pair]:
    """Pairs from a CSV with columns subject, spet and optionally lpet, sinogram, split, mask.

    Relative paths are relative to the CSV's folder.
    """
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{csv}: unreadable pairs CSV ({exc.__class__.__name__})") from None
    missing = {"subject", "spet"} - set(table.columns)
    if missing:
        raise UserError(
            f"{csv}: missing column(s) {sorted(missing)}: need subject, spet and optionally "
            "lpet, sinogram, split"
        )

    def resolve(value: str) -> Path | None:
        if not value.strip():
            return None
        path = Path(value.strip())
        return path if path.is_absolute() else csv.parent / path

    pairs = []
    for row in table.to_dict("records"):
        split = row.get("split", "").strip() or None
        if split is not None and split not in SPLITS:
            subject = row["subject"]
            raise UserError(f"{csv}: subject {subject}: split '{split}' is not one of {SPLITS}")
        spet = resolve(row["spet"])
        if spet is None:
            raise UserError(f"{csv}: subject {row['subject']} has no spet file")
        pairs.append(
            Pair(
                subject=row["subject"].strip(),
                spet=spet,
                lpet=resolve(row.get("lpet", "")),
                sinogram=resolve(row.get("sinogram", "")),
                split=split,
                mask=resolve(row.get("mask", "")),
            )
        )
    return pairs


def pairs_by_name(folder: Path, pattern: str) -> list[Pair]:
    """Pairs from file/folder names in ``folder`` matching ``pattern``.

    ``pattern`` has the placeholders ``{subject}`` and ``{dose}``, e.g. ``{subject}_{dose}``
    matches ``sub01_low.nii.gz`` and ``sub01_full.nii.gz`` (DICOM series: folder names).
    Dose tags: see :data:`DOSE_TAGS` (case-insensitive).
    """
    if "{subject}" not in pattern or "{dose}" not in pattern:
        raise UserError(f"--pair-by '{pattern}' needs both {{subject}} and {{dose}}")
    regex = re.escape(pattern)
    regex = regex.replace(r"\{subject\}", "(?P<subject>.+?)")
    regex = regex.replace(r"\{dose\}", "(?P<dose>[A-Za-z0-9]+)")
    matcher = re.compile(f"^{regex}$")
    tag_to_kind = {tag: kind for kind, tags in DOSE_TAGS.items() for tag in tags}
    found: dict[str, dict[str, Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        match = matcher.match(_stem(entry))
        if match is None:
            continue
        kind = tag_to_kind.get(match["dose"].lower())
        if kind is None:
            continue
        files = found.setdefault(match["subject"], {})
        if kind in files:
            raise UserError(f"{entry}: a second {kind} file for subject {match['subject']}")
        files[kind] = entry
    if not found:
        raise UserError(
            f"no file in {folder} matches --pair-by '{pattern}' with a dose tag "
            f"(low: {', '.join(DOSE_TAGS['lpet'])}; full: {', '.join(DOSE_TAGS['spet'])})"
        )
    pairs = []
    for subject, files in found.items():
        if "spet" not in files:
            raise UserError(f"subject {subject} in {folder} has no full-dose file")
        pairs.append(Pair(subject, files["spet"], files.get("lpet"), files.get("sinogram")))
    return pairs


def attach_masks(pairs: list[Pair], folder: Path) -> list[Pair]:
    """Give each pair its lesion label NIfTI ``folder/<subject>.nii.gz`` (or ``.nii``)."""
    if not folder.is_dir():
        raise UserError(f"--masks {folder}: not a folder")
    for pair in pairs:
        found = [folder / f"{pair.subject}{suffix}" for suffix in (".nii.gz", ".nii")]
        found = [path for path in found if path.is_file()]
        if not found:
            raise UserError(
                f"--masks {folder}: no {pair.subject}.nii.gz for subject {pair.subject} "
                "(one label NIfTI per subject, 0 outside lesions, on the full-dose grid)"
            )
        pair.mask = found[0]
    return pairs


def _lesion_labels(pair: Pair, full: Volume, image_size: int) -> np.ndarray:
    """The subject's lesion labels cut like its images: each label resampled on its own,
    a pixel taking the label that covers at least half of it (else 0)."""
    mask = read_volume(pair.mask, kinds=("nifti",))
    if mask.array.shape != full.array.shape or not np.allclose(mask.affine, full.affine, atol=1e-3):
        raise UserError(
            f"{pair.mask}: the lesion mask is not on the grid of {pair.spet} (shape "
            f"{mask.array.shape} vs {full.array.shape}, or another affine): resample it"
        )
    values = mask.array
    if (values < 0).any() or not np.allclose(values, np.round(values)):
        raise UserError(f"{pair.mask}: lesion labels must be integers >= 0 (0 = no lesion)")
    data, zooms = mask.ras()
    data = np.round(data)
    labels = np.zeros((data.shape[2], image_size, image_size), np.float32)
    cover = np.zeros_like(labels)
    for label in np.unique(data[data > 0]):
        fraction = volume_to_slices((data == label).astype(np.float32), zooms, image_size)
        wins = (fraction >= 0.5) & (fraction > cover)
        labels[wins], cover[wins] = label, fraction[wins]
    return labels


def load_sinogram(path: Path, n_slices: int) -> np.ndarray:
    """``[slices, angles, bins]`` from ``.npy`` (that order) or NIfTI (bins x angles x slices)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: sinogram file not found")
    try:
        if path.name.lower().endswith(".npy"):
            sino = np.load(path).astype(np.float32)
        else:
            import nibabel as nib

            sino = np.asarray(nib.load(path).get_fdata(dtype=np.float32)).transpose(2, 1, 0)
    except Exception as exc:
        raise UserError(f"{path}: unreadable sinogram ({exc.__class__.__name__})") from None
    if sino.ndim != 3 or sino.shape[0] != n_slices:
        raise UserError(
            f"{path}: sinogram shape {sino.shape}, expected [{n_slices} slices, angles, bins]"
        )
    if not np.isfinite(sino).all():
        raise UserError(f"{path}: the sinogram contains NaN or infinite values")
    return sino


def assign_splits(
    pairs: list[Pair], fractions: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """Subject -> split: explicit splits kept, the others shuffled (seeded) by fraction.

    Pairs of one ``group`` (the sessions of one person) are drawn together.
    """
    fixed = {p.subject: p.split for p in pairs if p.split}
    members: dict[str, list[str]] = {}
    for p in pairs:
        if not p.split:
            members.setdefault(p.group or p.subject, []).append(p.subject)
    free = sorted(members)
    rng = np.random.default_rng(seed)
    rng.shuffle(free)
    n = len(free)
    if n and not fixed and n < 3:
        raise UserError(
            f"{n} subject(s): need at least 3 to split by subject (or give a split column)"
        )
    counts = [int(round(f * n)) for f in fractions[1:]]
    if n >= 3 and not fixed:
        counts = [max(1, c) for c in counts]
    n_val, n_test = counts
    out = dict(fixed)
    for i, group in enumerate(free):
        for subject in members[group]:
            out[subject] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return out


def import_dataset(
    dest: Path,
    pairs: list[Pair],
    image_size: int = 128,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    dose_reduction: float | None = None,
    source: str = "",
    units: str = "native",
    series: str | None = None,
) -> Path:
    """Read, check, resample and normalise every pair, then write the dataset atomically.

    Everything is read and validated before anything is written, so a bad file leaves no
    partial dataset behind. ``units="suv"`` converts every volume (each dose with its own
    injected activity) to SUVbw before normalising; ``series`` picks the series of DICOM
    folders holding several. The units and the stray files skipped in DICOM folders are
    recorded in the provenance (``units``, ``skipped_files``).
    """
    if units not in UNITS:
        raise UserError(f"--units '{units}': use one of {', '.join(UNITS)}")
    if not pairs:
        raise UserError("no subjects to import")
    names = [p.subject for p in pairs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[0]
        raise UserError(f"subject '{dup}' is listed twice")
    has_low = {p.lpet is not None for p in pairs}
    if len(has_low) > 1:
        raise UserError("some subjects have a low-dose file and some do not: pair all or none")
    if len({p.mask is not None for p in pairs}) > 1:
        raise UserError("some subjects have a lesion mask and some do not: give all or none")
    has_sino = {p.sinogram is not None for p in pairs}
    if len(has_sino) > 1:
        raise UserError("some subjects have a sinogram and some do not: give all or none")
    splits = assign_splits(pairs, fractions, seed)
    subjects = []
    found_units: set[str] = set()
    skipped: list[str] = []
    for pair in pairs:
        full_volume = _read(pair.spet, series, skipped)
        full, zooms, full_factor = _convert(full_volume, units, found_units)
        arrays = {"spet": volume_to_slices(full, zooms, image_size)}
        if pair.lpet is not None:
            low, low_zooms, _ = _convert(_read(pair.lpet, series, skipped), units, found_units)
            if low.shape != full.shape or not np.allclose(low_zooms, zooms, rtol=1e-3):
                raise UserError(
                    f"{pair.lpet}: shape {low.shape} / voxels {low_zooms} do not match the "
                    f"full-dose {pair.spet} ({full.shape} / {zooms})"
                )
            arrays["lpet"] = volume_to_slices(low, zooms, image_size)
        scale = full_dose_scale(arrays["spet"])
        arrays = {k: v / scale for k, v in arrays.items()}
        if pair.mask is not None:
            arrays["lesions"] = _lesion_labels(pair, full_volume, image_size)
        columns = {"sinogram_scale": 0.0, "voxel_z_mm": zooms[2], "suv_factor": full_factor}
        if pair.sinogram is not None:
            sino = load_sinogram(pair.sinogram, arrays["spet"].shape[0])
            columns["sinogram_scale"] = full_dose_scale(sino)
            arrays["sinogram"] = sino / columns["sinogram_scale"]
        subjects.append(
            SubjectArrays(
                subject=_safe_name(pair.subject),
                split=splits[pair.subject],
                arrays=arrays,
                scale=scale,
                source=str(pair.spet) + (f";{pair.lpet}" if pair.lpet else ""),
                dose_reduction=float("nan") if dose_reduction is None else dose_reduction,
                columns=columns,
            )
        )
    provenance = {
        "kind": "imported",
        "source": source,
        "image_size": image_size,
        "split_fractions": list(fractions),
        "split_seed": seed,
        "dose_reduction": dose_reduction,
        "units": SUV_UNITS if units == "suv" else " / ".join(sorted(found_units)),
        "skipped_files": skipped,
        "ablate_version": package_version(),
        "subjects": {
            p.subject: {
                "spet": str(p.spet),
                "lpet": str(p.lpet or ""),
                "sinogram": str(p.sinogram or ""),
                "mask": str(p.mask or ""),
            }
            for p in pairs
        },
        "keys": {
            "lpet": "the imported low-dose volume, resampled",
            "spet": "the imported full-dose volume, resampled (the reference)",
            "sinogram": "the imported sinogram [angles, bins] / sinogram_scale",
            "lesions": "the imported lesion labels (0 = none), resampled per label",
        },
        "normalisation": NORMALISATION,
        "orientation": "RAS; rows anterior->posterior, columns along +x",
        "attribution": [],
    }
    return write_dataset(dest, subjects, provenance)


def _read(path: Path, series: str | None, skipped: list[str]) -> Volume:
    volume = read_volume(path, kinds=("nifti", "dicom"), series=series)
    if volume.array.ndim != 3:
        raise UserError(f"{path}: expected a 3D volume, got shape {volume.array.shape}")
    skipped.extend(str(path / name) for name in volume.skipped)
    return volume


def _convert(
    volume: Volume, units: str, found: set[str]
) -> tuple[np.ndarray, tuple[float, float, float], float]:
    """The RAS volume in the requested units, its voxel sizes and its SUV factor (nan: native)."""
    data, zooms = volume.ras()
    found.add(stored_units(volume))
    factor = suv_factor(volume) if units == "suv" else float("nan")
    if units == "suv":
        data = data * factor
    return data.astype(np.float32), zooms, factor


def _safe_name(subject: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", subject)
    if not safe or safe.startswith("."):
        raise UserError(f"subject name '{subject}' cannot be a folder name: rename it")
    return safe
