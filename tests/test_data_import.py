"""Import of the user's own volumes: NIfTI and DICOM in, dataset and loader out, bad inputs."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from ablate.cli import app
from ablate.data.dataset import SliceDataset, available_keys
from ablate.data.format import read_manifest
from ablate.data.importing import import_dataset, load_volume, pairs_by_name, pairs_from_csv
from ablate.errors import UserError

SHAPE = (20, 16, 6)  # x, y, z


def _volume(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = np.zeros(SHAPE, np.float32)
    vol[4:16, 3:13, :] = 1000 + 100 * rng.random((12, 10, SHAPE[2]))
    return vol


def _write_nifti(path: Path, data: np.ndarray, zooms=(2.0, 2.0, 3.0)) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), path)
    return path


def _write_dicom_series(folder: Path, vol: np.ndarray, spacing=(2.0, 2.0, 3.0)) -> Path:
    """Axial slices of a RAS volume (x, y, z) as a DICOM series in LPS patient coordinates."""
    folder.mkdir(parents=True)
    series = generate_uid()
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.128"  # PET image storage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = (
            meta.MediaStorageSOPClassUID,
            meta.MediaStorageSOPInstanceUID,
        )
        ds.SeriesInstanceUID = series
        ds.Modality = "PT"
        # rows along -y (LPS +y = posterior), columns along -x (LPS +x = left): RAS voxel
        # (i, j) sits at row (ny-1-j), column (nx-1-i)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        nx, ny = vol.shape[:2]
        ds.ImagePositionPatient = [
            -(nx - 1) * spacing[0],
            -(ny - 1) * spacing[1],
            k * spacing[2],
        ]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        plane = vol[::-1, ::-1, k].T  # [rows (LPS y), cols (LPS x)]
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, 0
        ds.PixelData = np.ascontiguousarray(plane * 2).astype(np.uint16).tobytes()
        # write slices in shuffled order: the reader sorts by position
        ds.save_as(folder / f"img{(k * 7) % vol.shape[2]:03d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture
def nifti_folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        full = _volume(i)
        _write_nifti(src / f"sub{i}_full.nii.gz", full)
        _write_nifti(src / f"sub{i}_low.nii.gz", full * (0.9 + 0.2 * np.random.rand(*SHAPE)))
    return src


def test_nifti_round_trip_import_dataset_loader(nifti_folder: Path, tmp_path: Path) -> None:
    pairs = pairs_by_name(nifti_folder, "{subject}_{dose}")
    assert sorted(p.subject for p in pairs) == ["sub0", "sub1", "sub2", "sub3"]
    root = import_dataset(tmp_path / "ds", pairs, image_size=24, dose_reduction=10)
    manifest = read_manifest(root)
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (manifest.groupby("subject")["split"].nunique() == 1).all()
    assert len(manifest) == 4 * SHAPE[2] and manifest["dose_reduction"].iloc[0] == 10
    assert available_keys(root) >= {"lpet", "spet", "lpet_nas", "spet_nas", "negatives"}
    ds = SliceDataset(root, "train", ["lpet", "spet"])
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["spet"].shape == (2, 1, 24, 24)
    # normalised by the full-dose scale: undoing it gives the original intensities back
    sub = manifest[manifest["split"] == "train"].iloc[0]
    spet = np.load(root / "subjects" / sub["subject"] / "spet.npy")
    assert spet.max() < 1.2 and 1000 < spet.max() * sub["scale"] < 1200
    # 20 x 2 mm by 16 x 2 mm -> 40 mm field of view -> 24 px: brain centred, width kept
    rows_with_signal = np.nonzero(spet[0].max(1) > 0.3)[0]
    cols_with_signal = np.nonzero(spet[0].max(0) > 0.3)[0]
    assert 12 <= len(cols_with_signal) <= 16 and 10 <= len(rows_with_signal) <= 14


def test_pairs_from_csv_with_explicit_splits(nifti_folder: Path, tmp_path: Path) -> None:
    csv = nifti_folder / "pairs.csv"
    lines = ["subject,lpet,spet,split"] + [
        f"s{i},sub{i}_low.nii.gz,sub{i}_full.nii.gz,{s}"
        for i, s in enumerate(["train", "train", "val", "test"])
    ]
    csv.write_text("\n".join(lines))
    root = import_dataset(tmp_path / "ds", pairs_from_csv(csv), image_size=16)
    splits = read_manifest(root).groupby("subject")["split"].first().to_dict()
    assert splits == {"s0": "train", "s1": "train", "s2": "val", "s3": "test"}


def test_dicom_series_matches_the_nifti_volume(tmp_path: Path) -> None:
    vol = np.round(_volume(3))
    series = _write_dicom_series(tmp_path / "series", vol)
    data, zooms = load_volume(series)
    assert zooms == pytest.approx((2.0, 2.0, 3.0))
    np.testing.assert_allclose(data, vol, atol=1e-3)


def test_dicom_import_through_the_cli(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3):
        vol = np.round(_volume(i))
        _write_dicom_series(src / f"p{i}_full", vol)
        _write_dicom_series(src / f"p{i}_low", np.round(vol * 0.95))
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        app, ["data", "import", str(src), "--out", str(out), "--size", "16"]
    )
    assert result.exit_code == 0, result.output
    assert SliceDataset(out, "test", ["lpet", "spet"])[0]["lpet"].shape == (1, 16, 16)
    info = CliRunner().invoke(app, ["data", "info", str(out)])
    assert info.exit_code == 0 and "3 subjects" in info.output


def _expect_clean_failure(pairs, tmp_path: Path, match: str) -> None:
    with pytest.raises(UserError, match=match) as err:
        import_dataset(tmp_path / "out", pairs, image_size=16)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


def test_corrupt_nifti_names_the_file(nifti_folder: Path, tmp_path: Path) -> None:
    bad = nifti_folder / "sub2_low.nii.gz"
    bad.write_bytes(bad.read_bytes()[:60])
    _expect_clean_failure(pairs_by_name(nifti_folder, "{subject}_{dose}"), tmp_path, "sub2_low")


def test_nan_volume_names_the_file(nifti_folder: Path, tmp_path: Path) -> None:
    vol = _volume(9)
    vol[3, 3, 3] = np.nan
    _write_nifti(nifti_folder / "sub3_full.nii.gz", vol)
    _expect_clean_failure(
        pairs_by_name(nifti_folder, "{subject}_{dose}"), tmp_path, "sub3_full.*NaN"
    )


def test_shape_mismatch_names_the_file(nifti_folder: Path, tmp_path: Path) -> None:
    _write_nifti(nifti_folder / "sub1_low.nii.gz", np.ones((20, 16, 5), np.float32))
    _expect_clean_failure(
        pairs_by_name(nifti_folder, "{subject}_{dose}"), tmp_path, "sub1_low.*do not match"
    )


def test_unreadable_dicom_names_the_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(3):
        _write_dicom_series(src / f"p{i}_full", np.round(_volume(i)))
    (src / "p1_full" / "img002.dcm").write_bytes(b"not a dicom file at all")
    _expect_clean_failure(pairs_by_name(src, "{subject}_{dose}"), tmp_path, "img002.dcm")


def test_bad_pairing_inputs(nifti_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="needs both"):
        pairs_by_name(nifti_folder, "{subject}")
    with pytest.raises(UserError, match="no file"):
        pairs_by_name(nifti_folder, "{subject}-{dose}")
    csv = tmp_path / "p.csv"
    csv.write_text("name,file\na,b\n")
    with pytest.raises(UserError, match="missing column"):
        pairs_from_csv(csv)
    (nifti_folder / "sub0_full.nii.gz").unlink()
    with pytest.raises(UserError, match="sub0 .*no full-dose"):
        pairs_by_name(nifti_folder, "{subject}_{dose}")
    result = CliRunner().invoke(
        app, ["data", "import", str(nifti_folder), "--out", str(tmp_path / "o"), "--split", "1,2"]
    )
    assert result.exit_code == 2 and "--split" in result.output


def test_simulate_and_info_commands(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = ["data", "simulate", "--out", str(out), "--set", "subjects=3", "--set", "slices=2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    info = CliRunner().invoke(app, ["data", "info", str(out)])
    assert info.exit_code == 0 and "MNI" in info.output and "sinogram" in info.output
    bad = CliRunner().invoke(
        app, ["data", "simulate", "--out", str(tmp_path / "x"), "--set", "nope=1"]
    )
    assert bad.exit_code == 2 and "unknown simulator knob 'nope'" in bad.output
