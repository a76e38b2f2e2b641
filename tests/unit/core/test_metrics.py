"""Metrics agree with scikit-image (standard convention) and with a direct numpy transcription
of paper 003's evaluation (paper convention), per image in a batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from ablate import metrics


def _pair(batch: int = 3, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # A smooth blob plus background so both conventions have foreground and background.
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    blob = torch.exp(-(xx**2 + yy**2) / 0.3)
    scale = torch.rand(batch, 1, 1, 1, generator=g) * 0.8 + 0.2
    ref = (blob * scale + 0.02 * torch.rand(batch, 1, size, size, generator=g)).float()
    pred = ref + 0.05 * torch.randn(batch, 1, size, size, generator=g)
    return pred, ref


def test_standard_metrics_match_skimage() -> None:
    pred, ref = _pair()
    out = metrics.image_metrics(pred, ref)
    for i in range(pred.shape[0]):
        x = pred[i, 0].double().numpy()
        y = ref[i, 0].double().numpy()
        dr = y.max() - y.min()
        assert out["psnr"][i].item() == pytest.approx(
            peak_signal_noise_ratio(y, x, data_range=dr), abs=1e-3
        )
        expected_ssim = structural_similarity(
            y, x, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=dr
        )
        assert out["ssim"][i].item() == pytest.approx(expected_ssim, abs=1e-3)
        expected_nrmse = normalized_root_mse(y, x, normalization="euclidean")
        assert out["nrmse"][i].item() == pytest.approx(expected_nrmse, rel=1e-6)
        assert out["nmse"][i].item() == pytest.approx(expected_nrmse**2, rel=1e-6)


def test_paper_convention_matches_the_reference_evaluation() -> None:
    """A numpy transcription of the evaluation steps, one slice at a time."""
    pred, ref = _pair(seed=1)
    out = metrics.paper_metrics(pred, ref)
    for i in range(pred.shape[0]):
        x = pred[i, 0].double().numpy().copy()
        y = ref[i, 0].double().numpy().copy()
        background = y <= 0.05
        x[background] = 0
        y[background] = 0
        fg = np.nonzero(y)
        xf, yf = x[fg], y[fg]
        dr = max(xf.max(), yf.max()) - min(xf.min(), yf.min())
        assert out["paper_psnr"][i].item() == pytest.approx(
            peak_signal_noise_ratio(yf, xf, data_range=dr), abs=1e-3
        )
        assert out["paper_ssim"][i].item() == pytest.approx(
            structural_similarity(x, y, data_range=dr), abs=1e-3
        )
        # The evaluation passes the prediction as skimage's "true" image: normalised by it.
        assert out["paper_nmse"][i].item() == pytest.approx(
            normalized_root_mse(xf, yf) ** 2, rel=1e-6
        )


def test_paper_convention_differs_from_standard() -> None:
    pred, ref = _pair(seed=2)
    out = metrics.image_metrics(pred, ref)
    assert not torch.allclose(out["psnr"], out["paper_psnr"])
    assert not torch.allclose(out["nmse"], out["paper_nmse"])


def test_identical_images() -> None:
    _, ref = _pair()
    out = metrics.image_metrics(ref, ref)
    assert torch.isinf(out["psnr"]).all() and (out["psnr"] > 0).all()
    assert torch.isinf(out["paper_psnr"]).all()
    assert torch.allclose(out["ssim"], torch.ones(3, dtype=torch.float64))
    assert torch.allclose(out["paper_ssim"], torch.ones(3, dtype=torch.float64))
    assert (out["nmse"] == 0).all() and (out["paper_nmse"] == 0).all()


def test_constant_reference_is_undefined_not_a_crash() -> None:
    ref = torch.full((2, 1, 16, 16), 0.5)
    pred = ref + 0.01 * torch.randn(2, 1, 16, 16)
    out = metrics.image_metrics(pred, ref)
    assert torch.isnan(out["psnr"]).all() and torch.isnan(out["ssim"]).all()
    assert torch.isfinite(out["nmse"]).all()
    # All pixels are foreground but the joint range of pred and ref is > 0: defined.
    assert torch.isfinite(out["paper_psnr"]).all()


def test_empty_foreground_gives_nan_in_paper_convention() -> None:
    ref = torch.full((1, 1, 16, 16), 0.01)
    ref[0, 0, 0, 0] = 0.04
    out = metrics.paper_metrics(ref + 0.1, ref)
    assert all(math.isnan(v.item()) for v in out.values())


def test_metrics_are_per_image_and_order_independent() -> None:
    pred, ref = _pair(batch=4)
    full = metrics.image_metrics(pred, ref)
    flipped = metrics.image_metrics(pred.flip(0), ref.flip(0))
    single = metrics.image_metrics(pred[2:3], ref[2:3])
    for key, value in full.items():
        assert value.shape == (4,)
        assert torch.allclose(value, flipped[key].flip(0), equal_nan=True)
        assert torch.allclose(value[2:3], single[key], equal_nan=True)


def test_shape_checks() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 17))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        metrics.ssim(torch.zeros(16, 16), torch.zeros(16, 16))
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_sampling_sd() -> None:
    g = torch.Generator().manual_seed(0)
    samples = 0.5 + 0.01 * torch.randn(64, 2, 1, 8, 8, generator=g)
    sd = metrics.sampling_sd(samples)
    assert sd == pytest.approx(np.std(samples.numpy(), axis=0).mean(), rel=1e-5)
    assert sd == pytest.approx(0.01, rel=0.05)
    assert metrics.sampling_sd(torch.ones(3, 2, 1, 4, 4)) == 0.0
    with pytest.raises(ValueError, match="K = 2"):
        metrics.sampling_sd(torch.ones(1, 2, 1, 4, 4))


def _volume_with_a_dim_slice(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """10 slices of brain-like signal and one near-empty end slice (a 3x3 spot of 0.046, the
    reference maximum of the slice in issue 24), each predicted with the same additive noise."""
    g = torch.Generator().manual_seed(seed)
    _, bright = _pair(batch=10, seed=seed)
    dim = torch.zeros(1, 1, 32, 32)
    dim[..., 14:17, 14:17] = 0.046
    ref = torch.cat([bright, dim])
    return ref + 0.02 * torch.randn(ref.shape, generator=g), ref


def test_volume_metrics_are_the_metrics_of_the_stacked_volume() -> None:
    pred, ref = _volume_with_a_dim_slice()
    out = metrics.volume_metrics(pred, ref)
    x, y = pred[:, 0].double().numpy(), ref[:, 0].double().numpy()
    dr = y.max() - y.min()
    assert out["psnr"] == pytest.approx(peak_signal_noise_ratio(y, x, data_range=dr), abs=1e-6)
    assert out["nmse"] == pytest.approx(((x - y) ** 2).sum() / (y**2).sum(), rel=1e-9)
    assert out["nrmse"] == pytest.approx(normalized_root_mse(y, x), rel=1e-9)
    per_slice_ssim = [  # 2D windows, the volume's data range, averaged over the slices
        structural_similarity(
            y[i], x[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=dr
        )
        for i in range(len(y))
    ]
    assert out["ssim"] == pytest.approx(np.mean(per_slice_ssim), abs=1e-6)


def test_a_dim_slice_no_longer_decides_a_splits_nmse() -> None:
    """Issue 24: one slice with reference maximum 0.046 had NMSE 612 and made CPM's NMSE
    38.28. The split's NMSE is now its subjects' volume NMSE: the dim slice is a few voxels
    among many, and the value stays that of the bright slices."""
    from ablate.training.evaluation import score

    pred, ref = _volume_with_a_dim_slice()
    per_slice = metrics.image_metrics(pred, ref)["nmse"]
    bright = metrics.volume_metrics(pred[:10], ref[:10])["nmse"]
    summary, per_subject, _ = score(pred, ref, ["sub01"] * len(ref))
    assert per_slice[-1] > 100 * per_slice[:10].max()  # the per-slice mean is ill-conditioned
    assert per_slice.mean() > 10 * bright
    # the dim slice adds its share of the error (1 slice in 11) and almost no signal
    assert summary["nmse"] == pytest.approx(bright * 11 / 10, rel=0.05)
    assert per_subject["n_slices"].tolist() == [11]


def test_split_metrics_are_the_mean_over_subjects_of_their_volumes() -> None:
    from ablate.training.evaluation import score

    pred, ref = _pair(batch=5, seed=4)
    subjects = ["a", "a", "b", "b", "b"]
    summary, per_subject, _ = score(pred, ref, subjects)
    a, b = metrics.volume_metrics(pred[:2], ref[:2]), metrics.volume_metrics(pred[2:], ref[2:])
    assert per_subject["subject"].tolist() == ["a", "b"]
    for name in metrics.STANDARD:
        assert summary[name] == pytest.approx((a[name] + b[name]) / 2)
    # paper convention: per slice, as before, over the slices where it is defined
    assert summary["paper_psnr"] == pytest.approx(
        metrics.paper_metrics(pred, ref)["paper_psnr"].mean().item()
    )


def test_evaluation_slices_are_shared_out_evenly_per_subject() -> None:
    from ablate.training.evaluation import _shares

    assert _shares([20, 20], 16) == [8, 8]
    assert _shares([3, 20, 20], 16) == [3, 7, 6]  # what a short subject cannot take moves on
    assert _shares([5, 5], 40) == [5, 5]  # a budget above the split: whole volumes
    assert _shares([10] * 5, 3) == [1, 0, 1, 0, 1]  # fewer slices than subjects: spread out
