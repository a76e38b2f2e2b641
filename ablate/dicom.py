"""DICOM PET series as scanners and PACS write them: which files, which series, which geometry.

A scanner export or PACS download is rarely a clean folder of one series. The rules:

- **Stray files are skipped and counted**, never fatal: a file pydicom cannot parse (a
  ``README.txt``, ``.DS_Store``, a text report) and a DICOM object without pixels (a
  ``DICOMDIR``, a structured report). A file *named* like DICOM (``.dcm``, ``.ima``,
  ``.dicom``) that cannot be parsed is an error instead: it claims to be a slice, so losing
  it would silently leave a hole.
- **One series per volume**: the image files are grouped by ``SeriesInstanceUID``. With
  several series, ``series`` picks one by SeriesDescription, SeriesNumber or
  SeriesInstanceUID; without it, the one PET (``Modality`` PT) series is taken when the others
  are not PET (a PET/CT export's CT), and otherwise the error lists every series with its
  description, number and slice count.
- **A regular stack**: every slice has the same ImageOrientationPatient, and the slice
  positions along the slice normal are evenly spaced (within 1 % of the median spacing): a
  missing slice or a duplicate position is a one-line error naming where it is.

The result is a nibabel image with a RAS affine (scanner coordinates) plus the first slice's
header, from which :mod:`ablate.suv` reads the SUV tags.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ablate.errors import UserError

#: File names that claim to be a DICOM slice: unreadable ones are errors, not strays.
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
#: Relative tolerance on the slice spacing before a stack counts as uneven.
_SPACING_TOLERANCE = 0.01
_ORIENTATION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Series:
    """One DICOM series read as a volume."""

    image: Any  # nibabel.Nifti1Image, RAS affine
    header: Any  # pydicom.Dataset of the first slice (no pixel data needed)
    skipped: tuple[str, ...]  # stray files and pixel-less objects, relative to the folder
    description: str


def _label(ds: Any) -> str:
    return str(ds.get("SeriesDescription", "") or "").strip()


def _scan(folder: Path) -> tuple[dict[str, list[tuple[Path, Any]]], list[str]]:
    """Image files grouped by SeriesInstanceUID, and the skipped files."""
    import pydicom

    groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    skipped: list[str] = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(file)
        except Exception as exc:  # InvalidDicomError, OSError, EOFError...
            if file.name.lower().endswith(DICOM_SUFFIXES):
                name = exc.__class__.__name__
                raise UserError(
                    f"{file}: not a readable DICOM file ({name}); replace it with the "
                    "scanner's copy or delete it"
                ) from None
            skipped.append(str(file.relative_to(folder)))
            continue
        if "PixelData" not in ds:
            skipped.append(str(file.relative_to(folder)))  # DICOMDIR, reports
            continue
        groups[str(ds.get("SeriesInstanceUID", ""))].append((file, ds))
    return groups, skipped


def _pick(folder: Path, groups: dict[str, list[tuple[Path, Any]]], series: str | None) -> str:
    """The SeriesInstanceUID to read (see the module docstring for the rule)."""
    if series is not None:
        wanted = series.strip().lower()
        hits = [
            uid
            for uid, files in groups.items()
            if wanted in (uid.lower(), str(files[0][1].get("SeriesNumber", "")).lower())
            or wanted == _label(files[0][1]).lower()
        ]
        if len(hits) == 1:
            return hits[0]
        problem = f"--series '{series}' matches {len(hits) or 'none'} of the"
    else:
        if len(groups) == 1:
            return next(iter(groups))
        pet = [uid for uid, files in groups.items() if files[0][1].get("Modality") == "PT"]
        if len(pet) == 1:
            return pet[0]
        problem = "holds"
    raise UserError(
        f"{folder}: {problem} {len(groups)} DICOM series: {_describe(groups)}; pick one with "
        "--series DESCRIPTION, NUMBER or UID"
    )


def _describe(groups: dict[str, list[tuple[Path, Any]]]) -> str:
    parts = []
    for uid, files in groups.items():
        ds = files[0][1]
        parts.append(
            f"'{_label(ds) or '(no description)'}' (number {ds.get('SeriesNumber', '?')}, "
            f"{ds.get('Modality', '?')}, {len(files)} slices, uid {uid})"
        )
    return ", ".join(parts)


def read_series(folder: Path, series: str | None = None) -> Series:
    """The series of ``folder`` (chosen by ``series`` if several) as a RAS nibabel image."""
    import nibabel as nib

    folder = Path(folder)
    groups, skipped = _scan(folder)
    if not groups:
        raise UserError(
            f"{folder}: no DICOM image files in this folder"
            + (f" ({len(skipped)} other files skipped)" if skipped else "")
        )
    slices = groups[_pick(folder, groups, series)]
    try:
        orientations = [np.array(ds.ImageOrientationPatient, float) for _, ds in slices]
        positions = [np.array(ds.ImagePositionPatient, float) for _, ds in slices]
        spacing_r, spacing_c = (float(v) for v in slices[0][1].PixelSpacing)
    except (AttributeError, ValueError, TypeError):
        raise UserError(
            f"{folder}: DICOM files lack the geometry tags (ImageOrientationPatient, "
            "ImagePositionPatient, PixelSpacing)"
        ) from None
    for (file, _), orientation in zip(slices, orientations, strict=True):
        if not np.allclose(orientation, orientations[0], atol=_ORIENTATION_TOLERANCE):
            raise UserError(
                f"{folder}: mixed slice orientations in one series: {file.name} has "
                f"ImageOrientationPatient {orientation.round(4).tolist()}, {slices[0][0].name} "
                f"{orientations[0].round(4).tolist()}; export the series again as one stack"
            )
    row_cos, col_cos = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row_cos, col_cos)
    heights = np.array([float(np.dot(p, normal)) for p in positions])
    order = np.argsort(heights)
    slices = [slices[i] for i in order]
    positions = [positions[i] for i in order]
    heights = heights[order]
    dz = _check_spacing(folder, heights, [file for file, _ in slices])
    if dz is None:
        dz = float(slices[0][1].get("SliceThickness", 1.0))
    planes = []
    for file, ds in slices:
        try:
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as exc:
            name = exc.__class__.__name__
            raise UserError(f"{file}: cannot decode DICOM pixel data ({name})") from None
        slope = float(ds.get("RescaleSlope", 1.0))
        intercept = float(ds.get("RescaleIntercept", 0.0))
        if planes and pixels.shape != planes[0].shape:
            raise UserError(f"{file}: slice shape {pixels.shape} differs from {planes[0].shape}")
        planes.append(pixels * slope + intercept)
    # voxel (column j, row i, slice k) -> LPS mm, then LPS -> RAS
    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing_c
    lps[:3, 1] = col_cos * spacing_r
    lps[:3, 2] = normal * dz
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    data = np.stack([p.T for p in planes], axis=2)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)  # scanner coordinates, as the DICOM geometry says
    image.set_sform(affine, code=1)
    header = slices[0][1]
    return Series(image, header, tuple(skipped), _label(header))


def _check_spacing(folder: Path, heights: np.ndarray, files: list[Path]) -> float | None:
    """The slice spacing (mm) of sorted slice heights, or a one-line error naming the gap."""
    if len(heights) < 2:
        return None
    steps = np.diff(heights)
    spacing = float(np.median(steps))
    for i, step in enumerate(steps):
        if abs(step) < 1e-3:
            raise UserError(
                f"{folder}: {files[i].name} and {files[i + 1].name} are at the same position "
                f"({heights[i]:.2f} mm along the slice normal): two frames or two series "
                "mixed? keep one per position"
            )
        if abs(step - spacing) > _SPACING_TOLERANCE * spacing:
            missing = max(round(step / spacing) - 1, 0)
            hint = f"{missing} slice(s) missing?" if missing else "uneven slice spacing"
            raise UserError(
                f"{folder}: gap of {step:.3g} mm between {files[i].name} ({heights[i]:.2f} mm) "
                f"and {files[i + 1].name} ({heights[i + 1]:.2f} mm), the other slices are "
                f"{spacing:.3g} mm apart: {hint} export the complete series"
            )
    return float(np.mean(steps))
