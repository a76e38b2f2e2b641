"""Row (a) of paper 003's Table 2: the SR3 baseline, a conditional DDPM on [LPET, noisy SPET].

Training: linear beta schedule (``diffusion.train_steps`` steps, ``beta_start..beta_end``),
WaveGrad continuous noise level, L1 on the predicted noise (eq. 3). Sampling: ancestral
DDPM (or DDIM, ``diffusion.sampler``) over ``diffusion.sr3.sample_steps`` evenly respaced
steps of the training schedule (the paper's cost figure is 100 steps). Images are mapped
from the dataset's [0, 1] scale to SR3's [-1, 1] and back, so the sampler's x0 clipping
acts on the data range.
"""

from __future__ import annotations

import torch

from ablate.config import DiffusionConfig, RowConfig, SR3Model, TrialConfig
from ablate.diffusion.losses import noise_l1
from ablate.diffusion.samplers import sample
from ablate.diffusion.schedules import NoiseSchedule
from ablate.errors import UserError
from ablate.methods.base import Batch, Method
from ablate.models.unet import UNet


class SR3(Method):
    """Conditional DDPM baseline; ``reconstruct`` draws one sample per input."""

    stochastic = True
    required_keys = frozenset({"lpet", "spet"})

    def __init__(
        self, model: SR3Model, dropout: float, diffusion: DiffusionConfig, image_size: int
    ) -> None:
        super().__init__()
        sample_steps = diffusion.sr3.sample_steps
        if sample_steps > diffusion.train_steps:
            raise UserError(
                f"diffusion.sr3.sample_steps ({sample_steps}) exceeds "
                f"diffusion.train_steps ({diffusion.train_steps}): lower it"
            )
        self.net = UNet(
            in_channels=2,
            out_channels=1,
            base_width=model.width,
            channel_mults=model.mults,
            res_blocks=model.res_blocks,
            attn_res=model.attn_res,
            image_size=image_size,
            dropout=dropout,
            noise_embedding=True,
        )
        self.train_schedule = NoiseSchedule.linear(
            diffusion.train_steps, diffusion.beta_start, diffusion.beta_end
        )
        self.sample_schedule = self.train_schedule.respaced(sample_steps)
        self.sampler = diffusion.sampler
        self.ddim_eta = diffusion.ddim_eta

    def training_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        cond = 2.0 * batch["lpet"] - 1.0
        x0 = 2.0 * batch["spet"] - 1.0
        _, gamma = self.train_schedule.sample_noise_level(x0.shape[0], device=x0.device)
        g = gamma.reshape(-1, 1, 1, 1)
        noise = torch.randn_like(x0)
        x_t = g.sqrt() * x0 + (1.0 - g).sqrt() * noise
        main = noise_l1(self.net(torch.cat([cond, x_t], dim=1), g.flatten().sqrt()), noise)
        return {"loss": main, "main": main}

    @torch.no_grad()
    def reconstruct(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        cond = 2.0 * batch["lpet"] - 1.0
        x = sample(
            self.sampler,
            lambda x_t, level: self.net(torch.cat([cond, x_t], dim=1), level),
            tuple(cond.shape),
            self.sample_schedule,
            eta=self.ddim_eta,
            device=cond.device,
            generator=generator,
        )
        return (x + 1.0) / 2.0

    def extra_repr(self) -> str:
        eta = f", eta={self.ddim_eta}" if self.sampler == "ddim" else ""
        return f"sampler={self.sampler!r}{eta}, sample_steps={self.sample_schedule.steps}"


def required_keys(row: RowConfig) -> frozenset[str]:
    return SR3.required_keys


def build(trial: TrialConfig, image_size: int) -> SR3:
    return SR3(trial.model.sr3, trial.model.dropout, trial.diffusion, image_size)
