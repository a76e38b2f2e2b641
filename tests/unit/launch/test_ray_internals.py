"""The Ray internals that :mod:`ablate.launch.ray_internals` writes, checked on the installed Ray.

These run on a stub trial (no cluster): the checkpoint bookkeeping is driver-side Python.
A failure here after a Ray upgrade means the adapter must be rewritten for the new Ray,
not that the test needs loosening.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import ray
from ray.train import Checkpoint
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.tune import CheckpointConfig
from ray.tune.experiment import Trial
from ray.tune.trainable.metadata import _TrainingRunMetadata

from ablate.launch.callbacks import CheckpointGuard
from ablate.launch.ray_internals import keep_checkpoints

RAY_CHECKED = "2.60.0"


def _trial_with_checkpoints(folder: Path, n: int) -> Trial:
    """A pending trial whose driver registered ``n`` checkpoints and kept the last two."""
    trial = Trial("__fake", stub=True, checkpoint_config=CheckpointConfig(num_to_keep=2))
    for i in range(n):
        path = folder / f"checkpoint_{i:06d}"
        path.mkdir()
        result = _TrainingResult(checkpoint=Checkpoint(str(path)), metrics={"step": i})
        trial.run_metadata.checkpoint_manager.register_checkpoint(result)
    return trial


def _exists(checkpoint: Checkpoint) -> bool:
    return Path(checkpoint.path).is_dir()


def test_ray_is_the_version_the_adapter_was_checked_against() -> None:
    assert ray.__version__ == RAY_CHECKED, (
        f"Ray {ray.__version__} is installed, ablate/launch/ray_internals.py was written against "
        f"{RAY_CHECKED}: re-check the checkpoint manager's private attributes, then update "
        "RAY_CHECKED"
    )


def test_the_private_attributes_exist_with_their_types(tmp_path: Path) -> None:
    trial = _trial_with_checkpoints(tmp_path, 3)
    assert isinstance(trial.run_metadata, _TrainingRunMetadata)
    manager = trial.run_metadata.checkpoint_manager
    assert isinstance(manager, _CheckpointManager)
    assert isinstance(manager._checkpoint_results, list)
    assert all(isinstance(r, _TrainingResult) for r in manager._checkpoint_results)
    assert [Path(r.checkpoint.path).name for r in manager._checkpoint_results] == [
        "checkpoint_000001",
        "checkpoint_000002",
    ]
    assert manager._latest_checkpoint_result is manager._checkpoint_results[-1]
    assert trial.checkpoint is manager._latest_checkpoint_result.checkpoint
    assert callable(trial.run_metadata.invalidate_cache)


def test_keep_checkpoints_forgets_the_missing_and_the_saved_state_says_so(
    tmp_path: Path,
) -> None:
    trial = _trial_with_checkpoints(tmp_path, 3)
    trial.run_metadata.get_json_state()  # cached, as after the driver's last save
    shutil.rmtree(tmp_path / "checkpoint_000002")

    survivor = keep_checkpoints(trial, _exists)

    assert survivor is not None and Path(survivor.path).name == "checkpoint_000001"
    assert trial.checkpoint is survivor  # what Ray restores the trial from
    saved = _TrainingRunMetadata.from_json_state(trial.run_metadata.get_json_state())
    assert Path(saved.checkpoint_manager.latest_checkpoint_result.checkpoint.path) == Path(
        survivor.path
    )
    assert "checkpoint_000002" not in trial.run_metadata.get_json_state()

    shutil.rmtree(tmp_path / "checkpoint_000001")
    assert keep_checkpoints(trial, _exists) is None
    assert trial.checkpoint is None  # restarts from step 0


def test_guard_repoints_a_pending_trial_whose_checkpoint_is_gone(tmp_path: Path) -> None:
    (tmp_path / "intact").mkdir()
    (tmp_path / "damaged").mkdir()
    intact = _trial_with_checkpoints(tmp_path / "intact", 3)
    damaged = _trial_with_checkpoints(tmp_path / "damaged", 3)
    shutil.rmtree(tmp_path / "damaged" / "checkpoint_000002")
    CheckpointGuard().on_step_begin(0, [intact, damaged])
    assert Path(intact.checkpoint.path).name == "checkpoint_000002"
    assert Path(damaged.checkpoint.path).name == "checkpoint_000001"


def test_gcs_token_error_reaches_rays_token_loader(tmp_path: Path) -> None:
    """The token probe's private imports exist and a missing token file is Ray's
    AuthenticationError before any network call (in a fresh process: Ray caches the token)."""
    probe = (
        "from ablate.launch.ray_internals import gcs_token_error\n"
        "error = gcs_token_error('127.0.0.1:1', 1.0)\n"
        "print(type(error).__name__, error)"
    )
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}
    env.pop("RAY_AUTH_TOKEN", None)
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("AuthenticationError"), out.stdout + out.stderr[-2000:]
    assert str(tmp_path / "none") in out.stdout
