"""The dataset format on disk: a folder that a DataLoader reads without decoding cost.

This module is the one place that knows the format: it writes, reads and validates a dataset
folder and owns the facts every producer records (normalisation, provenance stamp). The
simulator (:mod:`ablate.data.simulate`) and the user import (:mod:`ablate.data.importing`)
produce :class:`SubjectArrays` and call :func:`write_dataset`; readers
(:mod:`ablate.data.dataset`, :mod:`ablate.data.inspection`) go through the functions here.

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
import shutil
import uuid
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ablate.errors import UserError
from ablate.shipped import DISTRIBUTION

FORMAT_VERSION = 1
#: Arrays a dataset may hold per subject. ``activity`` is the simulator's ground truth;
#: ``lesions`` integer lesion labels (0 = none, not normalised; :mod:`ablate.lesions`).
ARRAY_KINDS = ("lpet", "spet", "sinogram", "activity", "lesions")
SPLITS = ("train", "val", "test")
SCALE_PERCENTILE = 99.9
#: The provenance line that says how stored images relate to the original intensities.
NORMALISATION = "images / subject's full-dose 99.9th percentile (column 'scale')"


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


def package_version() -> str:
    """The installed ablate version, stamped into every dataset's provenance."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def write_dataset(dest: Path, subjects: list[SubjectArrays], provenance: dict[str, Any]) -> Path:
    """Write subjects + manifest + provenance to ``dest`` atomically; ``dest`` must not exist."""
    dest = Path(dest)
    if dest.exists():
        raise UserError(f"{dest} already exists: choose another --out or delete it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
    try:
        _write_files(tmp, subjects, provenance)
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


def _write_files(folder: Path, subjects: list[SubjectArrays], provenance: dict) -> None:
    """Write the dataset files into a new folder; :func:`write_dataset` renames it into place."""
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
    """The manifest table (one row per slice); a missing or damaged file is a UserError."""
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
    """How the dataset was made (``provenance.json``), with ``format_version`` and ``arrays``."""
    path = Path(root) / "provenance.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{root}: provenance.json is missing: rebuild the dataset") from None
    except json.JSONDecodeError:
        raise UserError(f"{path}: not valid JSON: rebuild the dataset") from None


def array_path(root: Path, subject: str, kind: str) -> Path:
    """Where one subject's array of one kind (see :data:`ARRAY_KINDS`) is stored."""
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
