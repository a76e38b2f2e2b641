"""`ablate evaluate` and `ablate count` through the real CLI (typer's CliRunner)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ablate import metrics
from ablate.cli import app

runner = CliRunner()


def _volume(shape: tuple[int, ...] = (3, 24, 24), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, shape[-2]), np.linspace(-1, 1, shape[-1]))
    blob = np.exp(-(xx**2 + yy**2) / 0.3)
    return blob * rng.uniform(0.3, 1.0, size=shape[:-2] + (1, 1))


def _save_nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), path)
    return path


def _run_json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_evaluate_npy_volume_per_slice_and_mean(tmp_path: Path) -> None:
    ref = _volume()
    pred = ref + np.random.default_rng(1).normal(0, 0.03, ref.shape)
    np.save(tmp_path / "pred.npy", pred)
    np.save(tmp_path / "ref.npy", ref)
    out = _run_json("evaluate", str(tmp_path / "pred.npy"), str(tmp_path / "ref.npy"))
    assert out["convention"] == "standard" and len(out["slices"]) == 3
    expected = metrics.image_metrics(
        torch.from_numpy(pred).unsqueeze(1), torch.from_numpy(ref).unsqueeze(1)
    )
    for key in ("psnr", "ssim", "nmse", "nrmse"):
        per_slice = [s[key] for s in out["slices"]]
        assert per_slice == pytest.approx(expected[key].tolist(), rel=1e-9)
        assert out["mean"][key] == pytest.approx(float(np.mean(per_slice)), rel=1e-9)


def test_evaluate_nifti_slices_along_last_axis(tmp_path: Path) -> None:
    ref = np.moveaxis(_volume((4, 20, 20)), 0, -1)  # (x, y, z) with 4 axial slices
    pred = ref * 0.9
    _save_nifti(tmp_path / "pred.nii.gz", pred)
    _save_nifti(tmp_path / "ref.nii", ref)
    out = _run_json(
        "evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "ref.nii"),
        "--convention", "paper",
    )  # fmt: skip
    assert out["convention"] == "paper" and len(out["slices"]) == 4
    assert set(out["mean"]) == {"psnr", "ssim", "nmse"}
    # pred = 0.9 ref, normalised by the prediction: ||0.1 y||^2 / ||0.9 y||^2 on the mask.
    assert out["mean"]["nmse"] == pytest.approx((0.1 / 0.9) ** 2, rel=1e-4)


def test_evaluate_2d_identical_reports_inf_psnr_as_string(tmp_path: Path) -> None:
    image = _volume((16, 16))
    np.save(tmp_path / "a.npy", image)
    out = _run_json("evaluate", str(tmp_path / "a.npy"), str(tmp_path / "a.npy"))
    assert out["slices"][0]["psnr"] == "inf" and out["slices"][0]["ssim"] == pytest.approx(1.0)


def test_evaluate_table_output(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", _volume())
    np.save(tmp_path / "b.npy", _volume(seed=3))
    result = runner.invoke(app, ["evaluate", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")])
    assert result.exit_code == 0, result.output
    assert "mean" in result.stdout and "ssim" in result.stdout


def _error(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message.startswith("error:") and "Traceback" not in message
    return message


def test_evaluate_bad_inputs_give_one_line_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.npy"
    np.save(good, _volume())
    np.save(tmp_path / "small.npy", _volume((3, 20, 20)))
    with_nan = _volume()
    with_nan[1, 5, 5] = np.nan
    np.save(tmp_path / "nan.npy", with_nan)
    (tmp_path / "corrupt.npy").write_bytes(b"not a numpy file")
    (tmp_path / "corrupt.nii.gz").write_bytes(gzip.compress(b"not a nifti header"))
    (tmp_path / "image.png").write_bytes(b"")
    np.save(tmp_path / "bright.npy", _volume() * 1000)

    cases = {
        "missing.npy": "not found",
        "small.npy": "differs from",
        "nan.npy": "NaN/inf",
        "corrupt.npy": "cannot read it as npy",
        "corrupt.nii.gz": "cannot read it as nifti",
        "image.png": "unsupported file type",
    }
    for name, expected in cases.items():
        message = _error("evaluate", str(tmp_path / name), str(good))
        assert expected in message and name in message
    message = _error("evaluate", str(good), str(good), "--convention", "paper2")
    assert "unknown convention" in message
    message = _error("evaluate", str(good), str(tmp_path / "bright.npy"), "--convention", "paper")
    assert "[0, 1] scale" in message


def test_count_json_matches_the_paper_for_cheap_rows() -> None:
    """CPM and CPM + 10 IRM steps at 128x128, counted on the meta device."""
    out = _run_json("count", "cpm", "cpm_irm")
    assert [r["row"] for r in out] == ["cpm", "cpm_irm"]
    for r in out:
        assert {"row", "params_m", "gmacs", "paper_params_m", "paper_gflops"} <= set(r)
        assert r["params_m"] == pytest.approx(r["paper_params_m"], rel=0.01)
        assert r["gmacs"] == pytest.approx(r["paper_gflops"], rel=0.01)
        assert r["params_total_m"] > r["params_m"]  # GroupNorm etc. only in the total
        assert r["params_rel_diff"] == pytest.approx(r["params_m"] / r["paper_params_m"] - 1)
    # The IRM's 10 sampling steps dominate the cost: each step is a full IRM forward.
    assert out[1]["gmacs"] > 3 * out[0]["gmacs"]


def test_count_table_and_unknown_row() -> None:
    result = runner.invoke(app, ["count", "cpm"])
    assert result.exit_code == 0, result.output
    assert "cpm" in result.stdout and "24.7" in result.stdout
    message = _error("count", "cpm", "no_such_row")
    assert "no_such_row" in message and "known rows are" in message and "cpm_irm" in message


def test_count_pmdm_includes_its_frozen_estimator_in_gmacs_only() -> None:
    """PMDM = Palette's DDPM + one DeepPET pass: its GMACs exceed Palette's by DeepPET's,
    while its (trainable) parameters equal Palette's."""
    from ablate.planning.complexity import count_rows

    rows = {r["row"]: r for r in count_rows(["deeppet", "palette", "pmdm"])}
    extra = rows["pmdm"]["gmacs"] - rows["palette"]["gmacs"]
    assert extra == pytest.approx(rows["deeppet"]["gmacs"], rel=1e-6)
    assert rows["pmdm"]["params_m"] == pytest.approx(rows["palette"]["params_m"])
