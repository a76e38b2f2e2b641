"""SUV (QIBA) from DICOM tags and PET-BIDS sidecars: a hand computation, refusals, the import."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ablate.data.format import read_manifest, read_provenance
from ablate.errors import UserError
from ablate.suv import SUV_UNITS, suv_factor
from ablate.volumes import read_volume
from tests.unit.core.test_data_import import _volume, _write_dicom_series

DOSE_BQ = 370.0e6
HALF_LIFE_S = 6586.2
WEIGHT_KG = 72.5
# injection 09:30:15.5, series 10:30:00 -> 3584.5 s of decay
HAND_FACTOR = WEIGHT_KG * 1000.0 / (DOSE_BQ * 2.0 ** (-3584.5 / HALF_LIFE_S))


def _suv_tags(dose: float = DOSE_BQ, **changes: object) -> dict:
    drug = pydicom.Dataset()
    drug.RadionuclideTotalDose = dose
    drug.RadionuclideHalfLife = HALF_LIFE_S
    drug.RadiopharmaceuticalStartTime = "093015.5"
    tags = {
        "Units": "BQML",
        "CorrectedImage": ["NORM", "ATTN", "DECY", "SCAT"],
        "DecayCorrection": "START",
        "PatientWeight": WEIGHT_KG,
        "SeriesDate": "20260101",
        "SeriesTime": "103000",
        "RadiopharmaceuticalInformationSequence": [drug],
    }
    tags.update(changes)
    return tags


def test_dicom_suv_equals_the_hand_computation(tmp_path: Path) -> None:
    vol = np.round(_volume(0))
    series = _write_dicom_series(tmp_path / "s", vol, tags=_suv_tags())
    volume = read_volume(series)
    factor = suv_factor(volume)
    assert factor == pytest.approx(HAND_FACTOR, rel=1e-6)
    # the same with the injection given as a full date-time (RadiopharmaceuticalStartDateTime)
    drug = pydicom.Dataset()
    drug.RadionuclideTotalDose, drug.RadionuclideHalfLife = DOSE_BQ, HALF_LIFE_S
    drug.RadiopharmaceuticalStartDateTime = "20260101093015.5"
    other = _write_dicom_series(
        tmp_path / "t", vol, tags=_suv_tags(RadiopharmaceuticalInformationSequence=[drug])
    )
    assert suv_factor(read_volume(other)) == pytest.approx(HAND_FACTOR, rel=1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"DecayCorrection": "NONE"}, "DecayCorrection is NONE, QIBA's SUV needs START"),
        ({"Units": "CNTS"}, "Units is CNTS, SUV needs BQML"),
        ({"CorrectedImage": ["NORM", "DECY"]}, "lacks ATTN"),
        ({"PatientWeight": None}, "DICOM tag PatientWeight is missing"),
    ],
)
def test_dicom_suv_refusals_name_the_tag(tmp_path: Path, changes: dict, message: str) -> None:
    tags = {k: v for k, v in _suv_tags(**changes).items() if v is not None}
    series = _write_dicom_series(tmp_path / "s", np.round(_volume(0)), tags=tags)
    with pytest.raises(UserError, match=message) as err:
        suv_factor(read_volume(series))
    assert "\n" not in str(err.value) and str(series) in str(err.value)


def _sidecar(**changes: object) -> dict:
    meta = {
        "Units": "Bq/mL",
        "AttenuationCorrection": "CT-based",
        "ImageDecayCorrected": True,
        "ImageDecayCorrectionTime": 3584.5,
        "InjectionStart": 0,
        "InjectedRadioactivity": DOSE_BQ / 1e6,
        "InjectedRadioactivityUnits": "MBq",
        "BodyWeight": WEIGHT_KG,
        "TracerRadionuclide": "F18",
        "TimeZero": "09:30:15",
    }
    meta.update(changes)
    return meta


def test_nifti_suv_from_the_bids_sidecar(tmp_path: Path) -> None:
    image = tmp_path / "sub-01_pet.nii.gz"
    nib.save(nib.Nifti1Image(_volume(0), np.diag([2.0, 2.0, 3.0, 1.0])), image)
    (tmp_path / "sub-01_pet.json").write_text(json.dumps(_sidecar()))
    assert suv_factor(read_volume(image)) == pytest.approx(HAND_FACTOR, rel=1e-6)
    (tmp_path / "sub-01_pet.json").write_text(json.dumps(_sidecar(ImageDecayCorrected=False)))
    with pytest.raises(UserError, match="ImageDecayCorrected is not true"):
        suv_factor(read_volume(image))
    (tmp_path / "sub-01_pet.json").unlink()
    with pytest.raises(UserError, match="no sidecar"):
        suv_factor(read_volume(image))


def test_import_in_suv_through_the_cli(tmp_path: Path) -> None:
    """Both doses in SUV (each with its own injected dose): a quarter-dose scan of the same
    tracer distribution reads the same SUV; the units are recorded; NONE is refused."""
    vols = {}
    for i in range(3):
        vols[i] = np.round(_volume(i))
        _write_dicom_series(tmp_path / "src" / f"p{i}_full", vols[i], tags=_suv_tags())
        low = np.round(vols[i] / 4)
        _write_dicom_series(tmp_path / "src" / f"p{i}_low", low, tags=_suv_tags(DOSE_BQ / 4))
    cmd = ["ablate", "data", "import", "src", "--out", "ds", "--size", "16", "--units", "suv"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"(units: {SUV_UNITS})" in done.stdout
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["suv_factor"].to_numpy() == pytest.approx(HAND_FACTOR, rel=1e-6)
    p0 = manifest[manifest["subject"] == "p0"]["scale"].iloc[0]
    assert p0 == pytest.approx(np.percentile(vols[0] * HAND_FACTOR, 99.9), rel=0.05)
    spet = np.load(tmp_path / "ds" / "subjects" / "p0" / "spet.npy")
    lpet = np.load(tmp_path / "ds" / "subjects" / "p0" / "lpet.npy")
    np.testing.assert_allclose(lpet, spet, atol=0.01)
    assert read_provenance(tmp_path / "ds")["units"] == SUV_UNITS

    bad = tmp_path / "src" / "p1_low"
    for file in bad.glob("*.dcm"):
        ds = pydicom.dcmread(file)
        ds.DecayCorrection = "NONE"
        ds.save_as(file)
    cmd[5] = "ds2"
    refused = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert "p1_low: cannot compute SUV: DecayCorrection is NONE" in refused.stderr
    assert not (tmp_path / "ds2").exists()
