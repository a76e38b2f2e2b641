"""``ablate predict``: run an exported model on a user's volume, onto the volume's own grid.

The model is the MLflow pyfunc of :mod:`ablate.serving`, the one ``mlflow models serve``
runs, given as ``models:/NAME@alias`` / ``runs:/...`` (resolved against the workspace's
store, never MLflow's default ``./mlflow.db``) or as an ``ablate export`` folder.

The input is cut the way training data were (:mod:`ablate.volumes`): a NIfTI volume or
DICOM series is reoriented to RAS and resampled to the model's image size with its in-plane
field of view kept whole, as ``ablate data import`` does; an ``.npy`` stack is taken as
``[slice, H, W]`` in that layout already. The reconstruction goes back onto the input's
grid: same shape, affine and header (its description naming the units), float32, at exactly
the output path. A model trained in SUV (``ablate data import --units suv``) gets the input
converted to SUV from its DICOM tags or PET-BIDS sidecar (:mod:`ablate.suv`) and writes SUV;
an ``.npy`` input is taken as already in the model's units. Sinogram rows
take ``[slice, angles, bins]`` (``.npy``, or NIfTI as bins x angles x slices) and write the
image stack ``[slice, H, W]`` as ``.npy``.

Every check (output path and folder, input file, model, input kind and shape for the row)
runs before anything is written; a missing output folder is refused, not created.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ablate import intensity, tracking
from ablate.errors import UserError
from ablate.serving import ServingSpec
from ablate.suv import SUV_UNITS, suv_factor
from ablate.volumes import (
    NIFTI_SUFFIXES,
    Volume,
    read_volume,
    slices_to_volume,
    volume_to_slices,
    write_like,
)


@dataclass(frozen=True)
class Prediction:
    slices: int
    samples: int
    scale: float
    estimated: bool
    units: str


def _output_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(".npy"):
        return "npy"
    raise UserError(f"{path}: the output must end in .nii, .nii.gz or .npy")


def resolve_model(model: str, tracking_uri: str | None) -> Path:
    """A local MLflow model folder for ``model`` (a folder, or a models:/ / runs:/ URI)."""
    from mlflow.artifacts import download_artifacts

    path = Path(model)
    if "://" not in model and not model.startswith(("models:/", "runs:/")):
        if not path.is_dir():
            raise UserError(
                f"model '{model}' is neither a folder nor a models:/ or runs:/ URI "
                "(e.g. models:/demo-best@champion)"
            )
        if not (path / "MLmodel").is_file():
            raise UserError(f"{path} holds no MLmodel: pass a folder written by `ablate export`")
        return path
    if tracking_uri is None:
        raise UserError(f"model '{model}' needs a store: pass --workdir or --tracking-uri")
    tracking.require_store(tracking_uri)
    try:
        with tracking.global_store(tracking_uri):
            return Path(download_artifacts(artifact_uri=model))
    except Exception as err:  # noqa: BLE001 - any registry failure means "not found here"
        models = [m.name for m in tracking.client(tracking_uri).search_registered_models()]
        known = ", ".join(sorted(models)) or "none"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"cannot load model '{model}' from {tracking_uri}: {reason} "
            f"(registered models: {known})"
        ) from None


def load_model(model: str, tracking_uri: str | None) -> tuple[Any, ServingSpec]:
    """The pyfunc model and its serving contract."""
    import mlflow.pyfunc

    folder = resolve_model(model, tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(str(folder))
    raw = (pyfunc.metadata.metadata or {}).get("ablate")
    if raw is None:
        raise UserError(f"model '{model}' was not exported by `ablate export`")
    return pyfunc, ServingSpec.from_dict(raw)


def _stack(volume: Volume, spec: ServingSpec, out_kind: str) -> np.ndarray:
    """The model input for ``volume``, or a one-line error saying why it cannot be one."""
    path = volume.path
    if spec.input == intensity.SINOGRAM:
        if volume.kind == "dicom" or out_kind != "npy":
            raise UserError(
                f"row '{spec.row}' reconstructs images from sinograms: give a sinogram "
                "(.npy [slice, angles, bins] or NIfTI bins x angles x slices) and a .npy output"
            )
        stack = volume.slices() if volume.kind == "npy" else volume.array.T
    elif volume.kind == "npy":
        if out_kind != "npy":
            raise UserError(f"{path}: an .npy input has no affine for a NIfTI output; write .npy")
        stack = volume.slices()
    else:
        if out_kind != "nifti":
            raise UserError(
                f"{path}: a {volume.kind} input is written back as NIfTI (.nii or .nii.gz), "
                "keeping its header"
            )
        data, zooms = volume.ras()
        return volume_to_slices(data, zooms, spec.image_size)
    stack = stack[None] if stack.ndim == 2 else stack
    if tuple(stack.shape[1:]) != spec.input_shape:
        what = "sinograms [slice, angles, bins] of" if spec.input == "sinogram" else "slices of"
        raise UserError(
            f"{path}: shape {volume.array.shape}, but row '{spec.row}' takes {what} "
            f"{spec.input_shape[0]} x {spec.input_shape[1]}"
            + (": is it an image?" if spec.input == "sinogram" else "")
        )
    return stack


def predict_volume(
    model: str,
    input_path: Path,
    output_path: Path,
    tracking_uri: str | None,
    samples: int | None = None,
    scale: float | None = None,
    seed: int = 0,
    series: str | None = None,
    clamp: bool = True,
) -> Prediction:
    """Reconstruct ``input_path`` with ``model`` and write it to ``output_path``.

    ``samples`` (K, default the row's AMS count) draws are averaged for stochastic rows;
    ``scale`` is a known full-dose scale (default: estimated, see :mod:`ablate.intensity`);
    ``series`` picks the series of a DICOM folder holding several (:mod:`ablate.dicom`).
    ``clamp`` sets negative values to 0 in what is written: activity is never negative,
    but a network's output (a diffusion sample most of all) can be, and resampling back
    onto the input's grid can ring below 0. ``clamp=False`` writes the raw output, e.g. to
    study the model's errors.
    """
    out_kind = _output_kind(output_path)
    if not output_path.parent.is_dir():
        raise UserError(f"{output_path}: folder {output_path.parent} does not exist; create it")
    if output_path.resolve() == Path(input_path).resolve():
        raise UserError(f"{output_path}: the output would overwrite the input; pick another path")
    if samples is not None and samples < 1:
        raise UserError("--samples must be at least 1")
    if scale is not None and scale <= 0:
        raise UserError("--scale must be positive (a full-dose intensity scale)")
    volume = read_volume(input_path, series=series)
    pyfunc, spec = load_model(model, tracking_uri)
    if spec.units == SUV_UNITS and volume.kind != "npy":
        volume = replace(volume, array=volume.array * suv_factor(volume))
    stack = _stack(volume, spec, out_kind).astype(np.float32)
    k = samples or spec.samples
    params = {"samples": k, "scale": scale or 0.0, "seed": seed}
    result = pyfunc.predict(stack, params=params)
    if spec.input == intensity.SINOGRAM:
        np.save(output_path, np.maximum(result, 0) if clamp else result)
    else:
        if volume.image is not None:
            data, zooms = volume.ras()
            result = volume.from_ras(slices_to_volume(result, data.shape, zooms))
        result = np.maximum(result, 0) if clamp else result
        description = f"ablate {spec.row}; units {spec.units}"
        write_like(result.reshape(volume.array.shape), volume, output_path, description)
    _, full_dose = intensity.scales(stack, spec.intensity, scale or 0.0)
    samples_used = k if spec.stochastic else 1
    return Prediction(int(stack.shape[0]), samples_used, full_dose, scale is None, spec.units)
