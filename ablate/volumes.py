"""Read images/volumes from disk and score a prediction against a reference (``ablate evaluate``).

Formats: ``.npy`` (numpy, no pickles) and NIfTI ``.nii`` / ``.nii.gz`` (nibabel). A 2D array is
one slice; a 3D array is a stack of 2D slices, taken along

- the **last** axis for NIfTI, whose axis order is (x, y, z): axial slices are ``[..., z]``;
- the **first** axis for ``.npy``, the numpy/torch convention ``[slice, H, W]``.

Trailing singleton axes beyond the third (a one-frame 4D NIfTI) are dropped. Every problem
with a file (missing, unreadable, corrupt, NaN/inf, wrong dimensionality, shape mismatch) is a
one-line :class:`UserError` naming the file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ablate import metrics
from ablate.errors import UserError

Convention = Literal["standard", "paper"]

_NIFTI = (".nii", ".nii.gz")
#: Slices scored per batch: bounds memory on large volumes (five float64 maps per slice).
_CHUNK = 64


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_NIFTI):
        return "nifti"
    if name.endswith(".npy"):
        return "npy"
    raise UserError(f"{path}: unsupported file type (use .npy, .nii or .nii.gz)")


def read_array(path: str | Path) -> tuple[np.ndarray, str]:
    """The file's array as float64 and its kind (``"npy"`` or ``"nifti"``), checked finite."""
    path = Path(path)
    kind = _kind(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        if kind == "npy":
            array = np.load(path, allow_pickle=False)
        else:
            import nibabel as nib

            array = np.asarray(nib.load(path).get_fdata(dtype=np.float64))
        array = np.asarray(array, dtype=np.float64)
    except Exception as err:  # any reader failure (format, zlib, header) means unreadable
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}: cannot read it as {kind} ({reason})") from None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise UserError(f"{path}: expected a 2D image or 3D volume, got shape {array.shape}")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise UserError(f"{path}: {bad} NaN/inf values; fix or mask them before evaluating")
    return array, kind


def as_slices(array: np.ndarray, kind: str) -> torch.Tensor:
    """[S, 1, H, W] slices of a 2D/3D array (slice axis: last for NIfTI, first for .npy)."""
    if array.ndim == 2:
        array = array[None]
    elif kind == "nifti":
        array = np.moveaxis(array, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(1)


def evaluate_files(
    pred_path: str | Path, ref_path: str | Path, convention: Convention = "standard"
) -> dict[str, Any]:
    """Metrics of ``pred_path`` against ``ref_path``, per slice and averaged over slices.

    Returns ``{"pred", "ref", "convention", "shape", "slices": [{"slice", metric...}],
    "mean": {metric: value}, "undefined": {metric: count}}``. Standard metrics are
    psnr/ssim/nmse/nrmse; paper-003 metrics psnr/ssim/nmse (see :mod:`ablate.metrics`).
    Means skip slices where a metric is undefined (nan, e.g. an empty or constant reference
    slice); ``undefined`` says how many were skipped.
    """
    if convention not in ("standard", "paper"):
        raise UserError(f"unknown convention '{convention}' (use 'standard' or 'paper')")
    pred, pred_kind = read_array(pred_path)
    ref, ref_kind = read_array(ref_path)
    if pred.shape != ref.shape:
        raise UserError(
            f"{pred_path}: shape {pred.shape} differs from {ref_path} {ref.shape}; "
            "resample one onto the other's grid"
        )
    if pred_kind != ref_kind and pred.ndim == 3:
        raise UserError(
            f"{pred_path}: a {pred_kind} and a {ref_kind} volume slice along different axes; "
            "save both in the same format"
        )
    if convention == "paper" and ref.max() > 1.01:
        raise UserError(
            f"{ref_path}: the paper convention thresholds at 0.05 on the [0, 1] scale but the "
            f"maximum is {ref.max():.4g}; rescale both images or use --convention standard"
        )
    x, y = as_slices(pred, pred_kind), as_slices(ref, ref_kind)
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
        "shape": list(ref.shape),
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
