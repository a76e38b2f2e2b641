"""Schedules, the ancestral sampler, loss terms and the spectrum/NAS guidance helpers."""

from __future__ import annotations

import math

import pytest
import torch

from ablate.data.guidance import nas_indices, nas_stack, spectrum
from ablate.diffusion.losses import contrastive_likelihood, contrastive_reference_kl, noise_l1
from ablate.diffusion.samplers import ddpm_sample, predict_x0
from ablate.diffusion.schedules import NoiseSchedule

TRAIN = NoiseSchedule.linear(2000, 1e-6, 1e-2)


def test_linear_schedule_and_gammas() -> None:
    assert TRAIN.steps == 2000
    assert TRAIN.betas[0].item() == pytest.approx(1e-6)
    assert TRAIN.betas[-1].item() == pytest.approx(1e-2)
    g = TRAIN.gammas
    assert bool((g[1:] < g[:-1]).all())
    assert TRAIN.gammas_prev[0].item() == 1.0
    torch.testing.assert_close(TRAIN.gammas_prev[1:], g[:-1])
    expected = math.prod(1 - (1e-6 + i * (1e-2 - 1e-6) / 1999) for i in range(2000))
    assert g[-1].item() == pytest.approx(expected, rel=1e-9)
    assert 4e-5 < expected < 5e-5  # ~exp(-sum beta): x_T is almost pure noise
    with pytest.raises(ValueError, match="beta"):
        NoiseSchedule(torch.tensor([0.1, 1.0], dtype=torch.float64))


def test_continuous_noise_level_lies_in_its_step_interval() -> None:
    gen = torch.Generator().manual_seed(0)
    t, gamma = TRAIN.sample_noise_level(4096, generator=gen)
    assert t.min() >= 1 and t.max() <= 2000 and len(t.unique()) > 1000
    lo = TRAIN.gammas[t - 1].float()
    hi = TRAIN.gammas_prev[t - 1].float()
    assert bool(((gamma >= lo * (1 - 1e-6)) & (gamma <= hi * (1 + 1e-6))).all())
    # the level is continuous: it is not just the discrete gamma_t
    assert not torch.allclose(gamma, lo)


def test_respacing_keeps_a_subset_ending_at_gamma_T() -> None:
    short = TRAIN.respaced(100)
    assert short.steps == 100
    torch.testing.assert_close(short.gammas[-1], TRAIN.gammas[-1])
    kept = short.gammas
    assert bool((kept[1:] < kept[:-1]).all())
    assert all(bool(torch.isclose(TRAIN.gammas, k, rtol=1e-9).any()) for k in kept)
    torch.testing.assert_close(TRAIN.respaced(2000).betas, TRAIN.betas)
    with pytest.raises(ValueError, match="respace"):
        TRAIN.respaced(2001)


def test_predict_x0_inverts_forward_process() -> None:
    x0, eps = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    gamma = torch.tensor([0.9, 0.3, 0.01])
    g = gamma.reshape(-1, 1, 1, 1)
    x_t = g.sqrt() * x0 + (1 - g).sqrt() * eps
    torch.testing.assert_close(predict_x0(x_t, eps, gamma), x0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "schedule",
    [TRAIN.respaced(20), NoiseSchedule.linear(10, 1e-6, 0.5), NoiseSchedule.linear(1, 0.5, 0.5)],
    ids=["respaced", "irm10", "one-step"],
)
def test_ancestral_sampler_recovers_x0_with_an_oracle_denoiser(schedule: NoiseSchedule) -> None:
    """With the exact noise the last step's posterior mean is x0, whatever the schedule."""
    x0 = torch.rand(2, 1, 8, 8) * 0.5

    def oracle(x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        g = level.reshape(-1, 1, 1, 1) ** 2
        return (x_t - g.sqrt() * x0) / (1 - g).sqrt()

    out = ddpm_sample(oracle, (2, 1, 8, 8), schedule, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)


def test_sampler_shape_steps_and_reproducibility() -> None:
    calls: list[float] = []

    def zero(x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        calls.append(float(level[0]))
        assert level.shape == (x_t.shape[0],)
        return torch.zeros_like(x_t)

    sched = NoiseSchedule.linear(10, 1e-6, 0.5)
    a = ddpm_sample(zero, (3, 1, 4, 4), sched, generator=torch.Generator().manual_seed(5))
    assert a.shape == (3, 1, 4, 4) and len(calls) == 10
    assert calls == sorted(calls), "noise levels sqrt(gamma) rise as sampling proceeds"
    b = ddpm_sample(zero, (3, 1, 4, 4), sched, generator=torch.Generator().manual_seed(5))
    c = ddpm_sample(zero, (3, 1, 4, 4), sched, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_noise_l1() -> None:
    assert noise_l1(torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)).item() == 1.0


def _contrast_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(2, 1, 8, 8, generator=gen) * 0.8 + 0.1
    neg = torch.rand(2, 4, 8, 8, generator=gen) * 0.8 + 0.1
    return pos, neg


def test_likelihood_contrast_prefers_the_positive_and_stays_bounded() -> None:
    pos, neg = _contrast_data()
    at_pos = contrastive_likelihood(pos, pos, neg)
    at_neg = contrastive_likelihood(neg[:, :1], pos, neg)
    assert at_pos < at_neg
    huge = contrastive_likelihood(torch.full_like(pos, 1e4), pos, neg)
    assert torch.isfinite(huge) and huge >= -0.5
    est = pos.clone().requires_grad_(True)
    contrastive_likelihood(est, pos, neg).backward()
    assert torch.isfinite(est.grad).all()


def test_reference_kl_weights_and_numerics() -> None:
    pos, neg = _contrast_data()
    t0, t1 = torch.zeros(2), torch.ones(2)
    # at the positive its KL vanishes: only the negatives' term remains, weighted (1 + t/T)
    early = contrastive_reference_kl(pos, pos, neg, t0)
    late = contrastive_reference_kl(pos, pos, neg, t1)
    assert early < 0 and late == pytest.approx(2 * early.item(), rel=1e-5)
    assert contrastive_reference_kl(pos, pos, neg, t0) < contrastive_reference_kl(
        neg[:, :1], pos, neg, t0
    )
    for bad in (torch.zeros_like(pos), -torch.ones_like(pos), torch.full_like(pos, 1e6)):
        assert torch.isfinite(contrastive_reference_kl(bad, pos, neg, t1))


def test_spectrum_is_batched_scaled_and_centred() -> None:
    x = torch.rand(3, 2, 16, 16) + 0.1
    s = spectrum(x)
    assert s.shape == x.shape
    flat = s.flatten(-2)
    torch.testing.assert_close(flat.amin(-1), torch.zeros(3, 2))
    torch.testing.assert_close(flat.amax(-1), torch.ones(3, 2))
    assert s[..., 8, 8].eq(1).all(), "DC of a positive image sits at the centre after fftshift"
    torch.testing.assert_close(spectrum(x[1:2, 1:2]), s[1:2, 1:2])
    expected = 20 * torch.log(torch.fft.fftshift(torch.fft.fft2(x[0, 0])).abs() + 1e-8)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    torch.testing.assert_close(s[0, 0], expected, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(spectrum(torch.zeros(1, 1, 8, 8))).all()


def test_nas_stack_replaces_out_of_volume_neighbours_by_the_centre() -> None:
    assert nas_indices(0, 10) == [0, 0, 0, 1, 2]
    assert nas_indices(9, 10) == [7, 8, 9, 9, 9]
    assert nas_indices(5, 10) == [3, 4, 5, 6, 7]
    vol = torch.arange(4.0)[:, None, None].expand(4, 2, 2)
    assert nas_stack(vol, 1)[:, 0, 0].tolist() == [1.0, 0.0, 1.0, 2.0, 3.0]
    with pytest.raises(IndexError):
        nas_indices(10, 10)
