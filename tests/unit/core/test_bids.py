"""PET-BIDS import: a tree of 3 subjects x 2 sessions, acq-std / acq-low, sidecars."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ablate.data.format import read_manifest, read_provenance
from ablate.suv import SUV_UNITS
from tests.unit.core.test_suv import HAND_FACTOR, _sidecar

SHAPE = (20, 16, 6)


def _write_tree(root: Path) -> None:
    root.mkdir()
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "toy", "BIDSVersion": "1.9.0", "DatasetType": "raw"})
    )
    rng = np.random.default_rng(0)
    for sub in ("01", "02", "03"):
        for ses in ("1", "2"):
            folder = root / f"sub-{sub}" / f"ses-{ses}" / "pet"
            folder.mkdir(parents=True)
            activity = np.zeros(SHAPE, np.float32)
            activity[4:16, 3:13, :] = 1000 + 100 * rng.random((12, 10, SHAPE[2]))
            for acq, fraction in (("std", 1.0), ("low", 0.25)):
                stem = f"sub-{sub}_ses-{ses}_acq-{acq}_pet"
                image = nib.Nifti1Image(activity * fraction, np.diag([2.0, 2.0, 3.0, 1.0]))
                nib.save(image, folder / f"{stem}.nii.gz")
                dose = _sidecar()["InjectedRadioactivity"] * fraction
                sidecar = _sidecar(InjectedRadioactivity=dose)
                (folder / f"{stem}.json").write_text(json.dumps(sidecar))


@pytest.mark.slow
def test_pet_bids_tree_imports_by_subject_and_session(tmp_path: Path) -> None:
    _write_tree(tmp_path / "bids")
    cmd = ["ablate", "data", "import", "bids", "--out", "ds", "--size", "16", "--units", "suv"]
    cmd += ["--full", "acq-std", "--low", "acq-low"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported 6 subjects" in done.stdout
    manifest = read_manifest(tmp_path / "ds")
    ids = sorted(manifest["subject"].unique())
    assert ids == [f"{s}_ses-{t}" for s in ("01", "02", "03") for t in ("1", "2")]
    splits = manifest.groupby("subject")["split"].first()
    for sub in ("01", "02", "03"):  # the sessions of one person share a split
        assert splits[f"{sub}_ses-1"] == splits[f"{sub}_ses-2"]
    assert set(splits) == {"train", "val", "test"}
    provenance = read_provenance(tmp_path / "ds")
    assert provenance["units"] == SUV_UNITS
    for sid, files in provenance["subjects"].items():
        sub, ses = sid.split("_ses-")
        assert files["spet"].endswith(f"sub-{sub}_ses-{ses}_acq-std_pet.nii.gz")
        assert files["lpet"].endswith(f"sub-{sub}_ses-{ses}_acq-low_pet.nii.gz")
    assert np.allclose(manifest["suv_factor"], HAND_FACTOR, rtol=1e-6)
    low = np.load(tmp_path / "ds" / "subjects" / "02_ses-1" / "lpet.npy")
    full = np.load(tmp_path / "ds" / "subjects" / "02_ses-1" / "spet.npy")
    np.testing.assert_allclose(low, full, atol=1e-4)  # SUV: each dose with its own activity

    cmd[5] = "ds2"
    cmd[-3] = "acq-full"
    wrong = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert "--full acq-full: no PET image" in wrong.stderr and "has: low, std" in wrong.stderr
    bare = subprocess.run(cmd[:6], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert bare.returncode == 2 and "is a BIDS tree: say which scans" in bare.stderr
