"""A real grid: 2 rows x 2 seeds on a 2-node local Ray cluster into a sqlite MLflow store,
then what a user does with it: export, predict, load the pyfunc and serve it.

Nothing here sets MLflow's global tracking URI: every command runs as a user would run it
(CLI subprocesses, no MLflow environment variable), so a command that resolves the wrong
store fails here.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from ablate.cli import standard_job
from ablate.config import DataConfig, parse_experiment
from ablate.data.store import build_dataset
from ablate.export import EXPORT_FILE
from ablate.launch.driver import launch_grid, launch_status
from ablate.predict import predict_volume
from ablate.volumes import evaluate_files, slices_to_ras
from ablate.workspace import Workspace
from tests.conftest import tiny_experiment, trial_runs

pytestmark = pytest.mark.slow

ROWS = {"cpm": {"method": "coarse_to_fine"}, "cpm_irm": {"method": "coarse_to_fine", "irm": True}}
MODEL = "models:/grid-it-best@champion"


@dataclass
class Grid:
    ws: Workspace
    n_trials: int
    n_errors: int


@pytest.fixture(scope="module")
def grid(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> Grid:
    """'grid-it' run once; its test split (2 subjects x 14 slices) scored on every slice."""
    raw = tiny_experiment("grid-it", ROWS)
    raw["train"]["eval_slices"] = 28
    ws = Workspace.create(tmp_path_factory.mktemp("user") / "runs")
    result = launch_grid(parse_experiment(raw), ws, job=standard_job())
    return Grid(ws, result.n_trials, result.n_errors)


def test_grid_logs_one_parent_and_a_child_per_trial(grid: Grid) -> None:
    assert grid.n_trials == 4 and grid.n_errors == 0
    ws = grid.ws
    client = MlflowClient(ws.tracking_uri)
    exp = client.get_experiment_by_name("grid-it")
    parents = client.search_runs([exp.experiment_id], "tags.`ablate.kind` = 'launch'")
    children = trial_runs(ws.tracking_uri, "grid-it")
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents[0].info.run_id
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


def _user_env() -> dict[str, str]:
    """The environment of a user's shell: no MLflow variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


def _run(args: list[str], cwd: Path, timeout: float = 180, **env: str) -> str:
    done = subprocess.run(
        args, cwd=cwd, env={**_user_env(), **env}, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _oblique_ras_affine(zoom: float) -> np.ndarray:
    a, b = np.deg2rad(12), np.deg2rad(7)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx * zoom
    affine[:3, 3] = [-100.0, -120.0, -40.0]
    return affine


def _save_nifti(path: Path, slices: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(slices_to_ras(slices).astype(np.float32), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(port: int, tracking_uri: str, cwd: Path, stack: np.ndarray) -> np.ndarray:
    """``mlflow models serve`` of the champion, one /invocations request, then stopped."""
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    env = {**_user_env(), "MLFLOW_TRACKING_URI": tracking_uri}
    server = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "mlflow models serve did not come up"
                time.sleep(0.5)
        body = json.dumps({"inputs": stack.tolist(), "params": {"seed": 0}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_export_predict_pyfunc_and_serve_as_a_user(grid: Grid) -> None:
    """Export and its printed predict line verbatim, from the folder holding ``runs``;
    predict on a test subject (an oblique RAS NIfTI) scores what the trial logged for it;
    the pyfunc in a fresh process and ``mlflow models serve`` give predict's reconstruction."""
    ws = grid.ws
    home = ws.workdir.parent
    out = _run(["ablate", "export", "grid-it", "--row", "cpm"], home)
    line = next(x for x in out.splitlines() if x.startswith("Use it with: "))
    assert line == f"Use it with: ablate predict --model {MODEL} INPUT OUTPUT"
    export = json.loads((ws.workdir / "exports" / "grid-it" / EXPORT_FILE).read_text())

    # the champion's test subject, as a user would hold it: physical units, oblique RAS NIfTI
    root = build_dataset(DataConfig(preset="tiny"), ws.datasets)
    manifest = pd.read_parquet(root / "manifest.parquet")
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    subject = test["subject"].iloc[0]
    scale = float(test["scale"].iloc[0])
    lpet = np.load(root / "subjects" / subject / "lpet.npy") * scale
    spet = np.load(root / "subjects" / subject / "spet.npy") * scale
    affine = _oblique_ras_affine(7.0)
    _save_nifti(home / "lpet.nii.gz", lpet, affine)
    _save_nifti(home / "spet.nii.gz", spet, affine)

    # --no-clamp: the raw output, as the trial's logged metrics and the pyfunc see it
    command = line.removeprefix("Use it with: ").replace("INPUT", "--no-clamp lpet.nii.gz")
    _run(shlex.split(command.replace("OUTPUT", "pred.nii.gz")), home)
    assert not (home / "mlflow.db").exists() and not (home / "mlruns").exists()
    pred = nib.load(home / "pred.nii.gz")
    np.testing.assert_allclose(pred.affine, affine, atol=1e-5)
    assert (int(pred.header["qform_code"]), int(pred.header["sform_code"])) == (1, 1)
    assert pred.header.get_xyzt_units() == ("mm", "sec") and pred.get_data_dtype() == np.float32
    assert pred.shape == nib.load(home / "lpet.nii.gz").shape

    logged = pd.read_parquet(
        download_artifacts(
            run_id=export["run_id"],
            artifact_path="test_metrics.parquet",
            tracking_uri=ws.tracking_uri,
        )
    )
    logged = logged[test.loc[logged["index"], "subject"].to_numpy() == subject]
    slices = test.loc[logged["index"], "slice"].to_numpy()
    scored = evaluate_files(home / "pred.nii.gz", home / "spet.nii.gz")["slices"]
    predicted = np.mean([scored[i]["psnr"] for i in slices])
    assert abs(predicted - logged["psnr"].mean()) < 0.1, (predicted, logged["psnr"].mean())
    # with the subject's true full-dose scale the pipeline is the training one, exactly
    exact_path = home / "exact.nii.gz"
    lpet_path = home / "lpet.nii.gz"
    predict_volume(MODEL, lpet_path, exact_path, ws.tracking_uri, scale=scale, clamp=False)
    exact = evaluate_files(exact_path, home / "spet.nii.gz")["slices"]
    assert abs(np.mean([exact[i]["psnr"] for i in slices]) - logged["psnr"].mean()) < 1e-3

    # the same stack through ablate predict (.npy), the pyfunc in a fresh process, the server
    stack = lpet.astype(np.float32)
    np.save(home / "stack.npy", stack)
    _run(shlex.split(command.replace("lpet.nii.gz", "stack.npy").replace("OUTPUT", "p.npy")), home)
    expected = np.load(home / "p.npy")
    script = (
        "import sys, mlflow, numpy as np\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        f"model = mlflow.pyfunc.load_model('{MODEL}')\n"
        "np.save(sys.argv[3], model.predict(np.load(sys.argv[2])))\n"
        "training = ('ray', 'ablate.training.trial', 'trainables.ablation')\n"
        "assert not [m for m in training if m in sys.modules]\n"
    )
    _run([sys.executable, "-c", script, ws.tracking_uri, "stack.npy", "pyfunc.npy"], home)
    tolerance = 1e-5 * float(np.abs(expected).max())
    np.testing.assert_allclose(np.load(home / "pyfunc.npy"), expected, atol=tolerance)
    served = _serve(_free_port(), ws.tracking_uri, home, stack)
    np.testing.assert_allclose(served, expected, atol=tolerance)
    assert not (home / "mlflow.db").exists()


def test_the_test_cluster_listens_on_loopback_only(ray_cluster) -> None:
    """Every node of the test cluster is 127.0.0.1, as the embedded Ray is: nothing the suite
    starts listens on the machine's network."""
    import ray

    assert {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]} == {"127.0.0.1"}
    assert ray_cluster.address.startswith("127.0.0.1:")


def test_nan_trial_fails_with_its_reason_and_the_grid_goes_on(ray_cluster, workdir: Path) -> None:
    raw = tiny_experiment("nan-it", {"cpm": {"method": "coarse_to_fine"}})
    raw.update({"seeds": [0], "grid": {"train.lr": [1e-3, 1e30]}, "max_failures": 0})
    ws = Workspace.create(workdir)
    result = launch_grid(parse_experiment(raw), ws, job=standard_job())
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
