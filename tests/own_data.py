"""A tiny folder of a user's own scans, as README "Your own data" expects: ``scans/`` holding
``sub01_full.nii.gz`` / ``sub01_low.nii.gz`` ... (LAS, int16 with ``scl_slope``, Bq/mL) with
PET-BIDS ``_pet.json``-style sidecars (``sub01_full.json``) giving dose, weight and times, so
``--units suv`` works. Used by tests/integration/test_own_data.py and the README-verbatim test."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SUBJECTS = 5
SHAPE = (28, 24, 8)  # x, y, z voxels of 2 x 2 x 3 mm
DOSE_MBQ = 250.0
DOSE_REDUCTION = 4


def _activity(rng: np.random.Generator) -> np.ndarray:
    """A head-like ellipsoid (Bq/mL) with a hot spot, at a subject's own size and position."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    cx, cy = 14 + rng.uniform(-2, 2), 12 + rng.uniform(-2, 2)
    body = ((x - cx) / 10) ** 2 + ((y - cy) / 8) ** 2 + ((z - 3.5) / 6) ** 2 < 1
    hot = ((x - cx - 4) ** 2 + (y - cy) ** 2 + (z - 4) ** 2) < 6
    return 5000.0 * body + 15000.0 * hot


def write_scans(folder: Path, seed: int = 0, subjects: int = SUBJECTS) -> Path:
    """Write the scans (full and low dose per subject, with sidecars) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])  # LAS, as many scanners' NIfTI exports
    affine[:3, 3] = [27.0, -23.0, -10.5]
    for k in range(1, subjects + 1):
        activity = _activity(rng)
        weight = float(rng.uniform(55, 95))
        for dose, fraction in (("full", 1.0), ("low", 1.0 / DOSE_REDUCTION)):
            counts = rng.poisson(activity * fraction / 50.0) * 50.0
            image = nib.Nifti1Image(counts.astype(np.float32), affine)
            image.set_data_dtype(np.int16)  # nibabel stores scl_slope
            nib.save(image, folder / f"sub{k:02d}_{dose}.nii.gz")
            sidecar = {
                "Units": "Bq/mL",
                "TracerRadionuclide": "F18",
                "AttenuationCorrection": "CT-based",
                "ImageDecayCorrected": True,
                "TimeZero": "10:00:00",
                "InjectionStart": -3600,
                "ScanStart": 0,
                "ImageDecayCorrectionTime": 0,
                "InjectedRadioactivity": DOSE_MBQ * fraction,
                "InjectedRadioactivityUnits": "MBq",
                "BodyWeight": weight,
            }
            (folder / f"sub{k:02d}_{dose}.json").write_text(json.dumps(sidecar, indent=1))
    return folder
