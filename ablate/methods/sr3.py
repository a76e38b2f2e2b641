"""Row (a) of paper 003's Table 2: the SR3 baseline, a conditional DDPM on [LPET, noisy SPET].

Training: linear beta schedule (``diffusion.train_steps`` steps, ``beta_start..beta_end``),
WaveGrad continuous noise level, L1 on the predicted noise (eq. 3). Sampling: ancestral
DDPM (or DDIM, ``diffusion.sampler``) over ``diffusion.sr3_sample_steps`` evenly respaced
steps of the training schedule (the paper's cost figure is 100 steps). The diffusion itself
is :class:`~ablate.diffusion.conditional.ConditionalDiffusion`; this row says only that the
condition is the LPET slice, placed before ``x_t``, and that samples are clipped to [0, 1].
"""

from __future__ import annotations

import torch

from ablate.config import RowConfig, TrialConfig
from ablate.diffusion.conditional import ConditionalDiffusion, to_model_scale
from ablate.diffusion.samplers import Sampler
from ablate.diffusion.schedules import NoiseSchedule
from ablate.errors import UserError
from ablate.methods.base import Batch, Method
from ablate.models.unet import UNet

_SWITCHES = ("irm", "nas", "spectrum", "contrastive")


class SR3(Method):
    """Conditional DDPM baseline; ``reconstruct`` draws one sample per input.

    Args:
        image_size: square image size H = W.
        width / mults / res_blocks / attn_res / dropout: the denoising UNet.
        schedule: the training noise schedule.
        sample_steps: steps of the respaced sampling schedule.
        sampler / ddim_eta: the update rule over those steps (DDPM, or DDIM with its eta).
    """

    stochastic = True
    required_keys = frozenset({"lpet", "spet"})

    def __init__(
        self,
        image_size: int,
        *,
        width: int,
        mults: tuple[int, ...],
        res_blocks: int,
        attn_res: tuple[int, ...],
        dropout: float,
        schedule: NoiseSchedule,
        sample_steps: int,
        sampler: Sampler = "ddpm",
        ddim_eta: float = 0.0,
    ) -> None:
        super().__init__()
        self.net = UNet(
            in_channels=2,
            out_channels=1,
            base_width=width,
            channel_mults=mults,
            res_blocks=res_blocks,
            attn_res=attn_res,
            image_size=image_size,
            dropout=dropout,
            noise_embedding=True,
        )
        self.diffusion = ConditionalDiffusion(
            self.net,
            schedule,
            sample_steps=sample_steps,
            noise_level="continuous",
            objective="l1",
            sampler=sampler,
            ddim_eta=ddim_eta,
            clip=(0.0, 1.0),
            condition_first=True,
        )

    def training_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        main = self.diffusion.loss(batch["spet"], to_model_scale(batch["lpet"]))
        return {"loss": main, "main": main}

    @torch.no_grad()
    def reconstruct(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.diffusion.sample(to_model_scale(batch["lpet"]), generator)

    def extra_repr(self) -> str:
        return repr(self.diffusion)


def validate_row(row: RowConfig) -> None:
    """SR3 has no component switches; a row that sets one is a mistake worth stopping."""
    on = [name for name in _SWITCHES if getattr(row, name)]
    if on:
        raise UserError(
            f"method 'sr3' has no {'/'.join(on)} component: use method 'coarse_to_fine' "
            "for irm/nas/spectrum/contrastive rows"
        )


def required_keys(row: RowConfig) -> frozenset[str]:
    return SR3.required_keys


def build(trial: TrialConfig, image_size: int) -> SR3:
    model, diffusion = trial.model, trial.diffusion
    if diffusion.sr3_sample_steps > diffusion.train_steps:
        raise UserError(
            f"diffusion.sr3_sample_steps ({diffusion.sr3_sample_steps}) exceeds "
            f"diffusion.train_steps ({diffusion.train_steps}): lower it"
        )
    return SR3(
        image_size,
        width=model.sr3_width,
        mults=model.sr3_mults,
        res_blocks=model.res_blocks,
        attn_res=model.attn_res,
        dropout=model.dropout,
        schedule=NoiseSchedule.linear(
            diffusion.train_steps, diffusion.beta_start, diffusion.beta_end
        ),
        sample_steps=diffusion.sr3_sample_steps,
        sampler=diffusion.sampler,
        ddim_eta=diffusion.ddim_eta,
    )
