"""VQ-VAE row of paper 000's Table 1: the resampled sinogram is encoded, quantised against a
learned codebook and decoded to the PET image (deterministic at inference).

Loss (van den Oord et al. 2017): MSE(reconstruction, reference) + codebook term +
``beta`` * commitment term, with ``beta = 0.25``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ablate.config import RowConfig, TrialConfig
from ablate.methods.base import Batch
from ablate.methods.deeppet import SinogramMethod
from ablate.models.vqvae import VQVAE


class VQVAEMethod(SinogramMethod):
    def __init__(
        self,
        image_size: int,
        width: int = 128,
        code_dim: int = 64,
        num_codes: int = 512,
        beta: float = 0.25,
    ) -> None:
        super().__init__(image_size)
        self.beta = beta
        self.net = VQVAE(1, width=width, code_dim=code_dim, num_codes=num_codes)

    def training_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        recon, codebook, commitment = self.net(self.sinogram_image(batch))
        mse = F.mse_loss(recon, batch["spet"])
        return {
            "loss": mse + codebook + self.beta * commitment,
            "main": mse,
            "codebook": codebook,
            "commitment": commitment,
        }

    def reconstruct(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.net(self.sinogram_image(batch))[0]


def required_keys(row: RowConfig) -> frozenset[str]:
    return VQVAEMethod.required_keys


def build(trial: TrialConfig, image_size: int) -> VQVAEMethod:
    m = trial.model.vqvae
    return VQVAEMethod(
        image_size,
        width=m.width,
        code_dim=m.code_dim,
        num_codes=m.codes,
        beta=trial.loss.vq_beta,
    )
