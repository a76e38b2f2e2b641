"""The simulator's physics and bookkeeping: adjoint projector, count levels, seeds, splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ablate.config import DataConfig
from ablate.data.format import read_provenance
from ablate.data.phantoms import PhantomSpec, make_phantom
from ablate.data.projector import GaussianPSF, ParallelBeamProjector
from ablate.data.simulate import Scanner, resolve_config, simulate_dataset
from ablate.data.store import build_dataset
from ablate.errors import UserError


@pytest.mark.parametrize("subsets", [1, 4])
def test_projector_is_adjoint(subsets: int) -> None:
    proj = ParallelBeamProjector(24, 2.0, angles=12, bins=37, bin_mm=1.7, subsets=subsets)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((3, 24, 24), generator=g, dtype=torch.float32)
    y = torch.rand((3, 12, 37), generator=g, dtype=torch.float32)
    lhs = (proj.forward(x).double() * y.double()).sum()
    rhs = (x.double() * proj.back(y).double()).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-4
    for s in range(subsets):
        ys = y[:, s::subsets]
        lhs = (proj.forward(x, s).double() * ys.double()).sum()
        rhs = (x.double() * proj.back(ys, s).double()).sum()
        assert abs(lhs - rhs) / abs(lhs) < 1e-4


def test_projector_line_integral_of_a_disc() -> None:
    """A uniform disc of radius r projects to 2*sqrt(r^2 - t^2) at every angle."""
    n, pix = 64, 1.0
    c = (torch.arange(n) - (n - 1) / 2) * pix
    disc = ((c[:, None] ** 2 + c[None, :] ** 2) <= 20.0**2).float()[None]
    proj = ParallelBeamProjector(n, pix, angles=8, bins=91, bin_mm=pix)
    centre = proj.forward(disc)[0, :, 45]
    assert torch.allclose(centre, torch.full_like(centre, 40.0), rtol=0.05)


def test_psf_is_self_adjoint_and_preserves_mass() -> None:
    psf = GaussianPSF(32, 2.0, 5.0)
    x = torch.zeros(1, 32, 32)
    x[0, 16, 16] = 1.0
    assert abs(float(psf(x).sum()) - 1.0) < 1e-4
    y = torch.rand(1, 32, 32)
    assert torch.allclose((psf(x) * y).sum(), (x * psf(y)).sum(), rtol=1e-5)


def test_poisson_counts_match_the_target_level() -> None:
    cfg = resolve_config("tiny", {"counts_per_slice": 5e5, "dose_reduction": 10})
    scanner = Scanner(cfg, torch.device("cpu"))
    sim = scanner.simulate_subject(seed=0, k=0)
    expected, counts = sim["expected_counts"], sim["counts"]
    assert abs(float(expected.mean()) / 5e5 - 1) < 1e-3  # calibration hits the target
    assert abs(float(counts.sum() / expected.sum()) - 1) < 0.01
    lows = sim["lpet"]  # low dose is reconstructed on the full-dose activity scale
    assert abs(float(lows.sum() / sim["spet"].sum()) - 1) < 0.05


def test_subject_is_reproducible_from_seed_and_index() -> None:
    spec_cfg = resolve_config("tiny")
    from ablate.data.simulate import _phantom_spec

    spec: PhantomSpec = _phantom_spec(spec_cfg)
    a = make_phantom(spec, seed=3, k=2, device=torch.device("cpu"))
    b = make_phantom(spec, seed=3, k=2, device=torch.device("cpu"))
    c = make_phantom(spec, seed=3, k=1, device=torch.device("cpu"))
    d = make_phantom(spec, seed=4, k=2, device=torch.device("cpu"))
    assert torch.equal(a.activity, b.activity)
    assert not torch.allclose(a.activity, c.activity)
    assert not torch.allclose(a.activity, d.activity)


def test_tiny_dataset_splits_by_subject_and_is_seeded(tmp_path) -> None:
    small = {"subjects": 4, "split": [2, 1, 1], "slices": 4}
    root = simulate_dataset("tiny", 5, small, tmp_path / "a")
    again = simulate_dataset(
        "tiny", 5, {**small, "subjects": 5, "split": [3, 1, 1]}, tmp_path / "b"
    )
    manifest = pd.read_parquet(root / "manifest.parquet")
    per_subject = manifest.groupby("subject")["split"].nunique()
    assert (per_subject == 1).all()
    sets = [set(manifest.loc[manifest.split == s, "subject"]) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    # subject k is the same whatever the number of subjects simulated
    for kind in ("spet", "lpet", "sinogram"):
        x = np.load(root / "subjects" / "sim0001" / f"{kind}.npy")
        y = np.load(again / "subjects" / "sim0001" / f"{kind}.npy")
        np.testing.assert_array_equal(x, y)
    prov = read_provenance(root)
    assert prov["seed"] == 5 and prov["preset"] == "tiny" and "MNI" in prov["attribution"][0]
    # full-dose images are on the subject's full-dose scale, low-dose on the same scale
    spet = np.load(root / "subjects" / "sim0000" / "spet.npy")
    assert 0.9 < np.percentile(spet, 99.9) < 1.1


def test_unknown_knob_and_bad_split_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown simulator knob 'countz'"):
        resolve_config("tiny", {"countz": 3})
    with pytest.raises(UserError, match="split"):
        resolve_config("tiny", {"split": [1, 1, 1]})
    with pytest.raises(UserError, match="unknown preset"):
        resolve_config("huge")


def test_build_dataset_is_cached_by_content(tmp_path) -> None:
    cfg = DataConfig(
        preset="tiny", seed=1, overrides={"subjects": 3, "split": [1, 1, 1], "slices": 2}
    )
    first = build_dataset(cfg, tmp_path)
    stamp = (first / "manifest.parquet").stat().st_mtime_ns
    assert build_dataset(cfg, tmp_path) == first
    assert (first / "manifest.parquet").stat().st_mtime_ns == stamp
    other = build_dataset(cfg.model_copy(update={"seed": 2}), tmp_path)
    assert other != first and other.name.startswith("tiny-")
    assert build_dataset(DataConfig(path=first), tmp_path / "unused") == first
    assert not list(tmp_path.glob(".tmp-*"))
