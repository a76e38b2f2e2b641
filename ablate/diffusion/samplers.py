"""Reverse-process samplers for epsilon-predicting denoisers conditioned on ``sqrt(gamma)``.

One ancestral (DDPM) sampler serves every row: the step count and spacing live entirely in
the :class:`~ablate.diffusion.schedules.NoiseSchedule` passed in, so "full T-step DDPM",
"respaced 100-step SR3" and "WaveGrad-style 10-step IRM schedule" are the same loop with
different schedules.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ablate.diffusion.schedules import NoiseSchedule

#: ``denoiser(x_t, sqrt_gamma [B]) -> predicted noise``, conditions already bound.
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Eq. 6 of paper 003: ``(x_t - sqrt(1 - gamma) eps) / sqrt(gamma)``; ``gamma`` [B]."""
    g = gamma.reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t)
    return (x_t - (1.0 - g).sqrt() * eps) / g.sqrt()


def randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """Standard normal noise from ``generator`` (which may live on another device than the
    sample, e.g. a CPU generator for reproducible GPU sampling)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


@torch.no_grad()
def ddpm_sample(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    clip: tuple[float, float] | None = (-1.0, 1.0),
) -> torch.Tensor:
    """Ancestral sampling from ``x_T ~ N(0, I)`` through every step of ``schedule``.

    Each step predicts ``x_0`` (clipped to ``clip``, as SR3 does, unless None) and draws
    ``x_{t-1}`` from the Gaussian posterior ``q(x_{t-1} | x_t, x_0)``; the last step returns
    the posterior mean.
    """
    betas = schedule.betas
    gammas = schedule.gammas
    gammas_prev = schedule.gammas_prev
    x = randn(shape, generator, device)
    batch = shape[0]
    for i in reversed(range(schedule.steps)):
        gamma = float(gammas[i])
        level = torch.full((batch,), gamma**0.5, device=device)
        eps = denoiser(x, level)
        x0 = predict_x0(x, eps, torch.full((batch,), gamma, device=device))
        if clip is not None:
            x0 = x0.clamp(*clip)
        beta, g_prev = float(betas[i]), float(gammas_prev[i])
        coef_x0 = beta * g_prev**0.5 / (1.0 - gamma)
        coef_xt = (1.0 - g_prev) * (1.0 - beta) ** 0.5 / (1.0 - gamma)
        x = coef_x0 * x0 + coef_xt * x
        if i > 0:
            var = beta * (1.0 - g_prev) / (1.0 - gamma)
            noise = randn(shape, generator, device)
            x = x + var**0.5 * noise
    return x
