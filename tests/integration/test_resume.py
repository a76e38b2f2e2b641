"""Kill the driver mid-grid, `ablate resume` it: every trial ends exactly once in MLflow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ablate.cli import standard_job
from ablate.launch.driver import launch_status, resume
from ablate.workspace import Workspace
from tests.conftest import tiny_experiment, trial_runs

pytestmark = pytest.mark.slow

ROWS = {"cpm": {"method": "coarse_to_fine"}, "cpm_irm": {"method": "coarse_to_fine", "irm": True}}


def _running_with_checkpoint(experiment: Path) -> list[str]:
    """Folders of the trials the driver's last saved state has running from a checkpoint."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return []
    try:
        saved = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # caught mid-write
        return []
    found = []
    for trial_json, metadata_json in saved["trial_data"]:
        trial, metadata = json.loads(trial_json), json.loads(metadata_json)
        if trial["status"] == "RUNNING" and (metadata["last_result"] or {}).get(
            "checkpoint_dir_name"
        ):
            found.append(trial["relative_logdir"])
    return found


def test_killed_driver_then_resume_completes_without_duplicates(ray_cluster, workdir) -> None:
    raw = tiny_experiment("resume-it", ROWS)
    raw["train"].update({"steps": 40, "eval_every": 15, "log_every": 5})  # progress between
    space = workdir.parent / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    ws = Workspace.create(workdir)
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ablate.cli",
            "run",
            str(space),
            "--address",
            ray_cluster.address,
            "--workdir",
            str(workdir),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # wait until the saved state names a checkpoint
            checkpointed = _running_with_checkpoint(Path(ws.storage) / "resume-it")
            if checkpointed and (workdir / "mlflow.db").exists():
                break
            assert driver.poll() is None, "the driver ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint appeared within 240 s")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = trial_runs(ws.tracking_uri, "resume-it")
    assert len(before) >= 1
    assert not (before["tags.ablate.status"] == "completed").all() or len(before) < 4
    # The driver deletes old checkpoints and saves its state every few seconds: killed in
    # between, its state names deleted checkpoints. Make that certain for one trial (the
    # others resume from theirs): it must restart, not fail on every restore.
    for folder in (Path(ws.storage) / "resume-it" / checkpointed[0]).glob("checkpoint_*"):
        shutil.rmtree(folder)

    result = resume(ws, "resume-it", job=standard_job())
    assert result.n_errors == 0
    after = trial_runs(ws.tracking_uri, "resume-it")
    assert len(after) == 4  # one run per trial, none duplicated by the restart
    assert sorted(after["tags.mlflow.runName"]) == ["cpm-s0", "cpm-s1", "cpm_irm-s0", "cpm_irm-s1"]
    assert (after["tags.ablate.status"] == "completed").all()
    assert set(before["run_id"]) <= set(after["run_id"])
    assert [s["status"] for s in launch_status(ws, "resume-it")] == ["completed"] * 4
