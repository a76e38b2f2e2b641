"""A real grid: 2 rows x 2 seeds on a 2-node local Ray cluster into a sqlite MLflow store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.artifacts import download_artifacts

from ablate.config import parse_experiment
from ablate.experiment import Workspace, launch_grid, launch_status
from tests.conftest import tiny_experiment, trial_runs

pytestmark = pytest.mark.slow

ROWS = {"cpm": {"method": "coarse_to_fine"}, "cpm_irm": {"method": "coarse_to_fine", "irm": True}}


def test_grid_logs_one_parent_and_a_child_per_trial(ray_cluster, workdir: Path) -> None:
    exp = parse_experiment(tiny_experiment("grid-it", ROWS))
    ws = Workspace.create(workdir)
    result = launch_grid(exp, ws)
    assert result.n_trials == 4 and result.n_errors == 0

    mlflow.set_tracking_uri(ws.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["grid-it"], output_format="pandas")
    parents = runs[runs["tags.ablate.kind"] == "launch"]
    children = runs[runs["tags.ablate.kind"] == "trial"]
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents["run_id"].iloc[0]
    assert set(children["tags.mlflow.parentRunId"]) == {parent_id}
    assert sorted(children["tags.mlflow.runName"]) == [
        "cpm-s0",
        "cpm-s1",
        "cpm_irm-s0",
        "cpm_irm-s1",
    ]
    for metric in ("psnr", "ssim", "nmse", "nrmse", "paper_psnr", "params_m", "gmacs", "train_s"):
        assert children[f"metrics.{metric}"].notna().all(), metric
    irm = children[children["params.row"] == "cpm_irm"]
    cpm = children[children["params.row"] == "cpm"]
    assert irm["metrics.sd"].notna().all() and irm["metrics.ams_psnr"].notna().all()
    assert cpm["metrics.sd"].isna().all()
    assert (children["params.loss.k"] == "5e-05").all()
    assert set(children["params.seed"]) == {"0", "1"}

    client = mlflow.MlflowClient(ws.tracking_uri)
    for run_id in children["run_id"]:
        history = client.get_metric_history(run_id, "loss")
        assert [m.step for m in history] == [2, 4, 6]
        local = download_artifacts(
            run_id=run_id, artifact_path="checkpoint/model.pt", tracking_uri=ws.tracking_uri
        )
        state = torch.load(local, weights_only=True)
        assert state["step"] == 6 and state["model"]

    status = launch_status(ws, "grid-it")
    assert [s["status"] for s in status] == ["completed"] * 4

    # export: best -> champion, runner-up -> challenger, standalone folder usable by predict
    from ablate.export import export_best, predict_volume

    exported = export_best(ws.tracking_uri, "grid-it", "psnr", "max", None, workdir / "export")
    assert set(exported.versions) == {"champion", "challenger"}
    best_psnr = children["metrics.psnr"].max()
    assert exported.value == pytest.approx(best_psnr)
    assert {"model.pt", "config.yaml", "metrics.json", "provenance.json"} <= {
        p.name for p in exported.folder.iterdir()
    }
    alias = client.get_model_version_by_alias(exported.model_name, "champion")
    assert alias.run_id == exported.run_ids["champion"]

    import numpy as np

    volume = np.random.default_rng(0).uniform(0, 5, size=(3, 32, 32)).astype(np.float32)
    np.save(workdir / "lpet.npy", volume)
    info = predict_volume(
        f"models:/{exported.model_name}@champion",
        workdir / "lpet.npy",
        workdir / "pred.npy",
        ws.tracking_uri,
        samples=2,
    )
    pred = np.load(workdir / "pred.npy")
    assert pred.shape == volume.shape and np.isfinite(pred).all() and info["slices"] == 3


def test_nan_trial_fails_with_its_reason_and_the_grid_goes_on(ray_cluster, workdir: Path) -> None:
    raw = tiny_experiment("nan-it", {"cpm": {"method": "coarse_to_fine"}})
    raw.update({"seeds": [0], "grid": {"train.lr": [1e-3, 1e30]}, "max_failures": 0})
    ws = Workspace.create(workdir)
    result = launch_grid(parse_experiment(raw), ws)
    assert result.n_trials == 2 and result.n_errors == 1

    runs = trial_runs(ws.tracking_uri, "nan-it")
    assert len(runs) == 2
    by_lr = {
        float(lr): run
        for lr, (_, run) in zip(runs["params.train.lr"], runs.iterrows(), strict=True)
    }
    failed, fine = by_lr[1e30], by_lr[1e-3]
    assert failed["tags.ablate.status"] == "failed" and failed["status"] == "FAILED"
    assert "row 'cpm' seed 0: loss term" in failed["tags.ablate.error"]
    assert fine["tags.ablate.status"] == "completed" and fine["metrics.psnr"] > 0
