"""Subject-level k-fold cross-validation (``data.folds``), as a user runs it: the ``ablate``
CLI in a fresh folder on an imported dataset of 6 subjects (tests/own_data.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow.pyfunc
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from ablate.config import DataConfig
from ablate.data.folds import assign_folds, fold_file
from ablate.data.format import read_manifest
from ablate.data.importing import import_dataset, pairs_by_name
from ablate.serving import CHECKPOINT, Reconstructor
from dashboards.results import load_results
from tests.conftest import TINY_MODEL, trial_runs
from tests.own_data import write_scans

SUBJECTS = 6


def _ablate(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "ablate.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _dataset(tmp_path: Path) -> Path:
    scans = write_scans(tmp_path / "scans", subjects=SUBJECTS)
    return import_dataset(tmp_path / "data", pairs_by_name(scans, "{subject}_{dose}"), 16)


def _study(tmp_path: Path, **data: object) -> Path:
    space = {
        "name": "cv",
        "rows": {
            "cpm": {"method": "coarse_to_fine", "label": "CPM"},
            "cpm_irm": {"method": "coarse_to_fine", "irm": True, "label": "+IRM"},
        },
        "seeds": [0, 1],
        "data": {"path": str(tmp_path / "data"), **data},
        "model": TINY_MODEL,
        "diffusion": {"train_steps": 100, "irm": {"sample_steps": 2}, "ams_samples": 1},
        "train": {"steps": 5, "batch_size": 2, "log_every": 2, "eval_every": 3, "eval_slices": 6},
        "resources": {"cpu": 1},
    }
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_fold_assignment_is_seeded_stratified_and_complete() -> None:
    subjects = [f"p{i}" for i in range(7)]
    manifest = pd.DataFrame(
        {
            "subject": [s for s in subjects for _ in range(2)],
            "site": [("a" if i < 4 else "b") for i in range(7) for _ in range(2)],
        }
    )
    folds = assign_folds(manifest, 3, seed=5, stratify="site")
    tested = [s for fold in folds.test.values() for s in fold]
    assert sorted(tested) == subjects  # every subject tested exactly once
    assert sorted(len(f) for f in folds.test.values()) == [2, 2, 3]
    for fold, test in folds.test.items():
        sites = {s: ("a" if int(s[1:]) < 4 else "b") for s in subjects}
        assert {sites[s] for s in test} == {"a", "b"} or len(test) < 2
        assert not set(folds.val[fold]) & set(test)  # validation from the training folds
        splits = folds.splits(fold)
        assert {s for s, v in splits.items() if v == "test"} == set(test)
        assert "train" in splits.values()
    assert assign_folds(manifest, 3, 5, "site").hash == folds.hash
    assert assign_folds(manifest, 3, 6, "site").hash != folds.hash


def test_folds_none_keeps_the_split_and_one_fold_is_refused() -> None:
    assert DataConfig(folds="none").folds is None and DataConfig().folds is None
    assert DataConfig(folds=4).folds == 4
    with pytest.raises(ValueError, match="not cross-validation"):
        DataConfig(folds=1)


def test_bad_fold_settings_are_one_line_errors_before_anything_starts(tmp_path: Path) -> None:
    _dataset(tmp_path)
    space = _study(tmp_path)
    for setting, words in (
        ("data.folds=7", "7 folds but the dataset has 6 subjects"),
        ("data.folds=1", "not cross-validation"),
        ("data.stratify=site", "no column 'site'"),
    ):
        extra = [] if setting.startswith("data.folds") else ["data.folds=3"]
        done = _ablate("run", str(space), setting, *extra, cwd=tmp_path, timeout=120)
        lines = done.stderr.strip().splitlines() + done.stdout.strip().splitlines()
        assert done.returncode != 0, setting
        assert len(lines) == 1 and words in lines[0], (setting, done.stdout, done.stderr)
    assert not (tmp_path / "runs").exists()  # no store, no Ray, no trial
    assert not (tmp_path / "data" / "folds").exists()


@pytest.mark.slow
def test_three_folds_on_six_subjects(tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    space = _study(tmp_path, folds=3)
    done = _ablate("run", str(space), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    record = json.loads(fold_file(data, 3, 0, None).read_text())
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    runs = trial_runs(uri, "cv")
    assert len(runs) == 2 * 2 * 3 and set(runs["status"]) == {"FINISHED"}
    # every row uses the same frozen folds: the dataset's recorded hash on every run
    assert set(runs["tags.ablate.fold_hash"]) == {record["hash"]}
    subjects = set(read_manifest(data)["subject"])
    assert len(subjects) == SUBJECTS
    assert (runs["tags.ablate.fold"] == runs["params.fold"]).all()
    tested: dict[tuple[str, int], list[str]] = {}
    for _, run in load_results(uri, "cv").iterrows():
        folder = Path(run["artifact_uri"].removeprefix("file://"))
        splits = json.loads((folder / "splits.json").read_text())
        scored = set(pd.read_parquet(folder / "test_subjects.parquet")["subject"])
        fold = str(run["fold"])
        assert run["fold_hash"] == record["hash"]
        # the fold's subjects are tested, and none of them trained or validated
        assert set(splits["test"]) == scored == set(record["test"][fold])
        assert not set(splits["test"]) & (set(splits["train"]) | set(splits["val"]))
        assert set(splits["val"]) == set(record["val"][fold])
        tested.setdefault((run["row"], run["seed"]), []).extend(scored)
    # every subject is tested exactly once per (row, seed)
    assert len(tested) == 4
    assert all(sorted(s) == sorted(subjects) for s in tested.values())

    table = _ablate("table", "cv", "--format", "csv", cwd=tmp_path, timeout=300)
    assert table.returncode == 0, table.stderr[-3000:]
    lines = pd.read_csv(io.StringIO(table.stdout), comment="#").set_index("row")
    # n counts (seed, fold) trials: 2 seeds x 3 folds per row, paired on all 6
    assert lines.loc[["cpm", "cpm_irm"], "n"].tolist() == [6, 6]
    assert lines.loc["cpm_irm", "test"] == "6 pairs"
    shown = _ablate("table", "cv", cwd=tmp_path, timeout=300)
    assert "cross-validated over 3 subject folds" in shown.stdout, shown.stdout
    assert "Fold is a block" in shown.stdout and "fold is a block" in shown.stdout
    # the contrasts pool each seed's subjects across folds: 2 seeds x 6 subjects
    assert "2 seeds × 6 subj." in shown.stdout
    status = _ablate("status", "cv", cwd=tmp_path, timeout=300)
    assert status.returncode == 0 and all(f"fold {f}" in status.stdout for f in range(3))

    # export: the best row by its cross-validated score, as the ensemble of its 3 fold models
    exported = _ablate("export", "cv", cwd=tmp_path, timeout=600)
    assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-3000:]
    (line,) = [x for x in exported.stdout.splitlines() if x.startswith("Use it with: ")]
    command = line.removeprefix("Use it with: ablate ").replace(
        "INPUT OUTPUT", "scans/sub01_low.nii.gz pred.nii.gz"
    )
    predicted = _ablate(*command.split(), cwd=tmp_path, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert np.isfinite(nib.load(tmp_path / "pred.nii.gz").get_fdata()).all()
    best = lines.loc[["cpm", "cpm_irm"], "psnr_mean"].idxmax()
    version = MlflowClient(uri).get_model_version_by_alias("cv-best", "champion")
    assert version.tags["row"] == best and version.tags["folds"] == "0,1,2"
    assert version.tags["fold_hash"] == record["hash"]
    folder = tmp_path / "runs" / "exports" / "cv"
    assert json.loads((folder / "ablate-export.json").read_text())["folds"] == "0,1,2"
    # the ensemble's prediction is the mean of its folds' predictions
    checkpoints = sorted((folder / "artifacts").glob("*/checkpoint"))
    assert len(checkpoints) == 3
    stack = np.load(checkpoints[0] / "input_example.npy")
    ensemble = mlflow.pyfunc.load_model(str(folder)).predict(stack)
    singles = []
    for checkpoint in checkpoints:
        model = Reconstructor()
        model.load_context(SimpleNamespace(artifacts={CHECKPOINT: str(checkpoint)}))
        singles.append(model.predict(None, stack))
    np.testing.assert_allclose(ensemble, np.mean(singles, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(singles[0], singles[1])  # three models, not one
