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
    """Base of the paper-000 rows: sinogram batch keys and per-row optimiser settings.

    ``lr`` / ``weight_decay`` come from the row (``RowConfig.lr``, ``.weight_decay``); when
    set they replace the experiment-wide values the training loop passes to
    :meth:`configure_optimizers`, because Table 1's rows train with different settings
    (DeepPET: weight decay 1e-5; PMDM: lr 3e-5; pix2pix: lr 2e-4).
    """

    required_keys = frozenset({"sinogram", "spet"})

    def __init__(
        self, image_size: int, lr: float | None = None, weight_decay: float | None = None
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.lr = lr
        self.weight_decay = weight_decay

    def optim_settings(self, lr: float, weight_decay: float) -> tuple[float, float]:
        """The (lr, weight decay) this row trains with: its own where set, else the loop's."""
        return (
            lr if self.lr is None else self.lr,
            weight_decay if self.weight_decay is None else self.weight_decay,
        )

    def configure_optimizers(self, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
        lr, weight_decay = self.optim_settings(lr, weight_decay)
        params = [p for p in self.parameters() if p.requires_grad]
        return [torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)]

    def sinogram_image(self, batch: Batch) -> torch.Tensor:
        """The batch's sinogram resampled to the image grid [B, 1, H, W]."""
        return resample_sinogram(batch["sinogram"], (self.image_size, self.image_size))

    def input_shapes(self, image_size: int) -> dict[str, tuple[int, ...]]:
        # The sinogram is resampled to the image grid first, so its own size adds no MACs.
        return {"sinogram": (1, 1, image_size, image_size)}


class DeepPETMethod(SinogramMethod):
    """DeepPET trained with MSE: a deterministic posterior-mean estimate of the image."""

    def __init__(
        self,
        image_size: int,
        width: int = 64,
        lr: float | None = None,
        weight_decay: float | None = None,
    ) -> None:
        super().__init__(image_size, lr, weight_decay)
        self.net = DeepPET(width=width)

    def training_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        mse = F.mse_loss(self.net(self.sinogram_image(batch)), batch["spet"])
        return {"loss": mse, "main": mse}

    def reconstruct(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.net(self.sinogram_image(batch))


def required_keys(row: RowConfig) -> frozenset[str]:
    return SinogramMethod.required_keys


def build(trial: TrialConfig, image_size: int) -> DeepPETMethod:
    return DeepPETMethod(
        image_size,
        width=trial.model.deeppet.width,
        lr=trial.row.lr,
        weight_decay=trial.row.weight_decay,
    )
