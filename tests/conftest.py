"""Shared fixtures: a real multi-node local Ray cluster, tiny experiment configs."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ablate.launch.local_ray import LOOPBACK, SINGLE_NODE_ENV
from tests.scale import TINY_MODEL

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Before anything imports Ray: the test clusters are single-machine ones, so Ray keeps their
# 127.0.0.1 (it would swap in the machine's address and listen on every interface).
os.environ.setdefault(SINGLE_NODE_ENV, "0")


#: Integration tests (the CLI and real Ray / MLflow, as a user runs them) are the slow lane:
#: ``pytest -m "not slow"`` runs the unit tests, less the few marked slow themselves.
INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One torch thread per test: tiny convolutions on a shared 2-core machine run several
    times faster without intra-op contention (trial workers use one thread too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A real Ray cluster of two nodes (head + worker raylet) on this machine, every server
    bound to 127.0.0.1 as the embedded Ray is (:mod:`ablate.launch.local_ray`)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "node_ip_address": LOOPBACK},
    )
    worker = cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.worker_node = worker
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def tiny_experiment(name: str, rows: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A raw experiment dict at test scale: tiny data, tiny nets, a few steps."""
    raw: dict[str, Any] = {
        "name": name,
        "rows": rows,
        "seeds": [0, 1],
        "data": {"preset": "tiny"},
        "model": copy.deepcopy(TINY_MODEL),
        "diffusion": {
            "train_steps": 100,
            "sr3": {"sample_steps": 4},
            "irm": {"sample_steps": 3},
            "ams_samples": 3,
        },
        "train": {"steps": 6, "batch_size": 2, "log_every": 2, "eval_slices": 4},
        "resources": {"cpu": 1},
    }
    raw.update(extra)
    return raw


def trial_runs(tracking_uri: str, experiment: str) -> Any:
    """The trial (child) runs of an MLflow experiment: :func:`mlflow_runs` of kind 'trial'."""
    return mlflow_runs(tracking_uri, experiment, kind="trial")


def mlflow_runs(tracking_uri: str, experiment: str, kind: str | None = None) -> Any:
    """The runs of an MLflow experiment (those tagged ``ablate.kind = kind``, if given), as a
    pandas frame with ``mlflow.search_runs``'s columns. Read through an explicit client:
    setting MLflow's global tracking URI here would leak into the CLI subprocesses of later
    tests (as an environment variable) and hide any command that resolves the wrong store."""
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    where = f"tags.`ablate.kind` = '{kind}'" if kind else ""
    runs = client.search_runs([experiment_id], filter_string=where, max_results=5000)
    return pd.DataFrame(
        [
            {
                "run_id": run.info.run_id,
                "status": run.info.status,
                **{f"tags.{k}": v for k, v in run.data.tags.items()},
                **{f"params.{k}": v for k, v in run.data.params.items()},
                **{f"metrics.{k}": v for k, v in run.data.metrics.items()},
            }
            for run in runs
        ]
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "runs"
