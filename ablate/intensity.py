"""The intensity scale a model was trained at, and how inference finds it again.

Training divides every image of a subject by that subject's *full-dose* scale (the 99.9th
percentile of its full-dose volume, :func:`ablate.data.format.full_dose_scale`) and every
sinogram by its own 99.9th percentile. At inference only the input exists:

- a **sinogram** is normalised by the same rule, exactly as in training;
- a **low-dose image** cannot be: its own 99.9th percentile sits above the full-dose scale
  (noise spikes; ~1.16-1.27x on the simulated data). So the *calibration* measured on the
  training subjects (the median ratio of the low-dose volume's percentile to the full-dose
  scale) turns the input's percentile into an estimate of the full-dose scale, the number
  training would have divided by. Its spread over the training subjects is kept with it: the
  estimate is as good as that spread says, and a known full-dose scale can be given instead.

The reconstruction is multiplied back by the full-dose scale (for sinogram rows, estimated
with the median image-to-sinogram scale ratio of the training subjects), so predictions come
out in the input's units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ablate.data.format import SCALE_PERCENTILE, array_path, full_dose_scale, read_manifest

LOW_DOSE = "lpet"
SINOGRAM = "sinogram"


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": float(np.median(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "subjects": len(values),
    }


def calibrate(
    dataset_root: Path, model_input: str, split: str = "train", among: list[str] | None = None
) -> dict[str, Any]:
    """What inference needs to normalise ``model_input`` (``lpet`` or ``sinogram``) like
    training did, measured on the ``split`` subjects of the dataset, or on the subjects
    ``among`` (a cross-validation fold's training subjects, not the manifest's split)."""
    manifest = read_manifest(Path(dataset_root))
    chosen = manifest["split"] == split if among is None else manifest["subject"].isin(among)
    subjects = manifest[chosen].groupby("subject", sort=False).first()
    if model_input == SINOGRAM:
        ratios = (subjects["scale"] / subjects["sinogram_scale"]).tolist()
        return {
            "input": SINOGRAM,
            "percentile": SCALE_PERCENTILE,
            "image_per_sinogram": _spread(ratios),
        }
    ratios = [
        full_dose_scale(np.load(array_path(dataset_root, str(subject), LOW_DOSE), mmap_mode="r"))
        for subject in subjects.index
    ]
    return {
        "input": LOW_DOSE,
        "percentile": SCALE_PERCENTILE,
        "low_dose_per_full_dose": _spread(ratios),
    }


def scales(
    stack: np.ndarray, calibration: dict[str, Any], scale: float = 0.0
) -> tuple[float, float]:
    """``(divisor, multiplier)`` for one input stack (a whole volume): the model sees
    ``stack / divisor`` and its output times ``multiplier`` is in the input's units.

    ``scale`` > 0 is a known full-dose scale and replaces the estimate.
    """
    own = full_dose_scale(np.asarray(stack))
    if calibration["input"] == SINOGRAM:
        return own, scale or own * calibration["image_per_sinogram"]["median"]
    full = scale or own / calibration["low_dose_per_full_dose"]["median"]
    return full, full
