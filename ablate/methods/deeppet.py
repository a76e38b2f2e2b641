"""DeepPET row (paper 000, Table 1: the regression baseline and PMDM's stage-1 estimator),
and :class:`SinogramMethod`, the shared base of every sinogram -> PET row.

Every sinogram row reads ``sinogram`` [B, 1, A, D] and ``spet`` [B, 1, H, W] and feeds its
networks the sinogram bilinearly resampled to the image grid (``resample_sinogram``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ablate.config import RowConfig, TrialConfig
from ablate.methods.base import Batch, Method
from ablate.models.deeppet import DeepPET, resample_sinogram


class SinogramMethod(Method):
    """Base of the paper-000 rows: sinogram batch keys and the resampled sinogram input."""

    required_keys = frozenset({"sinogram", "spet"})

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size

    def sinogram_image(self, batch: Batch) -> torch.Tensor:
        """The batch's sinogram resampled to the image grid [B, 1, H, W]."""
        return resample_sinogram(batch["sinogram"], (self.image_size, self.image_size))

    def input_shapes(self, image_size: int) -> dict[str, tuple[int, ...]]:
        # The sinogram is resampled to the image grid first, so its own size adds no MACs.
        return {"sinogram": (1, 1, image_size, image_size)}


class DeepPETMethod(SinogramMethod):
    """DeepPET trained with MSE: a deterministic posterior-mean estimate of the image."""

    def __init__(self, image_size: int, width: int = 64) -> None:
        super().__init__(image_size)
        self.net = DeepPET(width=width)

    def training_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        mse = F.mse_loss(self.net(self.sinogram_image(batch)), batch["spet"])
        return {"loss": mse, "main": mse}

    def reconstruct(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.net(self.sinogram_image(batch))


def required_keys(row: RowConfig) -> frozenset[str]:
    return SinogramMethod.required_keys


def build(trial: TrialConfig, image_size: int) -> DeepPETMethod:
    return DeepPETMethod(image_size, width=trial.model.deeppet.width)
