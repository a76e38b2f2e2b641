"""cGAN and pix2pix rows of paper 000's Table 1: sinogram -> PET with an adversarial loss.

Both use the pix2pix U-Net generator on the resampled sinogram and a discriminator that
sees (sinogram, image) pairs; pix2pix judges 70x70 patches, cGAN the whole image (Mirza and
Osindero's conditional GAN). Generator loss: non-saturating BCE adversarial term +
``l1_weight`` * L1 to the reference (pix2pix's lambda = 100; paper 000 does not state the cGAN
loss, so it gets the same L1 term: the rows then differ only in what the discriminator sees).

Training alternates, per batch, one discriminator step and one generator step, each with its
own Adam (betas 0.5, 0.999 as in pix2pix) from :meth:`configure_optimizers`; the training
loop just calls :meth:`training_step`. Every returned term is the honest value, so a
diverging GAN shows up as a NaN the loop reports with row, step and term.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ablate.config import RowConfig, TrialConfig
from ablate.methods.base import Batch
from ablate.methods.deeppet import SinogramMethod
from ablate.models.gan import (
    ImageDiscriminator,
    PatchDiscriminator,
    UNetGenerator,
    generator_depth,
)

Discriminator = Literal["patch", "image"]


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


class ConditionalGAN(SinogramMethod):
    """U-Net generator + conditional discriminator (``"patch"``: pix2pix, ``"image"``: cGAN)."""

    def __init__(
        self,
        image_size: int,
        discriminator: Discriminator,
        width: int = 64,
        l1_weight: float = 100.0,
    ) -> None:
        super().__init__(image_size)
        self.l1_weight = l1_weight
        self.generator = UNetGenerator(1, width, depth=generator_depth(image_size))
        self.discriminator: nn.Module = (
            PatchDiscriminator(2, width)
            if discriminator == "patch"
            else ImageDiscriminator(image_size, 2, width)
        )

    def configure_optimizers(self, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
        """[generator Adam, discriminator Adam], betas (0.5, 0.999) as in pix2pix."""
        return [
            torch.optim.Adam(m.parameters(), lr=lr, betas=(0.5, 0.999), weight_decay=weight_decay)
            for m in (self.generator, self.discriminator)
        ]

    def _discriminator_loss(
        self, cond: torch.Tensor, real: torch.Tensor, fake: torch.Tensor
    ) -> torch.Tensor:
        d_real = self.discriminator(torch.cat([cond, real], dim=1))
        d_fake = self.discriminator(torch.cat([cond, fake.detach()], dim=1))
        return 0.5 * (_bce(d_real, True) + _bce(d_fake, False))

    def _generator_losses(
        self, cond: torch.Tensor, real: torch.Tensor, fake: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        adv = _bce(self.discriminator(torch.cat([cond, fake], dim=1)), True)
        l1 = F.l1_loss(fake, real)
        return {"loss": adv + self.l1_weight * l1, "main": l1, "adv": adv}

    def training_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Generator loss (``loss``) and the discriminator's (``disc``) against the current
        networks, without updating either (what a validation pass would log)."""
        cond, real = self.sinogram_image(batch), batch["spet"]
        fake = self.generator(cond)
        losses = self._generator_losses(cond, real, fake)
        losses["disc"] = self._discriminator_loss(cond, real, fake)
        return losses

    def training_step(
        self, batch: Batch, optimizers: list[torch.optim.Optimizer]
    ) -> dict[str, torch.Tensor]:
        """One discriminator update, then one generator update against the updated critic."""
        opt_g, opt_d = optimizers
        cond, real = self.sinogram_image(batch), batch["spet"]
        fake = self.generator(cond)

        disc = self._discriminator_loss(cond, real, fake)
        opt_d.zero_grad(set_to_none=True)
        disc.backward()
        opt_d.step()

        self.discriminator.requires_grad_(False)  # the generator step must not train D
        try:
            losses = self._generator_losses(cond, real, fake)
            opt_g.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt_g.step()
        finally:
            self.discriminator.requires_grad_(True)

        losses["disc"] = disc
        return {name: value.detach() for name, value in losses.items()}

    def reconstruct(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.generator(self.sinogram_image(batch))


def required_keys(row: RowConfig) -> frozenset[str]:
    return ConditionalGAN.required_keys


def build(trial: TrialConfig, image_size: int) -> ConditionalGAN:
    """``pix2pix``: PatchGAN discriminator; ``cgan``: image-level discriminator."""
    return ConditionalGAN(
        image_size,
        discriminator="patch" if trial.row.method == "pix2pix" else "image",
        width=trial.model.gan.width,
        l1_weight=trial.loss.gan_l1,
    )
