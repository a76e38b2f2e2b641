"""Row (a) of paper 003's Table 2: the SR3 baseline, a conditional DDPM on [LPET, noisy SPET].

Training: linear beta schedule (``diffusion.train_steps`` steps, ``beta_start..beta_end``),
WaveGrad continuous noise level, L1 on the predicted noise (eq. 3); ``diffusion.sr3``'s
``prediction``, ``schedule`` and ``min_snr`` may depart from that for small budgets.
Sampling: ancestral DDPM (or DDIM, ``diffusion.sampler``) over ``diffusion.sr3.sample_steps``
evenly respaced steps of the training schedule (the paper's cost figure is 100 steps). The
diffusion itself is :class:`~ablate.diffusion.conditional.ConditionalDiffusion`; this row
says only that the condition is the LPET slice, placed before ``x_t``, and that samples are
clipped to [0, 1].
"""

from __future__ import annotations

import torch

from ablate.config import RowConfig, TrialConfig
from ablate.diffusion.conditional import ConditionalDiffusion, to_model_scale
from ablate.diffusion.samplers import Prediction, Sampling
from ablate.diffusion.schedules import NoiseSchedule
from ablate.errors import UserError
from ablate.methods.base import Batch, Method
from ablate.models.unet import UNetShape


class SR3(Method):
    """Conditional DDPM baseline; ``reconstruct`` draws one sample per input.

    Args:
        image_size: square image size H = W.
        unet: the denoising UNet's shape.
        schedule: the training noise schedule.
        sampling: the sampler, its eta and its (respaced) steps.
        prediction / min_snr: see :class:`ConditionalDiffusion`.
    """

    stochastic = True
    required_keys = frozenset({"lpet", "spet"})

    def __init__(
        self,
        image_size: int,
        *,
        unet: UNetShape,
        schedule: NoiseSchedule,
        sampling: Sampling,
        prediction: Prediction = "eps",
        min_snr: float | None = None,
    ) -> None:
        super().__init__()
        self.net = unet.build(2, image_size, noise_embedding=True)
        self.diffusion = ConditionalDiffusion(
            self.net,
            schedule,
            sampling,
            noise_level="continuous",
            objective="l1",
            clip=(0.0, 1.0),
            condition_first=True,
            prediction=prediction,
            min_snr=min_snr,
        )

    def training_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        main = self.diffusion.loss(batch["spet"], to_model_scale(batch["lpet"]))
        return {"loss": main, "main": main}

    @torch.no_grad()
    def reconstruct(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.diffusion.sample(to_model_scale(batch["lpet"]), generator)

    @torch.no_grad()
    def noise_level_diagnostics(
        self, batch: Batch, generator: torch.Generator
    ) -> list[tuple[float, torch.Tensor]]:
        cond = to_model_scale(batch["lpet"])
        return [
            (g, self.diffusion.one_step_x0(batch["spet"], cond, g, generator))
            for g in self.diffusion.diagnostic_levels()
        ]

    def extra_repr(self) -> str:
        return repr(self.diffusion)


def required_keys(row: RowConfig) -> frozenset[str]:
    return SR3.required_keys


def build(trial: TrialConfig, image_size: int) -> SR3:
    model, diffusion = trial.model.sr3, trial.diffusion
    sample_steps = diffusion.sr3.sample_steps
    if sample_steps > diffusion.train_steps:
        raise UserError(
            f"diffusion.sr3.sample_steps ({sample_steps}) exceeds "
            f"diffusion.train_steps ({diffusion.train_steps}): lower it"
        )
    return SR3(
        image_size,
        unet=UNetShape(
            model.width, model.mults, model.res_blocks, model.attn_res, trial.model.dropout
        ),
        schedule=NoiseSchedule.named(
            diffusion.sr3.schedule, diffusion.train_steps, diffusion.beta_start, diffusion.beta_end
        ),
        sampling=Sampling(sample_steps, diffusion.sampler, diffusion.ddim_eta),
        prediction=diffusion.sr3.prediction,
        min_snr=diffusion.sr3.min_snr,
    )
