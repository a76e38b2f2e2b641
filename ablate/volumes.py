"""The one reader of the user's images: ``ablate data import``, ``evaluate`` and ``predict``.

A model only works on slices cut the way its training slices were cut, so every command that
takes a user's file goes through here and gets the same layout:

- **NIfTI** (``.nii``, ``.nii.gz``) and **DICOM series** (a folder; stray files, several
  series and irregular stacks as :mod:`ablate.dicom` says) are reoriented to RAS
  (nibabel's closest canonical, from the affine) and cut into axial slices ``[z, y, x]``
  whose rows run anterior -> posterior and columns along +x, as the simulator's.
- **.npy** (numpy, no pickles) has no affine: it is taken as already in that layout, a 2D
  image ``[H, W]`` or a stack ``[slice, H, W]``.

Trailing singleton axes beyond the third (a one-frame 4D NIfTI) are dropped. Every problem
with a file (missing, unreadable, corrupt, NaN/inf, wrong dimensionality) is a one-line
:class:`UserError` naming the file.

A result is written back onto its input's grid by :func:`write_like`: same shape, affine and
header (qform/sform codes, units), float32, to exactly the path asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ablate import metrics
from ablate.dicom import read_series
from ablate.errors import UserError

Convention = Literal["standard", "paper"]
Kind = Literal["npy", "nifti", "dicom"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Slices scored per batch: bounds memory on large volumes (five float64 maps per slice).
_CHUNK = 64
#: Affines closer than this (mm, per entry) are the same voxel grid.
_AFFINE_TOLERANCE = 1e-3


def file_kind(path: Path) -> Kind:
    """``npy`` / ``nifti`` by suffix, ``dicom`` for a folder; anything else is refused."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(".npy"):
        return "npy"
    if path.is_dir():
        return "dicom"
    raise UserError(f"{path}: unsupported file type (use .npy, .nii, .nii.gz or a DICOM folder)")


@dataclass(frozen=True)
class Volume:
    """A file as read: its array in the file's own axis order and, for NIfTI and DICOM, the
    image whose affine and header a result written back onto it keeps."""

    path: Path
    kind: Kind
    array: np.ndarray
    image: Any = None  # nibabel.Nifti1Image for NIfTI/DICOM, None for .npy
    dicom: Any = None  # a DICOM series' first-slice header (SUV tags), None otherwise
    skipped: tuple[str, ...] = ()  # stray files skipped in a DICOM folder (ablate.dicom)

    @property
    def affine(self) -> np.ndarray | None:
        return None if self.image is None else np.asarray(self.image.affine)

    def ras(self) -> tuple[np.ndarray, tuple[float, float, float]]:
        """The volume reoriented to RAS (x, y, z) and its voxel sizes in mm, in that order."""
        import nibabel as nib

        if self.image is None:
            raise UserError(f"{self.path}: an .npy array has no orientation; use NIfTI")
        ornt = nib.orientations.io_orientation(self.image.affine)
        zooms = [float(z) for z in self.image.header.get_zooms()[:3]]
        zooms += [1.0] * (3 - len(zooms))  # a 2D image: one slice
        ras_zooms = [0.0, 0.0, 0.0]
        for axis, (target, _) in enumerate(ornt):
            ras_zooms[int(target)] = zooms[axis]
        data = nib.orientations.apply_orientation(_as_3d(self.array), ornt)
        return np.ascontiguousarray(data), (ras_zooms[0], ras_zooms[1], ras_zooms[2])

    def from_ras(self, data: np.ndarray) -> np.ndarray:
        """A RAS ``(x, y, z)`` array on this volume's grid back in the file's axis order."""
        import nibabel as nib

        ornt = nib.orientations.io_orientation(self.image.affine)
        back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
        return nib.orientations.apply_orientation(data, back).reshape(self.array.shape)

    def slices(self) -> np.ndarray:
        """``[slice, H, W]`` in the training layout, at the file's own resolution."""
        if self.image is None:
            return self.array[None] if self.array.ndim == 2 else self.array
        data, _ = self.ras()
        return ras_to_slices(data)


def _as_3d(array: np.ndarray) -> np.ndarray:
    return array[..., None] if array.ndim == 2 else array


def read_volume(
    path: str | Path,
    kinds: tuple[Kind, ...] = ("npy", "nifti", "dicom"),
    series: str | None = None,
) -> Volume:
    """Read ``path`` (one of ``kinds``) as float64, checked finite and 2D/3D.

    ``series`` picks one series of a DICOM folder holding several (see :mod:`ablate.dicom`).
    """
    path = Path(path)
    if not path.exists():  # before its kind: a missing path has none
        raise UserError(f"{path}: not found (no such file or folder)")
    kind = file_kind(path)
    if kind not in kinds:
        raise UserError(f"{path}: a {kind} input is not accepted here (use {', '.join(kinds)})")
    image = dicom = None
    skipped: tuple[str, ...] = ()
    try:
        if kind == "npy":
            array = np.load(path, allow_pickle=False)
        elif kind == "dicom":
            found = read_series(path, series)
            image, dicom, skipped = found.image, found.header, found.skipped
            array = image.get_fdata(dtype=np.float64)
        else:
            import nibabel as nib

            image = nib.load(path)
            array = image.get_fdata(dtype=np.float64)
        array = np.asarray(array, dtype=np.float64)
    except UserError:
        raise
    except Exception as err:  # any reader failure (format, zlib, header) means unreadable
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}: cannot read it as {kind} ({reason})") from None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise UserError(f"{path}: expected a 2D image or 3D volume, got shape {array.shape}")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise UserError(f"{path}: {bad} NaN/inf values; fix or mask them first")
    return Volume(path, kind, array, image, dicom, skipped)


def load_volume(
    path: Path, series: str | None = None
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 3D NIfTI file or DICOM series folder reoriented to RAS (float32), and its voxel sizes."""
    volume = read_volume(path, kinds=("nifti", "dicom"), series=series)
    if volume.array.ndim != 3:
        raise UserError(f"{path}: expected a 3D volume, got shape {volume.array.shape}")
    data, zooms = volume.ras()
    return data.astype(np.float32), zooms


def ras_to_slices(data: np.ndarray) -> np.ndarray:
    """RAS ``(x, y, z)`` -> axial slices ``[z, y, x]``, rows anterior -> posterior."""
    return np.ascontiguousarray(data[:, ::-1, :].transpose(2, 1, 0))


def slices_to_ras(slices: np.ndarray) -> np.ndarray:
    """The inverse of :func:`ras_to_slices`."""
    return np.ascontiguousarray(slices.transpose(2, 1, 0)[:, ::-1, :])


@dataclass(frozen=True)
class _Fit:
    """Where a slice of ``ny x nx`` voxels lands in a square of ``size`` pixels."""

    h: int
    w: int
    top: int
    left: int

    @classmethod
    def of(cls, ny: int, nx: int, zooms: tuple[float, float, float], size: int) -> _Fit:
        fov = max(nx * zooms[0], ny * zooms[1])
        pixel = fov / size
        h = max(1, min(size, round(ny * zooms[1] / pixel)))
        w = max(1, min(size, round(nx * zooms[0] / pixel)))
        return cls(h, w, (size - h) // 2, (size - w) // 2)


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of ``[N, 1, H, W]``; a no-op at the same size."""
    if tuple(t.shape[-2:]) == size:
        return t
    import torch.nn.functional as F

    return F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)


def volume_to_slices(
    data: np.ndarray, zooms: tuple[float, float, float], image_size: int
) -> np.ndarray:
    """RAS volume -> ``[slices, image_size, image_size]`` axial slices, isotropic in-plane.

    The in-plane field of view (the larger of the two extents) is kept whole: the slice is
    resampled (antialiased bilinear) to square pixels of ``fov / image_size`` and zero-padded
    to a square. Rows run anterior to posterior and columns along +x, as the simulator's.
    """
    slices = ras_to_slices(np.asarray(data, dtype=np.float32))
    fit = _Fit.of(slices.shape[1], slices.shape[2], zooms, image_size)
    t = _resize(torch.from_numpy(slices)[:, None], (fit.h, fit.w))
    out = torch.zeros((t.shape[0], image_size, image_size))
    out[:, fit.top : fit.top + fit.h, fit.left : fit.left + fit.w] = t[:, 0]
    return out.numpy()


def slices_to_volume(
    slices: np.ndarray, shape: tuple[int, int, int], zooms: tuple[float, float, float]
) -> np.ndarray:
    """The inverse of :func:`volume_to_slices`: square slices back onto the RAS grid ``shape``."""
    nx, ny, _ = shape
    fit = _Fit.of(ny, nx, zooms, slices.shape[-1])
    crop = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    crop = crop[..., fit.top : fit.top + fit.h, fit.left : fit.left + fit.w]
    return slices_to_ras(_resize(crop, (ny, nx))[:, 0].numpy())


def write_like(
    result: np.ndarray, source: Volume, path: Path, description: str | None = None
) -> None:
    """Write ``result`` (the source's shape) float32 to ``path``, keeping the source's header.

    ``description`` (at most 80 characters) replaces the header's ``descrip`` (NIfTI): where
    ``ablate predict`` names the model and the units of the values.

    NIfTI: the source's affine, qform/sform and their codes, units and the rest of its
    header (scaling reset: the data are float32); a DICOM source's image carries scanner
    codes (1/1) from :func:`ablate.dicom.read_series`.
    """
    result = np.asarray(result, dtype=np.float32)
    if source.image is None:
        np.save(path, result)
        return
    import nibabel as nib

    old = source.image.header
    image = source.image.__class__(result, source.image.affine, header=old.copy())
    image.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"] = image.header["cal_max"] = 0
    if description is not None:
        image.header["descrip"] = description[:80].encode()
    image.set_qform(*old.get_qform(coded=True))
    image.set_sform(*old.get_sform(coded=True))
    nib.save(image, path)


def same_grid_or_fail(pred: Volume, ref: Volume) -> None:
    """Refuse two NIfTI/DICOM volumes on different voxel grids, naming both."""
    if pred.affine is None or ref.affine is None:
        return
    worst = float(np.abs(pred.affine - ref.affine).max())
    if worst > _AFFINE_TOLERANCE:
        raise UserError(
            f"{pred.path} and {ref.path} have different affines (largest difference "
            f"{worst:.4g}): they are not on the same voxel grid; resample one onto the other"
        )


def evaluate_files(
    pred_path: str | Path, ref_path: str | Path, convention: Convention = "standard"
) -> dict[str, Any]:
    """Metrics of ``pred_path`` against ``ref_path``, per slice and averaged over slices.

    Returns ``{"pred", "ref", "convention", "shape", "slices": [{"slice", metric...}],
    "mean": {metric: value}, "undefined": {metric: count}}``. Standard metrics are
    psnr/ssim/nmse/nrmse; paper-003 metrics psnr/ssim/nmse (see :mod:`ablate.metrics`).
    Slices are the training layout's (:class:`Volume`). Means skip slices where a metric is
    undefined (nan, e.g. an empty or constant reference slice); ``undefined`` says how many
    were skipped.
    """
    if convention not in ("standard", "paper"):
        raise UserError(f"unknown convention '{convention}' (use 'standard' or 'paper')")
    pred, ref = read_volume(pred_path), read_volume(ref_path)
    if pred.array.shape != ref.array.shape:
        raise UserError(
            f"{pred_path}: shape {pred.array.shape} differs from {ref_path} {ref.array.shape}; "
            "resample one onto the other's grid"
        )
    if (pred.image is None) != (ref.image is None) and pred.array.ndim == 3:
        raise UserError(
            f"{pred_path}: a {pred.kind} and a {ref.kind} volume slice along different axes; "
            "save both in the same format"
        )
    same_grid_or_fail(pred, ref)
    if convention == "paper" and ref.array.max() > 1.01:
        raise UserError(
            f"{ref_path}: the paper convention thresholds at 0.05 on the [0, 1] scale but the "
            f"maximum is {ref.array.max():.4g}; rescale both images or use --convention standard"
        )
    x = torch.from_numpy(np.ascontiguousarray(pred.slices())).unsqueeze(1)
    y = torch.from_numpy(np.ascontiguousarray(ref.slices())).unsqueeze(1)
    if min(y.shape[-2:]) < 11:
        raise UserError(
            f"{ref_path}: slices of {tuple(y.shape[-2:])} pixels are too small for SSIM (>= 11x11)"
        )
    chunks = [
        _slice_metrics(x[i : i + _CHUNK], y[i : i + _CHUNK], convention)
        for i in range(0, x.shape[0], _CHUNK)
    ]
    per = {key: torch.cat([c[key] for c in chunks]) for key in chunks[0]}
    slices = [
        {"slice": i, **{key: values[i].item() for key, values in per.items()}}
        for i in range(x.shape[0])
    ]
    return {
        "pred": str(pred_path),
        "ref": str(ref_path),
        "convention": convention,
        "shape": list(ref.array.shape),
        "slices": slices,
        "mean": {key: torch.nanmean(values).item() for key, values in per.items()},
        "undefined": {key: int(torch.isnan(values).sum()) for key, values in per.items()},
    }


def _slice_metrics(x: torch.Tensor, y: torch.Tensor, convention: Convention) -> dict:
    if convention == "paper":
        out = metrics.paper_metrics(x, y)
        return {key.removeprefix("paper_"): value for key, value in out.items()}
    nmse = metrics.nmse(x, y)
    return {
        "psnr": metrics.psnr(x, y),
        "ssim": metrics.ssim(x, y),
        "nmse": nmse,
        "nrmse": nmse.sqrt(),
    }


def jsonable(value: Any) -> Any:
    """Strict-JSON copy of a result: nan -> null, +-inf -> "inf" / "-inf"."""
    if isinstance(value, dict):
        return {key: jsonable(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
