"""A conditional denoising diffusion model: one network, its noise schedule, a loss, a sampler.

Shaped after lucidrains' ``GaussianDiffusion``: the network only maps ``(x_t, sqrt(gamma))``
and a condition to predicted noise and never sees the schedule; :class:`ConditionalDiffusion`
draws training noise levels, noises with :meth:`NoiseSchedule.add_noise`, scores the predicted
noise, and samples through :func:`ablate.diffusion.samplers.sample` (DDPM or DDIM). SR3,
Palette and PMDM-PET are all this one model; a method says only what differs:

- the condition it builds (LPET, the resampled sinogram, DeepPET's ``r0*``) and whether it
  comes before or after ``x_t`` in the network's input channels;
- the training noise level: WaveGrad's continuous level (SR3) or a uniform discrete step
  (DDPM, PMDM);
- the loss on the predicted noise: L1 (SR3) or MSE (DDPM, PMDM);
- the sampler's ``x_0`` clip window, in data units.

Three knobs for small budgets, read from each family's config section (the papers' settings
are the defaults): what the network predicts (``prediction``: the noise, as both papers, the
clean image ``x0``, or the velocity ``v``), the schedule (built by the method: linear, as
both papers, or cosine) and a loss weighting (``min_snr``: Hang et al.'s min-SNR-gamma, None
= unweighted, as both papers). :meth:`ConditionalDiffusion.one_step_x0` is the per-noise-level
diagnostic: the network's one-step ``x_0`` estimate of a known image at a given noise level.

Images are diffused on the ``2 x - 1`` scale (data ``[0, 1]`` -> ``[-1, 1]``): :meth:`loss`
takes the target and :meth:`sample` returns the image on the data scale; conditions are
passed already on the network's scale (:func:`to_model_scale` puts an image there).

The network is held by reference, not registered as a submodule: the method registers it
under its own attribute (SR3's ``net``, PMDM's ``unet``), so checkpoint keys,
``torch.compile`` and EMA copies (a deep copy of the method copies this reference with it)
see the network where they always have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ablate.diffusion.losses import noise_l1
from ablate.diffusion.samplers import Prediction, Sampling, model_x0, sample
from ablate.diffusion.schedules import NoiseSchedule

NoiseLevel = Literal["continuous", "discrete"]
Objective = Literal["l1", "mse"]

_OBJECTIVES: dict[Objective, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": noise_l1,
    "mse": F.mse_loss,
}
_PER_ELEMENT: dict[Objective, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1": lambda a, b: (a - b).abs(),
    "mse": lambda a, b: (a - b).square(),
}


def min_snr_weight(gamma: torch.Tensor, prediction: Prediction, cap: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights [B] (Hang et al. 2023): the x0-space weight
    ``min(snr, cap)`` expressed for the loss the network is trained on (eps: divided by
    ``snr``, v: by ``snr + 1``), ``snr = gamma / (1 - gamma)``."""
    snr = gamma / (1.0 - gamma).clamp_min(1e-12)
    capped = snr.clamp(max=cap)
    if prediction == "eps":
        return capped / snr.clamp_min(1e-12)
    if prediction == "v":
        return capped / (snr + 1.0)
    return capped


def prediction_target(
    prediction: Prediction, x0: torch.Tensor, noise: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """What a network predicting ``prediction`` should output for ``x0`` noised by ``noise``
    to signal fraction ``gamma`` [B]: the noise, ``x0`` itself, or
    ``v = sqrt(gamma) noise - sqrt(1 - gamma) x0``. The inverse of
    :func:`~ablate.diffusion.samplers.model_x0`; every diffusion family trains on it."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    g = gamma.reshape(-1, *([1] * (x0.ndim - 1)))
    return g.sqrt() * noise - (1.0 - g).sqrt() * x0


def denoising_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    gamma: torch.Tensor,
    objective: Objective,
    prediction: Prediction,
    min_snr: float | None,
) -> torch.Tensor:
    """The objective between a prediction and its target, min-SNR-gamma weighted per sample
    (at signal fractions ``gamma`` [B]) when ``min_snr`` is a cap; unweighted (the papers')
    when it is None."""
    if min_snr is None:
        return _OBJECTIVES[objective](pred, target)
    per_sample = _PER_ELEMENT[objective](pred, target).flatten(1).mean(1)
    return (min_snr_weight(gamma.float(), prediction, min_snr) * per_sample).mean()


def to_model_scale(image: torch.Tensor) -> torch.Tensor:
    """Data ``[0, 1]`` -> the diffusion scale ``[-1, 1]``."""
    return 2.0 * image - 1.0


def to_data_scale(x: torch.Tensor) -> torch.Tensor:
    """The diffusion scale ``[-1, 1]`` -> data ``[0, 1]``."""
    return (x + 1.0) / 2.0


class ConditionalDiffusion:
    """A conditional DDPM around ``net(input, sqrt_gamma [B])`` (eps, x0 or v prediction).

    Args:
        net: the denoiser; its input is the condition and ``x_t`` concatenated on channels.
        schedule: the training schedule (T steps).
        sampling: the sampler, its eta and its steps (respaced from ``schedule``).
        noise_level: ``"continuous"`` (WaveGrad: ``gamma`` uniform within a step) or
            ``"discrete"`` (``gamma_t`` of a uniform step).
        objective: ``"l1"`` or ``"mse"`` between predicted and true noise.
        clip: the sampler's ``x_0`` clip window in data units.
        condition_first: the condition's channels come before ``x_t`` (SR3) or after (PMDM).
        prediction: the network predicts ``"eps"`` (the papers'), ``"x0"`` or ``"v"``; the
            loss compares the prediction with the matching target.
        min_snr: min-SNR-gamma loss weighting with this cap (Hang et al.: 5); None = none.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        sampling: Sampling,
        *,
        noise_level: NoiseLevel,
        objective: Objective,
        clip: tuple[float, float],
        condition_first: bool,
        prediction: Prediction = "eps",
        min_snr: float | None = None,
    ) -> None:
        self.net = net
        self.schedule = schedule
        self.sampling = sampling
        self.sample_schedule = schedule.respaced(sampling.steps)
        self.noise_level = noise_level
        self.objective = objective
        self.clip = clip
        self.condition_first = condition_first
        self.prediction = prediction
        self.min_snr = min_snr

    def denoise(self, x_t: torch.Tensor, cond: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """The network's prediction (noise, ``x_0`` or ``v``) of ``x_t`` at
        ``level = sqrt(gamma)`` [B] given ``cond``."""
        parts = [cond, x_t] if self.condition_first else [x_t, cond]
        return self.net(torch.cat(parts, dim=1), level)

    def training_level(self, batch: int, device: torch.device) -> torch.Tensor:
        """A training signal fraction ``gamma`` [B] per sample (float32 on ``device``)."""
        if self.noise_level == "continuous":
            return self.schedule.sample_noise_level(batch, device=device)[1]
        return self.schedule.sample_step_level(batch, device=device)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """What the network should output for ``x0`` (model scale) noised by ``noise``."""
        return prediction_target(self.prediction, x0, noise, gamma)

    def loss(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The denoising loss of target ``x0`` (data scale) given ``cond``: the objective
        between the network's prediction and its target, min-SNR weighted if asked.

        Random draws, in order: the noise level (CPU generator), then the noise
        (``randn_like`` on the target's device).
        """
        x0 = to_model_scale(x0)
        gamma = self.training_level(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        x_t = self.schedule.add_noise(x0, noise, gamma)
        pred = self.denoise(x_t, cond, gamma.sqrt())
        target = self.target(x0, noise, gamma)
        return denoising_loss(pred, target, gamma, self.objective, self.prediction, self.min_snr)

    @torch.no_grad()
    def one_step_x0(
        self, x0: torch.Tensor, cond: torch.Tensor, gamma: float, generator: torch.Generator
    ) -> torch.Tensor:
        """The network's one-step ``x_0`` estimate (data scale, unclipped) of the image
        ``x0`` (data scale) noised to signal fraction ``gamma`` with noise from
        ``generator`` (a CPU generator: the same noise on any device)."""
        x0 = to_model_scale(x0)
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        level = torch.full((x0.shape[0],), gamma, device=x0.device)
        x_t = self.schedule.add_noise(x0, noise, level)
        out = self.denoise(x_t, cond, level.sqrt())
        return to_data_scale(model_x0(out.float(), x_t, level, self.prediction))

    def diagnostic_levels(self) -> list[float]:
        """The signal fractions of the per-noise-level diagnostic (the training schedule's)."""
        return [float(g) for g in self.schedule.diagnostic_levels()]

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One single-channel sample [B, 1, H, W] per condition [B, C, H, W], on the data
        scale; the same ``generator`` state gives the same sample."""
        lo, hi = self.clip
        x = sample(
            self.sampling.sampler,
            lambda x_t, level: self.denoise(x_t, cond, level),
            (cond.shape[0], 1, *cond.shape[2:]),
            self.sample_schedule,
            eta=self.sampling.eta,
            device=cond.device,
            generator=generator,
            clip=(2.0 * lo - 1.0, 2.0 * hi - 1.0),
            prediction=self.prediction,
        )
        return to_data_scale(x)

    def __repr__(self) -> str:
        sampler, steps = self.sampling.sampler, self.sampling.steps
        eta = f", eta={self.sampling.eta}" if sampler == "ddim" else ""
        knobs = "" if self.prediction == "eps" else f", prediction={self.prediction!r}"
        knobs += "" if self.min_snr is None else f", min_snr={self.min_snr}"
        return f"T={self.schedule.steps}, sampler={sampler!r}{eta}, sample_steps={steps}{knobs}"
