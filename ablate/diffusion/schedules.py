"""Variance schedules, the training noise levels drawn from them, and forward noising.

Notation of paper 003: ``alpha_t = 1 - beta_t``, ``gamma_t = prod_{i<=t} alpha_i`` (the
cumulative signal fraction), ``x_t = sqrt(gamma_t) x_0 + sqrt(1 - gamma_t) eps``
(:meth:`NoiseSchedule.add_noise`, the one place that formula is written). Networks are
conditioned on ``sqrt(gamma)`` rather than on ``t``, so one trained network runs under any
inference schedule: the 2000-step training schedule, a respaced subset of it, or a fresh
few-step schedule (the IRM's 10 steps up to beta = 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete schedule given by its betas (float64 on the CPU whatever the default device,
    step ``t = 1..T`` at index ``t - 1``)."""

    betas: torch.Tensor

    def __post_init__(self) -> None:
        b = self.betas
        if b.ndim != 1 or b.numel() < 1:
            raise ValueError("betas must be a non-empty 1-D tensor")
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")

    @classmethod
    def linear(cls, steps: int, beta_start: float, beta_end: float) -> NoiseSchedule:
        """``steps`` betas evenly spaced from ``beta_start`` to ``beta_end`` (DDPM, SR3)."""
        return cls(torch.linspace(beta_start, beta_end, steps, dtype=torch.float64, device="cpu"))

    @classmethod
    def cosine(cls, steps: int, offset: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal's (2021) cosine schedule: ``gamma(t) = f(t) / f(0)`` with
        ``f(t) = cos((t / T + offset) / (1 + offset) * pi / 2)^2``, betas capped at
        ``max_beta``. Spends far fewer steps than a linear schedule at near-pure noise, and
        ends at ``gamma_T ~ 0`` whatever ``T``."""
        t = torch.arange(steps + 1, dtype=torch.float64, device="cpu") / steps
        f = torch.cos((t + offset) / (1.0 + offset) * torch.pi / 2) ** 2
        betas = (1.0 - f[1:] / f[:-1]).clamp(min=1e-8, max=max_beta)
        return cls(betas)

    @classmethod
    def named(cls, kind: str, steps: int, beta_start: float, beta_end: float) -> NoiseSchedule:
        """The schedule a ``schedule: linear | cosine`` setting names (the betas' ends are
        the linear schedule's; the cosine schedule has none)."""
        if kind == "linear":
            return cls.linear(steps, beta_start, beta_end)
        if kind == "cosine":
            return cls.cosine(steps)
        raise ValueError(f"unknown schedule {kind!r}: use 'linear' or 'cosine'")

    def diagnostic_levels(self, count: int = 8) -> torch.Tensor:
        """``count`` signal fractions ``gamma_t`` at steps spread evenly over the schedule
        (the midpoints of ``count`` equal bins of ``t = 1..T``, noisiest last): where a
        uniform training draw lands, so each level carries the same share of training.
        float64 [count] on the CPU."""
        centres = (torch.arange(count, dtype=torch.float64) + 0.5) * self.steps / count
        index = centres.floor().long().clamp(0, self.steps - 1)
        return self.gammas[index]

    @property
    def steps(self) -> int:
        return self.betas.numel()

    @property
    def gammas(self) -> torch.Tensor:
        """``gamma_t`` for ``t = 1..T``."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    @property
    def gammas_prev(self) -> torch.Tensor:
        """``gamma_{t-1}`` for ``t = 1..T`` (``gamma_0 = 1``)."""
        return torch.cat([self.betas.new_ones(1), self.gammas[:-1]])

    def respaced(self, steps: int) -> NoiseSchedule:
        """A ``steps``-step schedule visiting evenly spaced ``gamma_t`` of this one (always
        the last); its betas make consecutive kept gammas a valid Markov chain. Keeping every
        step returns this schedule itself (re-deriving its betas would only add rounding)."""
        if not 1 <= steps <= self.steps:
            raise ValueError(
                f"cannot respace a {self.steps}-step schedule to {steps} steps: use 1..{self.steps}"
            )
        if steps == self.steps:
            return self
        keep = torch.linspace(self.steps - 1, 0, steps, dtype=torch.float64, device="cpu")
        keep = keep.round().long()
        kept = self.gammas[keep.flip(0)]
        prev = torch.cat([kept.new_ones(1), kept[:-1]])
        return NoiseSchedule(1.0 - kept / prev)

    def sample_noise_level(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """WaveGrad's continuous noise level for training.

        Draws a step ``t ~ U{1..T}`` per sample and ``sqrt(gamma)`` uniformly between
        ``sqrt(gamma_t)`` and ``sqrt(gamma_{t-1})`` (the reference code samples the square
        root, as WaveGrad does). Returns ``(t, gamma)``, both [batch] on ``device``, ``gamma``
        float32 and inside ``[gamma_t, gamma_{t-1}]``.

        The draw happens on the CPU (the same numbers on any device for a seed) and is sent
        with ``non_blocking``: a blocking host-to-GPU copy would synchronise every step.
        """
        t = torch.randint(1, self.steps + 1, (batch,), generator=generator, device="cpu")
        lo = self.gammas[t - 1].sqrt()
        hi = self.gammas_prev[t - 1].sqrt()
        u = torch.rand(batch, generator=generator, dtype=torch.float64, device="cpu")
        gamma = ((lo + u * (hi - lo)) ** 2).float()
        return t.to(device, non_blocking=True), gamma.to(device, non_blocking=True)

    def sample_step_level(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """DDPM's training level: ``gamma_t`` of a step ``t ~ U{1..T}`` per sample, [batch]
        float32 on ``device``; drawn on the CPU and sent like :meth:`sample_noise_level`."""
        t = torch.randint(0, self.steps, (batch,), generator=generator, device="cpu")
        return self.gammas[t].float().to(device, non_blocking=True)

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """The forward process ``x_t = sqrt(gamma) x0 + sqrt(1 - gamma) noise``, ``gamma``
        [B] per sample. It takes the signal fraction, not a step: WaveGrad's continuous levels
        lie between steps, so one formula serves every schedule and sampler."""
        g = gamma.reshape(-1, *([1] * (x0.ndim - 1)))
        return g.sqrt() * x0 + (1.0 - g).sqrt() * noise
