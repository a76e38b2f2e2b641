"""Reverse-process samplers for denoisers conditioned on ``sqrt(gamma)``.

The denoiser predicts the noise (``prediction="eps"``, the papers'), the clean image
(``"x0"``) or the velocity ``v = sqrt(gamma) eps - sqrt(1 - gamma) x_0`` (``"v"``, Salimans &
Ho 2022); :func:`model_x0` turns any of them into the ``x_0`` estimate both update rules use.

The step count and spacing live entirely in the
:class:`~ablate.diffusion.schedules.NoiseSchedule` passed in, so "full T-step DDPM",
"respaced 100-step SR3" and "WaveGrad-style 10-step IRM schedule" are the same loop with
different schedules. Two update rules run over those steps: DDPM's ancestral posterior
(:func:`ddpm_sample`) and DDIM's (:func:`ddim_sample`), whose ``eta`` goes from
deterministic (0) to the ancestral posterior (1). Methods pick one through :func:`sample`,
the one place the ``diffusion.sampler`` knob is read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from ablate.diffusion.schedules import NoiseSchedule

#: ``denoiser(x_t, sqrt_gamma [B]) -> the network's prediction``, conditions already bound.
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Sampler = Literal["ddpm", "ddim"]
#: What the network predicts: the noise, the clean image, or the velocity.
Prediction = Literal["eps", "x0", "v"]


@dataclass(frozen=True)
class Sampling:
    """How a diffusion row samples: ``steps`` evenly respaced steps of its training schedule
    (all of them: the schedule itself), with DDPM's update or DDIM's with ``eta``."""

    steps: int
    sampler: Sampler = "ddpm"
    eta: float = 0.0


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Eq. 6 of paper 003: ``(x_t - sqrt(1 - gamma) eps) / sqrt(gamma)``; ``gamma`` [B]."""
    g = gamma.reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t)
    return (x_t - (1.0 - g).sqrt() * eps) / g.sqrt()


def model_x0(
    out: torch.Tensor, x_t: torch.Tensor, gamma: torch.Tensor, prediction: Prediction
) -> torch.Tensor:
    """The ``x_0`` estimate of a network output ``out`` at ``x_t``, ``gamma`` [B]: eq. 6 for
    eps, the output itself for x0, ``sqrt(gamma) x_t - sqrt(1 - gamma) v`` for v. Only eps
    divides by ``sqrt(gamma)``, multiplying its errors by up to ``1 / sqrt(gamma_T)``."""
    if prediction == "eps":
        return predict_x0(x_t, out, gamma)
    if prediction == "x0":
        return out
    if prediction == "v":
        g = gamma.reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t)
        return g.sqrt() * x_t - (1.0 - g).sqrt() * out
    raise ValueError(f"unknown prediction {prediction!r}: use 'eps', 'x0' or 'v'")


def randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str
) -> torch.Tensor:
    """Standard normal noise from ``generator`` (which may live on another device than the
    sample, e.g. a CPU generator for reproducible GPU sampling; copied without a host sync)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device, non_blocking=True)


def _clipped_x0(
    denoiser: Denoiser,
    x: torch.Tensor,
    gamma: float,
    clip: tuple[float, float] | None,
    prediction: Prediction = "eps",
) -> torch.Tensor:
    """The denoiser's ``x_0`` estimate at signal fraction ``gamma``, clipped to ``clip``
    (as SR3 does) unless None."""
    batch = x.shape[0]
    out = denoiser(x, torch.full((batch,), gamma**0.5, device=x.device))
    x0 = model_x0(out, x, torch.full((batch,), gamma, device=x.device), prediction)
    return x0 if clip is None else x0.clamp(*clip)


#: Draws standard normal noise of the sample's shape; None at the last step (no noise there).
Noise = Callable[[], torch.Tensor] | None


class Step(NamedTuple):
    """The schedule at one reverse step ``t``: ``gamma_t``, ``beta_t`` and ``gamma_{t-1}``."""

    gamma: float
    beta: float
    gamma_prev: float


#: One reverse update ``(x_t, clipped x_0 estimate, step, noise) -> x_{t-1}``.
Update = Callable[[torch.Tensor, torch.Tensor, Step, Noise], torch.Tensor]


def _reverse_process(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    update: Update,
    device: torch.device | str,
    generator: torch.Generator | None,
    clip: tuple[float, float] | None,
    prediction: Prediction = "eps",
) -> torch.Tensor:
    """``x_T ~ N(0, I)``, then for ``t = T..1``: the denoiser's clipped ``x_0`` estimate and
    ``update`` to ``x_{t-1}``. The loop both samplers share; they differ only in ``update``."""
    betas = schedule.betas
    gammas = schedule.gammas
    gammas_prev = schedule.gammas_prev
    x = randn(shape, generator, device)
    for i in reversed(range(schedule.steps)):
        gamma = float(gammas[i])
        x0 = _clipped_x0(denoiser, x, gamma, clip, prediction)
        noise = (lambda: randn(shape, generator, device)) if i > 0 else None
        x = update(x, x0, Step(gamma, float(betas[i]), float(gammas_prev[i])), noise)
    return x


@torch.no_grad()
def ddpm_sample(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    clip: tuple[float, float] | None = (-1.0, 1.0),
    prediction: Prediction = "eps",
) -> torch.Tensor:
    """Ancestral sampling from ``x_T ~ N(0, I)`` through every step of ``schedule``.

    Each step predicts ``x_0`` (clipped to ``clip``, as SR3 does, unless None) and draws
    ``x_{t-1}`` from the Gaussian posterior ``q(x_{t-1} | x_t, x_0)``; the last step returns
    the posterior mean.
    """

    def posterior(x: torch.Tensor, x0: torch.Tensor, step: Step, noise: Noise) -> torch.Tensor:
        gamma, beta, g_prev = step
        coef_x0 = beta * g_prev**0.5 / (1.0 - gamma)
        coef_xt = (1.0 - g_prev) * (1.0 - beta) ** 0.5 / (1.0 - gamma)
        x = coef_x0 * x0 + coef_xt * x
        if noise is not None:
            var = beta * (1.0 - g_prev) / (1.0 - gamma)
            x = x + var**0.5 * noise()
        return x

    return _reverse_process(
        denoiser, shape, schedule, posterior, device, generator, clip, prediction
    )


@torch.no_grad()
def ddim_sample(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    *,
    eta: float = 0.0,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    clip: tuple[float, float] | None = (-1.0, 1.0),
    prediction: Prediction = "eps",
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12) from ``x_T ~ N(0, I)`` through ``schedule``.

    Each step predicts ``x_0`` (clipped as in :func:`ddpm_sample`), re-derives the noise
    from the clipped ``x_0`` so the update stays on the line between them, and moves to

        x_{t-1} = sqrt(g_prev) x_0 + sqrt(1 - g_prev - sigma^2) eps + sigma z,
        sigma = eta sqrt((1 - g_prev) / (1 - g) * beta_t).

    ``eta = 0`` draws no noise after ``x_T`` (the sample is a function of ``x_T``);
    ``eta = 1`` is DDPM's posterior, drawing noise in the same order as :func:`ddpm_sample`,
    so the same generator gives the same sample up to float rounding. The last step
    returns ``x_0``.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM eta must lie in [0, 1]: {eta}")

    def ddim_step(x: torch.Tensor, x0: torch.Tensor, step: Step, noise: Noise) -> torch.Tensor:
        gamma, beta, g_prev = step
        eps = (x - gamma**0.5 * x0) / (1.0 - gamma) ** 0.5
        sigma = eta * ((1.0 - g_prev) / (1.0 - gamma) * beta) ** 0.5
        x = g_prev**0.5 * x0 + max(1.0 - g_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0.0 and noise is not None:
            x = x + sigma * noise()
        return x

    return _reverse_process(
        denoiser, shape, schedule, ddim_step, device, generator, clip, prediction
    )


def sample(
    sampler: Sampler,
    denoiser: Denoiser,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    *,
    eta: float = 0.0,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    clip: tuple[float, float] | None = (-1.0, 1.0),
    prediction: Prediction = "eps",
) -> torch.Tensor:
    """Run the sampler named by ``diffusion.sampler`` (``eta`` is DDIM's, unused by DDPM)."""
    common = {"device": device, "generator": generator, "clip": clip, "prediction": prediction}
    if sampler == "ddpm":
        return ddpm_sample(denoiser, shape, schedule, **common)
    if sampler == "ddim":
        return ddim_sample(denoiser, shape, schedule, eta=eta, **common)
    raise ValueError(f"unknown sampler {sampler!r}: use 'ddpm' or 'ddim'")
