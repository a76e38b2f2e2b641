"""Import of the user's own volumes: NIfTI and DICOM in, dataset and loader out, bad inputs."""

from __future__ import annotations

import subprocess
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
from ablate.data.importing import import_dataset, pairs_by_name, pairs_from_csv
from ablate.errors import UserError
from ablate.volumes import load_volume

SHAPE = (20, 16, 6)  # x, y, z


def _volume(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = np.zeros(SHAPE, np.float32)
    vol[4:16, 3:13, :] = 1000 + 100 * rng.random((12, 10, SHAPE[2]))
    return vol


def _write_nifti(path: Path, data: np.ndarray, zooms=(2.0, 2.0, 3.0)) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), path)
    return path


def _write_dicom_series(
    folder: Path,
    vol: np.ndarray,
    spacing=(2.0, 2.0, 3.0),
    *,
    description: str = "PET AC",
    number: int = 3,
    prefix: str = "img",
    tags: dict | None = None,
    positions: list[float] | None = None,
) -> Path:
    """Axial slices of a RAS volume (x, y, z) as a DICOM PET series in LPS patient coordinates,
    with a per-slice rescale slope, written under shuffled file names; ``tags`` are set on
    every slice (SUV tags), ``positions`` overrides the slice heights (mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    n_slices = vol.shape[2]
    for k in range(n_slices):
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
        ds.SeriesDescription, ds.SeriesNumber = description, number
        ds.Modality = "PT"
        ds.Units = "BQML"
        for tag, value in (tags or {}).items():
            setattr(ds, tag, value)
        # rows along -y (LPS +y = posterior), columns along -x (LPS +x = left): RAS voxel
        # (i, j) sits at row (ny-1-j), column (nx-1-i)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        nx, ny = vol.shape[:2]
        z = k * spacing[2] if positions is None else positions[k]
        ds.ImagePositionPatient = [-(nx - 1) * spacing[0], -(ny - 1) * spacing[1], z]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        plane = vol[::-1, ::-1, k].T  # [rows (LPS y), cols (LPS x)]
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        slope = 0.5 ** (k % 3)  # per-slice rescale, exact for integer volumes
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0
        ds.PixelData = np.ascontiguousarray(plane / slope).astype(np.uint16).tobytes()
        # write slices in shuffled order: the reader sorts by position
        name = f"{prefix}{(k * 7) % n_slices:03d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
    return folder


def _add_stray_files(folder: Path) -> None:
    """What scanner exports and PACS downloads put beside the slices."""
    (folder / "README.txt").write_text("exported by the scanner console\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # media storage directory
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dicomdir = pydicom.Dataset()
    dicomdir.file_meta = meta
    dicomdir.FileSetID = "EXPORT"
    dicomdir.DirectoryRecordSequence = []
    dicomdir.save_as(folder / "DICOMDIR", enforce_file_format=True)


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


def test_dicom_folder_as_scanners_write_it(tmp_path: Path) -> None:
    """Stray files skipped and counted; two series in one folder: the user is asked which."""
    src = tmp_path / "src"
    vols = {}
    for i in range(3):
        vols[i] = np.round(_volume(i))
        for dose, factor in (("full", 1.0), ("low", 0.5)):
            folder = _write_dicom_series(src / f"p{i}_{dose}", np.round(vols[i] * factor))
            _add_stray_files(folder)
    # p0_full also holds a non-attenuation-corrected reconstruction of the same scan
    _write_dicom_series(
        src / "p0_full", np.round(vols[0] * 0.3), description="PET NAC", number=4, prefix="nac"
    )
    cmd = ["ablate", "data", "import", "src", "--out", "ds", "--size", "16"]
    asked = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert asked.returncode == 2, asked.stdout + asked.stderr
    line = asked.stderr.strip()
    assert "\n" not in line and "src/p0_full: holds 2 DICOM series" in line
    assert (
        "'PET AC' (number 3, PT, 6 slices" in line and "'PET NAC' (number 4, PT, 6 slices" in line
    )
    assert "--series" in line and not (tmp_path / "ds").exists()
    done = subprocess.run(
        [*cmd, "--series", "PET AC"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped 18 non-image files in DICOM folders (.DS_Store, DICOMDIR, README.txt)" in (
        " ".join(done.stdout.split())
    )
    assert len(SliceDataset(tmp_path / "ds", "train", ["spet"])) > 0
    # the series picked is the AC one: p0's full dose volume is the original, not 0.3 x it
    manifest = read_manifest(tmp_path / "ds")
    p0_scale = manifest[manifest["subject"] == "p0"]["scale"].iloc[0]
    assert p0_scale == pytest.approx(np.percentile(vols[0], 99.9), rel=0.05)
    nac, _ = load_volume(src / "p0_full", series="4")  # by SeriesNumber
    np.testing.assert_allclose(nac, np.round(vols[0] * 0.3), atol=1e-3)


def test_dicom_stack_problems_are_one_line_errors(tmp_path: Path) -> None:
    vol = np.round(_volume(1))
    gap = _write_dicom_series(tmp_path / "gap", vol, positions=[0.0, 3.0, 6.0, 12.0, 15.0, 18.0])
    with pytest.raises(
        UserError, match=r"gap of 6 mm .*\(6.00 mm\).*\(12.00 mm\).*3 mm apart: 1 slice"
    ):
        load_volume(gap)
    uneven = _write_dicom_series(
        tmp_path / "uneven", vol, positions=[0.0, 3.0, 6.0, 10.0, 13.0, 16.0]
    )
    with pytest.raises(UserError, match="uneven slice spacing"):
        load_volume(uneven)
    tilted = _write_dicom_series(tmp_path / "tilted", vol)
    one = sorted(tilted.glob("*.dcm"))[2]
    ds = pydicom.dcmread(one)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9950042, -0.0998334]
    ds.save_as(one)
    with pytest.raises(UserError, match=f"mixed slice orientations.*{one.name}") as err:
        load_volume(tilted)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="matches none of the 1 DICOM series: 'PET AC'"):
        load_volume(gap, series="PET NAC")
