"""The dataset format on disk: a folder that a DataLoader reads without decoding cost.

Layout::

    <root>/manifest.parquet            one row per slice (subject, slice, split, dose, shapes,
                                       scale, source, ...)
    <root>/provenance.json             how it was made: preset/import settings, seed, every
                                       knob, package version, attributions
    <root>/subjects/<subject>/<kind>.npy   float32 [slices, H, W] (sinogram: [slices, A, D]),
                                       read with ``np.load(mmap_mode="r")``

``kind`` is one of :data:`ARRAY_KINDS`. Arrays are stored already normalised: every image of a
subject (both doses, the true activity) is divided by that subject's full-dose scale (the
99.9th percentile of its full-dose volume, column ``scale``), so the full-dose image lies in
about [0, 1] and multiplying by ``scale`` undoes it. Sinograms are divided by their own
per-subject scale (column ``sinogram_scale``, counts). Writing goes to a temporary folder that
is renamed into place at the end: a dataset folder is either complete or absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ablate.errors import UserError
from ablate.volumes import load_volume, volume_to_slices

FORMAT_VERSION = 1
#: Arrays a dataset may hold per subject. ``activity`` is the simulator's ground truth.
ARRAY_KINDS = ("lpet", "spet", "sinogram", "activity")
SPLITS = ("train", "val", "test")
SCALE_PERCENTILE = 99.9


@dataclass
class SubjectArrays:
    """One subject ready to be written: normalised arrays and its manifest columns."""

    subject: str
    split: str
    arrays: dict[str, np.ndarray]
    scale: float
    source: str
    dose_reduction: float
    columns: dict[str, Any] = field(default_factory=dict)
    slice_columns: dict[str, np.ndarray] = field(default_factory=dict)


def full_dose_scale(volume: np.ndarray) -> float:
    """The subject's normalisation scale: the 99.9th percentile of its full-dose volume."""
    scale = float(np.percentile(volume, SCALE_PERCENTILE))
    return scale if scale > 0 else float(np.max(volume)) or 1.0


def write_dataset(dest: Path, subjects: list[SubjectArrays], provenance: dict[str, Any]) -> Path:
    """Write subjects + manifest + provenance to ``dest`` atomically; ``dest`` must not exist."""
    dest = Path(dest)
    if dest.exists():
        raise UserError(f"{dest} already exists: choose another --out or delete it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
    try:
        write_dataset_into(tmp, subjects, provenance)
        try:
            os.rename(tmp, dest)
        except OSError:
            if dest.exists():  # a concurrent writer finished first: keep its copy
                raise FileExistsError(str(dest)) from None
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def write_dataset_into(folder: Path, subjects: list[SubjectArrays], provenance: dict) -> None:
    """Write the dataset files into an empty (or new) folder, without the atomic rename."""
    rows = []
    for sub in subjects:
        sub_dir = folder / "subjects" / sub.subject
        sub_dir.mkdir(parents=True, exist_ok=True)
        n_slices = None
        for kind, arr in sub.arrays.items():
            if kind not in ARRAY_KINDS:
                raise ValueError(f"unknown array kind {kind!r}")
            np.save(sub_dir / f"{kind}.npy", np.ascontiguousarray(arr, dtype=np.float32))
            n_slices = arr.shape[0]
        image = sub.arrays.get("spet", sub.arrays.get("lpet"))
        sino = sub.arrays.get("sinogram")
        for i in range(n_slices or 0):
            row = {
                "subject": sub.subject,
                "slice": i,
                "split": sub.split,
                "dose_reduction": float(sub.dose_reduction),
                "height": int(image.shape[1]) if image is not None else 0,
                "width": int(image.shape[2]) if image is not None else 0,
                "scale": float(sub.scale),
                "source": sub.source,
                "sinogram_angles": int(sino.shape[1]) if sino is not None else 0,
                "sinogram_bins": int(sino.shape[2]) if sino is not None else 0,
                **{k: v for k, v in sub.columns.items()},
                **{k: v[i].item() for k, v in sub.slice_columns.items()},
            }
            rows.append(row)
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(folder / "manifest.parquet", engine="pyarrow", index=False)
    kinds = sorted({k for s in subjects for k in s.arrays})
    provenance = {"format_version": FORMAT_VERSION, "arrays": kinds, **provenance}
    (folder / "provenance.json").write_text(json.dumps(provenance, indent=2, default=str))


def read_manifest(root: Path) -> pd.DataFrame:
    path = Path(root) / "manifest.parquet"
    if not path.is_file():
        raise UserError(
            f"{root} is not an ablate dataset (no manifest.parquet): make one with "
            "`ablate data simulate` or `ablate data import`"
        )
    try:
        return pd.read_parquet(path, engine="pyarrow")
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UserError(
            f"{path}: unreadable manifest ({exc.__class__.__name__}): rebuild it"
        ) from None


def read_provenance(root: Path) -> dict[str, Any]:
    path = Path(root) / "provenance.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{root}: provenance.json is missing: rebuild the dataset") from None
    except json.JSONDecodeError:
        raise UserError(f"{path}: not valid JSON: rebuild the dataset") from None


def array_path(root: Path, subject: str, kind: str) -> Path:
    return Path(root) / "subjects" / subject / f"{kind}.npy"


def validate_dataset(root: Path) -> pd.DataFrame:
    """Check a dataset folder is complete and consistent; returns its manifest."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    manifest = read_manifest(root)
    provenance = read_provenance(root)
    version = provenance.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(
            f"{root}: dataset format version {version}, this ablate reads {FORMAT_VERSION}: "
            "rebuild it with this version"
        )
    kinds = provenance.get("arrays", [])
    for subject, rows in manifest.groupby("subject", sort=False):
        for kind in kinds:
            path = array_path(root, str(subject), kind)
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError):
                raise UserError(
                    f"{path}: missing or unreadable array: rebuild the dataset"
                ) from None
            if arr.shape[0] != len(rows):
                raise UserError(
                    f"{path}: {arr.shape[0]} slices but the manifest lists {len(rows)}: "
                    "rebuild the dataset"
                )
    return manifest


# --- import of the user's own volumes -----------------------------------------------------

DOSE_TAGS = {
    "lpet": ("low", "ld", "lowdose", "lpet", "lowdosepet"),
    "spet": ("full", "fd", "fulldose", "spet", "std", "standard"),
    "sinogram": ("sino", "sinogram"),
}
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy")


@dataclass
class Pair:
    """The files of one subject: full-dose image, optional low-dose image and sinogram."""

    subject: str
    spet: Path
    lpet: Path | None = None
    sinogram: Path | None = None
    split: str | None = None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def pairs_from_csv(csv: Path) -> list[Pair]:
    """Pairs from a CSV with columns subject, spet, [lpet], [sinogram], [split].

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
    """Subject -> split: explicit splits kept, the others shuffled (seeded) by fraction."""
    fixed = {p.subject: p.split for p in pairs if p.split}
    free = sorted(p.subject for p in pairs if not p.split)
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
    for i, subject in enumerate(free):
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
) -> Path:
    """Read, check, resample and normalise every pair, then write the dataset atomically.

    Everything is read and validated before anything is written, so a bad file leaves no
    partial dataset behind.
    """
    if not pairs:
        raise UserError("no subjects to import")
    names = [p.subject for p in pairs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[0]
        raise UserError(f"subject '{dup}' is listed twice")
    has_low = {p.lpet is not None for p in pairs}
    if len(has_low) > 1:
        raise UserError("some subjects have a low-dose file and some do not: pair all or none")
    has_sino = {p.sinogram is not None for p in pairs}
    if len(has_sino) > 1:
        raise UserError("some subjects have a sinogram and some do not: give all or none")
    splits = assign_splits(pairs, fractions, seed)
    subjects = []
    for pair in pairs:
        full, zooms = load_volume(pair.spet)
        arrays = {"spet": volume_to_slices(full, zooms, image_size)}
        if pair.lpet is not None:
            low, low_zooms = load_volume(pair.lpet)
            if low.shape != full.shape or not np.allclose(low_zooms, zooms, rtol=1e-3):
                raise UserError(
                    f"{pair.lpet}: shape {low.shape} / voxels {low_zooms} do not match the "
                    f"full-dose {pair.spet} ({full.shape} / {zooms})"
                )
            arrays["lpet"] = volume_to_slices(low, zooms, image_size)
        scale = full_dose_scale(arrays["spet"])
        arrays = {k: v / scale for k, v in arrays.items()}
        columns = {"sinogram_scale": 0.0, "voxel_z_mm": zooms[2]}
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
    from ablate.data.simulate import package_version

    provenance = {
        "kind": "imported",
        "source": source,
        "image_size": image_size,
        "split_fractions": list(fractions),
        "split_seed": seed,
        "dose_reduction": dose_reduction,
        "ablate_version": package_version(),
        "subjects": {
            p.subject: {
                "spet": str(p.spet),
                "lpet": str(p.lpet or ""),
                "sinogram": str(p.sinogram or ""),
            }
            for p in pairs
        },
        "keys": {
            "lpet": "the imported low-dose volume, resampled",
            "spet": "the imported full-dose volume, resampled (the reference)",
            "sinogram": "the imported sinogram [angles, bins] / sinogram_scale",
        },
        "normalisation": "images / subject's full-dose 99.9th percentile (column 'scale')",
        "orientation": "RAS; rows anterior->posterior, columns along +x",
        "attribution": [],
    }
    return write_dataset(dest, subjects, provenance)


def _safe_name(subject: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", subject)
    if not safe or safe.startswith("."):
        raise UserError(f"subject name '{subject}' cannot be a folder name: rename it")
    return safe


def dataset_info(root: Path) -> dict[str, Any]:
    """Subjects, splits, shapes, intensity statistics and provenance of a dataset folder."""
    root = Path(root)
    manifest = validate_dataset(root)
    provenance = read_provenance(root)
    splits = {}
    for split in SPLITS:
        rows = manifest[manifest["split"] == split]
        splits[split] = {"subjects": int(rows["subject"].nunique()), "slices": len(rows)}
    stats = {}
    for kind in provenance.get("arrays", []):
        values = []
        shape = None
        for subject in manifest["subject"].unique():
            arr = np.load(array_path(root, str(subject), kind), mmap_mode="r")
            shape = tuple(arr.shape[1:])
            values.append(np.asarray(arr[:: max(1, arr.shape[0] // 8)], dtype=np.float32).ravel())
        v = np.concatenate(values)
        stats[kind] = {
            "shape": list(shape),
            "min": float(v.min()),
            "mean": float(v.mean()),
            "p99": float(np.percentile(v, 99)),
            "max": float(v.max()),
        }
    return {
        "path": str(root),
        "subjects": int(manifest["subject"].nunique()),
        "slices": len(manifest),
        "splits": splits,
        "arrays": stats,
        "scale": {"min": float(manifest["scale"].min()), "max": float(manifest["scale"].max())},
        "provenance": provenance,
    }
