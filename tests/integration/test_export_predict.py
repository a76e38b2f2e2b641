"""Export and predict without Ray: a store holding what a finished launch leaves (two trained
``cpm`` trials of 2 steps, logged by the trial's own helpers), exported and used through the
CLI. The grid -> export -> predict -> serve path on a real cluster is in
``test_integration_grid.py``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow.pyfunc
import nibabel as nib
import numpy as np
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from ablate import tracking
from ablate.cli import app
from ablate.config import DataConfig, parse_experiment
from ablate.data.store import build_dataset
from ablate.export import EXPORT_FILE
from ablate.launches import LAUNCH_RECORD
from ablate.serving import pyfunc_arguments
from ablate.training.evaluation import evaluate_method, write_evaluation_artifacts
from ablate.training.seeding import seed_everything
from ablate.training.trial import TrainingRun
from ablate.trials import expand
from ablate.volumes import read_volume, slices_to_volume, volume_to_slices, write_like
from ablate.workspace import Workspace, default_tracking_uri
from tests.conftest import tiny_experiment
from trainables.ablation import LaunchContext

runner = CliRunner()


def _train(trial, data: Path, cache: Path, folder: Path) -> TrainingRun:
    seed_everything(trial.seed)
    run = TrainingRun.build(trial, data, cache)
    run.train_until(2)
    run.export_weights(folder)
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work directory with experiment 'exp-it' (launch 'mylaunch': cpm x seeds 0, 1)."""
    work = tmp_path_factory.mktemp("work")
    uri = default_tracking_uri(work)
    data = build_dataset(DataConfig(preset="tiny"), work / "datasets")
    exp = parse_experiment(tiny_experiment("exp-it", {"cpm": {"method": "coarse_to_fine"}}))
    eid = tracking.ensure_experiment(uri, "exp-it", Workspace.at(work).artifact_root)
    parent = tracking.start_parent(uri, eid, "launch", "mylaunch-1", {"dataset": str(data)})
    for trial in expand(exp):
        tags = {tracking.TAG_ROW: "cpm", tracking.TAG_SEED: str(trial.seed)}
        run_id, _ = tracking.find_or_start_child(uri, eid, parent, f"t{trial.seed}", "cpm", tags)
        with tempfile.TemporaryDirectory() as folder:
            run = _train(trial, data, work / "cache", Path(folder) / "checkpoint")
            test = evaluate_method(run.eval_method, run.data("test"), trial, samples=1)
            write_evaluation_artifacts(test, Path(folder))
            tracking.log_metrics(uri, run_id, test.summary)
            tracking.log_artifacts(uri, run_id, Path(folder))
        tracking.finish_run(uri, run_id, "completed")
    record = work / "ray_results" / "mylaunch" / LAUNCH_RECORD
    record.parent.mkdir(parents=True)
    context = LaunchContext(uri, eid, parent, str(data), str(work / "cache"), "launch")
    launch = {"kind": "launch", "context": context.to_dict(), "experiment": exp.model_dump()}
    record.write_text(json.dumps(launch, default=str))
    return work


@pytest.fixture(scope="module")
def sinogram_model(store: Path) -> Path:
    """A local pyfunc model of a sinogram row (DeepPET), saved without any store."""
    raw = tiny_experiment("sino", {"deeppet": {"method": "deeppet"}})
    raw["model"] = {**raw["model"], "deeppet": {"width": 4}}
    trial = expand(parse_experiment(raw))[0]
    data = build_dataset(DataConfig(preset="tiny"), store / "datasets")
    checkpoint = store / "sino-checkpoint"
    _train(trial, data, store / "cache", checkpoint)
    folder = store / "sino-model"
    mlflow.pyfunc.save_model(str(folder), **pyfunc_arguments(checkpoint))
    return folder


def _cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _error(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def _versions(store: Path, name: str) -> list[str]:
    client = MlflowClient(default_tracking_uri(store))
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))


@pytest.mark.slow
def test_out_never_deletes_user_files_and_reexport_replaces_only_its_own(
    store: Path, tmp_path: Path
) -> None:
    user = tmp_path / "user"
    (user / "sub").mkdir(parents=True)
    (user / "thesis.txt").write_text("years of work")
    (user / "sub" / "results.csv").write_text("a,b\n")
    message = _error("export", "exp-it", "--workdir", str(store), "--out", str(user))
    assert "not empty and is no ablate export" in message
    assert (user / "thesis.txt").read_text() == "years of work"
    assert (user / "sub" / "results.csv").is_file()
    assert _versions(store, "exp-it-best") == []  # refused before registering anything

    out = tmp_path / "export"
    first = _cli("export", "exp-it", "--workdir", str(store), "--out", str(out))
    assert "champion = version 1 (new" in first and "challenger = version 2 (new" in first
    record = json.loads((out / EXPORT_FILE).read_text())
    assert {"MLmodel", "model.pt", "config.yaml", "serving.json", "metrics.json"} <= {
        p.name for p in out.iterdir()
    }
    assert record["model_name"] == "exp-it-best" and record["version"] == "1"

    again = _cli("export", "exp-it", "--workdir", str(store), "--out", str(out))
    assert "version 1 (unchanged" in again and "version 2 (unchanged" in again
    assert _versions(store, "exp-it-best") == ["1", "2"]
    assert json.loads((out / EXPORT_FILE).read_text())["files"] == record["files"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left

    (out / "notes.txt").write_text("mine")
    message = _error("export", "exp-it", "--workdir", str(store), "--out", str(out))
    assert "notes.txt" in message and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    message = _error(
        "export", "exp-it", "--workdir", str(store), "--out", str(out), "--model-name", "other"
    )
    assert "holds the export of model 'exp-it-best'" in message
    missing = tmp_path / "no" / "such"
    message = _error("export", "exp-it", "--workdir", str(store), "--out", str(missing))
    assert "does not exist" in message and not (tmp_path / "no").exists()


@pytest.mark.slow
def test_launch_names_unknown_names_and_mistyped_workdir(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "by-launch"
    text = _cli("export", "mylaunch", "--workdir", str(store), "--out", str(out))
    assert "mylaunch-best@champion" in text
    assert json.loads((out / EXPORT_FILE).read_text())["experiment"] == "exp-it"
    for command in ("export", "status", "table", "dashboard"):
        message = _error(command, "nope", "--workdir", str(store))
        assert "no launch or experiment named 'nope'" in message
        assert "launches: mylaunch" in message and "experiments: exp-it" in message
    status = _cli("status", "exp-it", "--workdir", str(store))  # its latest launch
    assert "launch mylaunch" in status and status.count("completed") == 2
    table = _cli("table", "mylaunch", "--workdir", str(store), "--format", "md")
    assert "| cpm | 2/2 |" in table  # the launch's two trials
    typo = tmp_path / "runz"
    assert "no MLflow store" in _error("export", "exp-it", "--workdir", str(typo))
    for command in ("status", "resume"):
        assert "no launches under" in _error(command, "exp-it", "--workdir", str(typo))
    np.save(tmp_path / "in.npy", np.ones((2, 32, 32), np.float32))
    model = "models:/exp-it-best@champion"
    args = ("--workdir", str(typo), str(tmp_path / "in.npy"), str(tmp_path / "o.npy"))
    assert "no MLflow store" in _error("predict", "--model", model, *args)
    assert not typo.exists() and not (tmp_path / "o.npy").exists()


@pytest.mark.slow
def test_predict_bad_inputs_are_one_line_and_write_nothing(
    store: Path, sinogram_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _cli("export", "exp-it", "--workdir", str(store), "--out", str(tmp_path / "exp"))
    good = tmp_path / "lpet.npy"
    np.save(good, np.random.default_rng(0).uniform(0, 3, (3, 32, 32)).astype(np.float32))
    np.save(tmp_path / "4d.npy", np.zeros((2, 3, 32, 32), np.float32))
    np.save(tmp_path / "small.npy", np.zeros((3, 16, 16), np.float32))
    model = ["--model", "models:/exp-it-best@champion", "--workdir", str(store)]
    cases = {
        ("--model", "models:/nope@champion", "--workdir", str(store), str(good), "o.npy"): (
            "registered models: exp-it-best"
        ),
        (*model, str(tmp_path / "4d.npy"), "o.npy"): "expected a 2D image or 3D volume",
        (*model, str(tmp_path / "small.npy"), "o.npy"): "takes slices of 32 x 32",
        (*model, str(good), "o.nii.gz"): "no affine",
        (*model, str(good), "o.txt"): "must end in .nii, .nii.gz or .npy",
        (*model, str(good), "nowhere/o.npy"): "does not exist",
        ("--model", str(sinogram_model), str(good), "o.npy"): "is it an image?",
    }
    for args, expected in cases.items():
        assert expected in _error("predict", *args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4d.npy", "exp", "lpet.npy", "small.npy"]

    sino = np.random.default_rng(1).uniform(0, 50, (2, 48, 48)).astype(np.float32)
    np.save(tmp_path / "sino.npy", sino)
    _cli("predict", "--model", str(sinogram_model), str(tmp_path / "sino.npy"), "img.npy")
    assert np.load(tmp_path / "img.npy").shape == (2, 32, 32)


@pytest.mark.slow
def test_a_trial_from_before_serving_json_exports_from_its_dataset(
    store: Path, tmp_path: Path
) -> None:
    uri = default_tracking_uri(store)
    source = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("exp-it").experiment_id],
        "tags.`ablate.kind` = 'trial'",
    )[0]
    checkpoint = Path(
        MlflowClient(uri).download_artifacts(source.info.run_id, "checkpoint", str(tmp_path))
    )
    for name in ("serving.json", "input_example.npy"):
        (checkpoint / name).unlink()
    dataset = build_dataset(DataConfig(preset="tiny"), store / "datasets")
    eid = tracking.ensure_experiment(uri, "legacy-it", Workspace.at(store).artifact_root)
    parent = tracking.start_parent(uri, eid, "launch", "legacy-1", {"dataset": str(dataset)})
    run_id, _ = tracking.find_or_start_child(uri, eid, parent, "t", "cpm-s0", {})
    tracking.log_metrics(uri, run_id, {"psnr": 10.0})
    tracking.log_artifacts(uri, run_id, checkpoint, "checkpoint")
    tracking.finish_run(uri, run_id, "completed")
    _cli("export", "legacy-it", "--workdir", str(store), "--out", str(tmp_path / "legacy"))
    spec = json.loads((tmp_path / "legacy" / "serving.json").read_text())
    assert spec["input_shape"] == [32, 32] and spec["intensity"]["input"] == "lpet"


def _oblique_affine(zoom: float) -> np.ndarray:
    """A RAS affine rotated 12 deg about z and 7 deg about x (still closest to RAS)."""
    a, b = np.deg2rad(12), np.deg2rad(7)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx * zoom
    affine[:3, 3] = [-90.0, -110.0, -40.0]
    return affine


def _as_lps(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored with x and y reversed (an LPS voxel order)."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [data.shape[0] - 1, data.shape[1] - 1]
    return np.ascontiguousarray(data[::-1, ::-1]), affine @ flip


def test_reader_round_trip_keeps_grid_and_header(tmp_path: Path) -> None:
    ras = np.random.default_rng(2).uniform(0, 1, (20, 24, 5)).astype(np.float32)
    images = {"ras": (ras, _oblique_affine(2.0)), "lps": _as_lps(ras, _oblique_affine(2.0))}
    slices = {}
    for name, (data, affine) in images.items():
        image = nib.Nifti1Image((data * 1000).astype(np.int16), affine)
        image.header.set_slope_inter(0.001, 0)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=2)
        image.header.set_xyzt_units("mm", "sec")
        nib.save(image, tmp_path / f"{name}.nii.gz")
        volume = read_volume(tmp_path / f"{name}.nii.gz")
        slices[name] = volume.slices()
        data_ras, zooms = volume.ras()
        square = volume_to_slices(data_ras, zooms, 24)
        back = volume.from_ras(slices_to_volume(square, data_ras.shape, zooms))
        np.testing.assert_allclose(back, volume.array, atol=1e-6)
        write_like(back, volume, tmp_path / f"{name}-out.nii.gz")
        out = nib.load(tmp_path / f"{name}-out.nii.gz")
        np.testing.assert_allclose(out.affine, affine, atol=1e-5)
        assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 2)
        assert out.header.get_xyzt_units() == ("mm", "sec")
        assert out.get_data_dtype() == np.float32
        np.testing.assert_allclose(out.get_fdata(), volume.array, atol=1e-6)
    np.testing.assert_array_equal(slices["ras"], slices["lps"])  # same anatomy, same slices
    assert slices["ras"].shape == (5, 24, 20)


def test_evaluate_refuses_different_affines_naming_both(tmp_path: Path) -> None:
    data = np.random.default_rng(3).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, _oblique_affine(2.0)), tmp_path / "pred.nii")
    nib.save(nib.Nifti1Image(data, _oblique_affine(2.5)), tmp_path / "ref.nii")
    message = _error("evaluate", str(tmp_path / "pred.nii"), str(tmp_path / "ref.nii"))
    assert "pred.nii" in message and "ref.nii" in message and "different affines" in message


@pytest.mark.slow
def test_standalone_folder_is_a_pyfunc_with_the_training_intensity_rule(
    store: Path, tmp_path: Path
) -> None:
    """The model sees the input over the estimated full-dose scale: p99.9 / the median ratio
    of the training subjects; a given ``scale`` replaces the estimate."""
    _cli("export", "exp-it", "--workdir", str(store), "--out", str(tmp_path / "exp"))
    model = mlflow.pyfunc.load_model(str(tmp_path / "exp"))
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 32, 32)
    calibration = json.loads((tmp_path / "exp" / "serving.json").read_text())["intensity"]
    ratio = calibration["low_dose_per_full_dose"]
    assert ratio["subjects"] == 4 and 1.0 < ratio["min"] <= ratio["median"] <= ratio["max"]
    stack = np.random.default_rng(4).uniform(0, 2, (3, 32, 32)).astype(np.float32)
    estimated = model.predict(stack)
    assert estimated.shape == (3, 32, 32) and estimated.dtype == np.float32
    tol = 1e-5 * float(np.abs(estimated).max())  # float32 rounding of the scale
    np.testing.assert_allclose(model.predict(stack * 10), estimated * 10, atol=10 * tol)
    scale = float(np.percentile(stack, 99.9)) / ratio["median"]
    given = model.predict(stack, params={"scale": scale})
    np.testing.assert_allclose(given, estimated, atol=tol)
    other = model.predict(stack, params={"scale": 2 * scale})
    assert not np.allclose(other, estimated, rtol=1e-3)
