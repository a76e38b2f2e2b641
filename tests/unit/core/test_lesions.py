"""Lesion metrics on synthetic cases with known answers (ablate.lesions)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from ablate.data.format import read_provenance
from ablate.lesions import per_lesion, summarise
from ablate.workspace import default_tracking_uri
from tests.own_data import SUBJECTS, write_scans

BACKGROUND, CONTRAST, SIDE = 1.0, 3.0, 8  # a square lesion of 8 x 8 pixels at 4x uptake


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    """Two slices of uniform background with a hot square (label 1) and a cold one (label 2)."""
    ref = np.full((2, 48, 48), BACKGROUND)
    labels = np.zeros((2, 48, 48), np.int64)
    ref[:, 8 : 8 + SIDE, 8 : 8 + SIDE] = BACKGROUND + CONTRAST
    labels[:, 8 : 8 + SIDE, 8 : 8 + SIDE] = 1
    ref[:, 30 : 30 + SIDE, 30 : 30 + SIDE] = 0.25 * BACKGROUND
    labels[:, 30 : 30 + SIDE, 30 : 30 + SIDE] = 2
    return ref, labels


def test_identity_prediction_has_no_bias_and_full_recovery() -> None:
    ref, labels = _phantom()
    table = per_lesion(ref, ref, labels)
    assert table["label"].tolist() == [1, 2] and table["voxels"].tolist() == [128, 128]
    np.testing.assert_allclose(table["suvmax_bias"], 0.0, atol=1e-12)
    np.testing.assert_allclose(table["suvmean_bias"], 0.0, atol=1e-12)
    np.testing.assert_allclose(table["crc"], 1.0, rtol=1e-12)
    summary = summarise(table)
    assert summary["lesion_n"] == 2 and summary["lesion_crc"] == pytest.approx(1.0)
    assert summary["lesion_abs_crc_error"] == pytest.approx(0.0, abs=1e-12)


def test_a_blurred_lesion_recovers_a_known_fraction_of_its_contrast() -> None:
    """A 3 x 3 box blur (in-plane) keeps, of a square of side L, the fraction
    (1 - h(h+1)/(w L))^2 of its excess activity inside it (w = 3, h = 1: each 1D edge loses
    h(h+1)/(2w) of a pixel's worth); the background ring, over 2 pixels away, is untouched
    and the lesion's centre keeps its peak. So CRC = (1 - 2/24)^2 = 0.840278, SUVmax bias 0,
    SUVmean bias = 100 (B + C CRC - (B + C)) / (B + C)."""
    ref, labels = _phantom()
    hot_only = np.where(labels == 2, BACKGROUND, ref)
    labels = np.where(labels == 2, 0, labels)
    blurred = ndimage.uniform_filter(hot_only, size=(1, 3, 3), mode="nearest")
    known_crc = (1 - 1 * 2 / (3 * SIDE)) ** 2
    table = per_lesion(blurred, hot_only, labels)
    assert table["crc"].iloc[0] == pytest.approx(known_crc, rel=1e-12)
    assert table["suvmax_bias"].iloc[0] == pytest.approx(0.0, abs=1e-12)
    peak = BACKGROUND + CONTRAST
    known_mean_bias = 100 * (BACKGROUND + CONTRAST * known_crc - peak) / peak
    assert table["suvmean_bias"].iloc[0] == pytest.approx(known_mean_bias, rel=1e-12)
    assert known_crc < 0.85 and known_mean_bias == pytest.approx(-11.979, abs=1e-3)


def test_a_lesion_without_reference_contrast_has_no_crc() -> None:
    ref = np.ones((1, 32, 32))
    labels = np.zeros((1, 32, 32), np.int64)
    labels[0, 10:14, 10:14] = 1
    table = per_lesion(ref * 1.1, ref, labels)
    assert np.isnan(table["crc"].iloc[0]) and table["suvmean_bias"].iloc[0] == pytest.approx(10)
    assert "lesion_crc" not in summarise(table) and summarise(table.iloc[:0]) == {}


def test_import_with_lesion_masks_through_the_cli(tmp_path: Path) -> None:
    """A user's label NIfTI per subject is cut like the images and stored as ``lesions``."""
    scans = write_scans(tmp_path / "scans")
    (tmp_path / "masks").mkdir()
    for k in range(1, SUBJECTS + 1):
        full = nib.load(scans / f"sub{k:02d}_full.nii.gz")
        hot = (full.get_fdata() > 12000).astype(np.int16)  # the hot spot of tests/own_data.py
        nib.save(nib.Nifti1Image(hot, full.affine), tmp_path / "masks" / f"sub{k:02d}.nii.gz")
    cmd = ["ablate", "data", "import", "scans", "--out", "ds", "--size", "32", "--masks", "masks"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lesions" in read_provenance(tmp_path / "ds")["arrays"]
    spet = np.load(tmp_path / "ds" / "subjects" / "sub01" / "spet.npy")
    labels = np.load(tmp_path / "ds" / "subjects" / "sub01" / "lesions.npy")
    assert labels.shape == spet.shape and set(np.unique(labels)) == {0.0, 1.0}
    assert spet[labels == 1].mean() > 2 * spet[(labels == 0) & (spet > 0.05)].mean()
    table = per_lesion(spet, spet, labels)
    assert len(table) == 1 and table["crc"].iloc[0] == pytest.approx(1.0)

    bad = nib.load(tmp_path / "masks" / "sub02.nii.gz")
    nib.save(
        nib.Nifti1Image(bad.get_fdata()[:, :, :-1], bad.affine), tmp_path / "masks" / "sub02.nii.gz"
    )
    cmd[5] = "ds2"
    refused = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "sub02.nii.gz: the lesion mask is not on the grid" in (
        refused.stderr
    )


@pytest.mark.slow
def test_the_demo_table_shows_lesion_columns(tmp_path: Path) -> None:
    """`ablate demo` (its data holds lesions in the test split): each trial logs lesion_*
    metrics and a per-lesion artifact, and the table has the lesion columns."""
    from mlflow import MlflowClient

    from tests.conftest import trial_runs

    cmd = ["ablate", "demo", "--steps", "10", "--seeds", "1", "--rows", "cpm"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = " ".join(done.stdout.split())
    assert "SUVmax err" in table and "SUVmean err" in table and "CRC err" in table
    assert "Lesion columns: mean over the test lesions" in table
    runs = trial_runs(default_tracking_uri(tmp_path / "runs"), "demo")
    assert len(runs) == 1
    trial = runs.iloc[0]
    assert trial["metrics.lesion_n"] >= 1
    for name in ("lesion_suvmax_bias", "lesion_suvmean_bias", "lesion_abs_suvmax_bias"):
        assert np.isfinite(trial[f"metrics.{name}"])
    uri = default_tracking_uri(tmp_path / "runs")
    local = MlflowClient(uri).download_artifacts(
        trial["run_id"], "test_lesions.parquet", str(tmp_path)
    )
    lesions = pd.read_parquet(local)
    assert len(lesions) == trial["metrics.lesion_n"]
    assert {"subject", "label", "voxels", "suvmax_bias", "suvmean_bias", "crc"} <= set(lesions)
