"""Metrics on real-looking volumes, as a user meets them: NIfTI pairs whose volumes have empty
axial slices at their ends (any brain volume cut to the skull has some), imported with
``ablate data import``, then ``ablate run search_spaces/demo.yaml data.path=DS``.

- The metrics are per test subject volume: present, finite, and the table has the
  "low-dose input" line; ``ablate data import`` / ``ablate data info`` report the constant
  slices; the trial's artifacts hold the per-slice and per-subject tables of the contract.
- A test subject whose reference volume is constant makes the trial's metrics undefined: the
  trial FAILS with that reason (MLflow FAILED + error tag), the launch exits 1 and counts it.

The CLI runs as a subprocess in a fresh folder, on an embedded Ray and the sqlite store.
"""

from __future__ import annotations

import csv
import io
import math
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ablate.data.format import array_path, read_manifest
from tests.conftest import trial_runs
from tests.paths import REPO

pytestmark = pytest.mark.slow

DEMO = REPO / "search_spaces" / "demo.yaml"
EMPTY_ENDS = 3  # zero slices added before and after every simulated volume
#: tiny settings crossing the evaluation and log schedules
TINY = ["train.steps=12", "train.eval_every=6", "train.log_every=4", "train.batch_size=2"]


def _ablate(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ablate", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return " ".join(result.stdout.split())  # rich wraps lines at 80 columns


def _nifti_pairs(cwd: Path, subjects: int) -> tuple[Path, list[str]]:
    """``ablate data simulate`` subjects written as NIfTI pairs with EMPTY_ENDS zero slices
    at both ends of each volume: ``src/<subject>_low.nii.gz`` / ``_full.nii.gz``."""
    _ok(_ablate(["data", "simulate", "--out", "sim", "--set", f"subjects={subjects}"], cwd))
    src = cwd / "src"
    src.mkdir()
    names = []
    for subject in read_manifest(cwd / "sim")["subject"].unique():
        for kind, dose in (("lpet", "low"), ("spet", "full")):
            slices = np.load(array_path(cwd / "sim", str(subject), kind))  # [z, rows, cols]
            pad = np.zeros((EMPTY_ENDS, *slices.shape[1:]), np.float32)
            volume = np.concatenate([pad, slices, pad]).transpose(2, 1, 0)  # x, y, z
            affine = np.diag([7.0, 7.0, 7.0, 1.0])
            nib.save(nib.Nifti1Image(volume * 1000, affine), src / f"{subject}_{dose}.nii.gz")
        names.append(str(subject))
    return src, names


def _artifact(tracking_uri: str, run_id: str, name: str, dest: Path) -> pd.DataFrame:
    path = MlflowClient(tracking_uri).download_artifacts(run_id, name, str(dest))
    return pd.read_parquet(path)


def test_metrics_per_subject_volume_and_input_line_on_volumes_with_empty_slices(
    tmp_path: Path,
) -> None:
    src, _ = _nifti_pairs(tmp_path, subjects=10)
    imported = _ok(_ablate(["data", "import", str(src), "--out", "DS", "--size", "32"], tmp_path))
    n_constant = 10 * 2 * EMPTY_ENDS
    assert f"{n_constant} of " in imported and "reference slices are constant" in imported
    assert "per test subject over its volume" in imported
    info = _ok(_ablate(["data", "info", "DS"], tmp_path))
    assert f"{n_constant} of " in info and "slices 0-2" in info

    run = _ablate(
        ["run", str(DEMO), "data.path=DS", "--rows", "cpm", "--seeds", "2", *TINY], tmp_path
    )
    text = _ok(run)
    assert "2 trials, 0 failed" in text

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    runs = trial_runs(uri, "demo")
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}
    for name in ("psnr", "ssim", "nmse", "nrmse", "input_psnr", "input_nmse", "paper_psnr"):
        assert all(math.isfinite(v) for v in runs[f"metrics.{name}"]), name

    run_id = runs["run_id"].iloc[0]
    slices = _artifact(uri, run_id, "test_metrics.parquet", tmp_path)
    subjects = _artifact(uri, run_id, "test_subjects.parquet", tmp_path)
    assert list(slices.columns[:3]) == ["index", "subject", "slice"]
    test_subjects = read_manifest(tmp_path / "DS").query("split == 'test'")["subject"].unique()
    assert sorted(subjects["subject"]) == sorted(test_subjects) and len(test_subjects) == 2
    assert subjects["n_slices"].sum() == len(slices) == 16  # demo.yaml's train.eval_slices
    assert {"psnr", "ssim", "nmse", "nrmse", "input_psnr", "input_nrmse"} <= set(subjects)
    logged = runs.set_index("run_id").loc[run_id]
    assert logged["metrics.psnr"] == pytest.approx(subjects["psnr"].mean())
    assert logged["metrics.input_nmse"] == pytest.approx(subjects["input_nmse"].mean())
    # the evaluated end slices are empty: undefined per slice, part of the volume's metric
    empty = slices[slices["slice"] < EMPTY_ENDS]
    assert len(empty) and empty["psnr"].isna().all()

    table = _ablate(["table", "demo", "--format", "csv"], tmp_path).stdout
    lines = {row["line"]: row for row in csv.DictReader(io.StringIO(table))}
    baseline = lines["input"]
    assert baseline["label"] == "low-dose input" and baseline["source"] == "input"
    assert float(baseline["psnr_mean"]) == pytest.approx(subjects["input_psnr"].mean())
    assert float(lines["cpm"]["psnr_mean"]) == pytest.approx(runs["metrics.psnr"].mean())
    shown = _ok(_ablate(["table", "demo"], tmp_path))
    assert "low-dose input" in shown and "over each test subject" in shown


def test_a_trial_whose_metric_is_undefined_fails_and_the_launch_counts_it(
    tmp_path: Path,
) -> None:
    src, names = _nifti_pairs(tmp_path, subjects=7)
    blank = np.zeros((32, 32, 14 + 2 * EMPTY_ENDS), np.float32)
    for dose in ("low", "full"):  # a test subject with no signal: nothing to score against
        nib.save(nib.Nifti1Image(blank, np.diag([7.0, 7.0, 7.0, 1.0])), src / f"blank_{dose}.nii")
    splits = ["train"] * 5 + ["val", "test"]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "subject,spet,lpet,split\n"
        + "".join(
            f"{s},src/{s}_full.nii.gz,src/{s}_low.nii.gz,{split}\n"
            for s, split in zip(names, splits, strict=True)
        )
        + "blank,src/blank_full.nii,src/blank_low.nii,test\n"
    )
    imported = _ok(_ablate(["data", "import", str(src), "--pairs", "pairs.csv", "--out", "DS",
                            "--size", "32"], tmp_path))  # fmt: skip
    assert "blank: the whole reference volume is constant" in imported

    run = _ablate(["run", str(DEMO), "data.path=DS", "--rows", "cpm", "--seeds", "1", *TINY],
                  tmp_path)  # fmt: skip
    text = " ".join(run.stdout.split())
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 trials, 1 failed" in text and "1 of 1 trials failed" in text
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    trial = trial_runs(uri, "demo").iloc[0]
    assert trial["status"] == "FAILED" and trial["tags.ablate.status"] == "failed"
    assert trial["tags.ablate.error"].startswith(
        "test metric 'psnr' is nan for subject blank: its reference is constant"
    )
    status = " ".join(_ablate(["status", "demo"], tmp_path).stdout.split())
    assert "failed" in status and "blank" in status
    table = _ok(_ablate(["table", "demo", "--format", "md"], tmp_path))
    assert "failed: test metric 'psnr' is nan for subject blank" in table
