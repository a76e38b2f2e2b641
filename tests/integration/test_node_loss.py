"""Lose a Ray node mid-grid: the trial is retried from its checkpoint on the surviving node,
and MLflow still holds exactly one completed child run per trial."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ablate.cli import standard_job
from ablate.config import parse_experiment
from ablate.launch.driver import launch_grid
from ablate.launch.local_ray import LOOPBACK
from ablate.workspace import Workspace
from tests.conftest import tiny_experiment, trial_runs

pytestmark = pytest.mark.slow


def test_grid_survives_a_lost_node(ray_cluster, workdir: Path) -> None:
    raw = tiny_experiment("node-loss", {"cpm": {"method": "coarse_to_fine"}})
    raw["train"].update({"steps": 60, "eval_every": 10, "log_every": 10})
    raw["max_failures"] = 2
    ws = Workspace.create(workdir)
    killed = threading.Event()

    def kill_worker_after_first_checkpoint() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            if list((Path(ws.storage) / "node-loss").glob("*/checkpoint_*")):
                ray_cluster.remove_node(ray_cluster.worker_node, allow_graceful=False)
                killed.set()
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_worker_after_first_checkpoint, daemon=True)
    killer.start()
    try:
        result = launch_grid(parse_experiment(raw), ws, job=standard_job())
    finally:
        killer.join(timeout=5)
        if killed.is_set():  # give the session's cluster its second node back
            ray_cluster.worker_node = ray_cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
            ray_cluster.wait_for_nodes()
    assert killed.is_set(), "the worker node was never killed"
    assert result.n_errors == 0
    runs = trial_runs(ws.tracking_uri, "node-loss")
    assert sorted(runs["tags.mlflow.runName"]) == ["cpm-s0", "cpm-s1"]
    assert (runs["tags.ablate.status"] == "completed").all()
    assert runs["metrics.psnr"].notna().all()
