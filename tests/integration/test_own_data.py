"""README "Your own data", run verbatim: its shell commands on a folder of scans the test
writes (tests/own_data.py), each block as one bash script in a fresh folder."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ablate.data.format import read_manifest, read_provenance
from ablate.suv import SUV_UNITS
from ablate.workspace import default_tracking_uri
from tests.own_data import SUBJECTS, write_scans
from tests.paths import REPO

README = REPO / "README.md"


def section_blocks(title: str) -> list[str]:
    """The fenced ```bash blocks of one ``## title`` section of the README."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end > 0 else None]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_your_own_data_section_runs_verbatim(tmp_path: Path) -> None:
    blocks = section_blocks("Your own data")
    assert blocks, "README has no bash block under 'Your own data'"
    write_scans(tmp_path / "scans")
    for block in blocks:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"{block}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    # what the section promises: a dataset in SUV, a model, a prediction on the input's grid
    assert read_provenance(tmp_path / "my-data")["units"] == SUV_UNITS
    assert read_manifest(tmp_path / "my-data")["subject"].nunique() == SUBJECTS
    source = nib.load(tmp_path / "scans" / "sub05_low.nii.gz")
    pred = nib.load(tmp_path / "sub05_pred.nii.gz")
    assert pred.shape == source.shape
    np.testing.assert_allclose(pred.affine, source.affine, atol=1e-5)
    assert pred.header["descrip"].tobytes().rstrip(b"\0").decode() == (
        f"ablate cpm; units {SUV_UNITS}"
    )
    assert np.isfinite(pred.get_fdata()).all() and pred.get_fdata().max() > 0
    # the trial's MLflow dataset input says the units
    from mlflow import MlflowClient

    from tests.conftest import trial_runs

    uri = default_tracking_uri(tmp_path / "runs")
    (run_id,) = trial_runs(uri, "my-study")["run_id"]
    inputs = MlflowClient(uri).get_run(run_id).inputs.dataset_inputs
    assert [json.loads(i.dataset.profile)["units"] for i in inputs] == [SUV_UNITS]
