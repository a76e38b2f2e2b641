"""The contract between a row's method and the training/evaluation loop.

A *method* is an ``nn.Module`` that owns its networks and knows three things: which batch
keys it needs, how to compute its training losses, and how to produce a reconstruction.
The trainable (``trainables/``) only ever talks to this interface, so a new row family
never touches the experiment or tracking code.

Batch keys (tensors on the method's device, float32, intensities on the dataset's
normalised scale where full-dose slices lie roughly in [0, 1]):

- ``lpet``        [B, 1, H, W]  low-dose slice (the condition)
- ``spet``        [B, 1, H, W]  full-dose slice (the target)
- ``lpet_nas``    [B, 5, H, W]  low-dose slices i-2..i+2 (NAS guidance input)
- ``spet_nas``    [B, 5, H, W]  full-dose slices i-2..i+2 (NAS guidance target, eq. 5)
- ``negatives``   [B, N, H, W]  full-dose slices of other subjects (contrastive loss)
- ``sinogram``    [B, 1, A, D]  measured sinogram (paper 000 rows)
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.utils.data
from torch import nn

from ablate.shared_cache import SharedCache

Batch = dict[str, torch.Tensor]


class Method(nn.Module, ABC):
    """A trainable reconstruction method: networks + losses + sampler of one row."""

    #: True when :meth:`reconstruct` draws random samples (reports AMS and SD).
    stochastic: bool = False
    #: Batch keys this method reads; checked against the dataset at build time.
    required_keys: frozenset[str] = frozenset({"lpet", "spet"})

    @abstractmethod
    def training_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Return the loss terms of one step; key ``"loss"`` is the weighted total to minimise.

        Other keys (``"main"``, ``"guide_nas"``, ``"contrastive"``, ...) are logged as
        ``loss/<term>``; they are unweighted values of each term.
        """

    @abstractmethod
    def reconstruct(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """One reconstruction [B, 1, H, W] of the full-dose image from the batch's inputs."""

    def configure_optimizers(self, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
        """The optimisers :meth:`training_step` steps; one Adam over every trainable parameter
        (frozen parts, such as PMDM's estimator, are left out).

        ``lr`` and ``weight_decay`` arrive resolved (``ablate.training.trial.optimiser_settings``:
        the row's over ``train``'s); use them as given. GANs override this for their two
        optimisers.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return [torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)]

    def training_step(
        self, batch: Batch, optimizers: list[torch.optim.Optimizer]
    ) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the detached loss terms of :meth:`training_losses`.

        The training loop calls only this. GANs override it to alternate discriminator and
        generator updates with their own optimisers from :meth:`configure_optimizers`.
        The loop checks every returned term for NaN/inf, so terms must be honest.
        """
        losses = self.training_losses(batch)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        for opt in optimizers:
            opt.step()
        return {name: value.detach() for name, value in losses.items()}

    def prepare(self, train_data: torch.utils.data.Dataset, cache: SharedCache, seed: int) -> None:
        """Work a method needs before its own training loop (e.g. PMDM's frozen stage-1
        estimator, built once per content hash through ``cache``, which trials share).

        Most methods need nothing, hence the empty default.
        """

    def noise_level_diagnostics(
        self, batch: Batch, generator: torch.Generator
    ) -> list[tuple[float, torch.Tensor]] | None:
        """Diffusion rows: ``(gamma, one-step x0 estimate [B, 1, H, W])`` at fixed signal
        fractions ``gamma`` spread over the training schedule, the batch's ``spet`` noised
        with noise from ``generator`` (a CPU generator). The evaluation scores each against
        ``spet`` (``x0_psnr/level_<i>``): where in the schedule a row fails, not only that
        it does. None (the default): not a diffusion row."""
        return None

    def input_shapes(self, image_size: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the inference inputs for one sample, for parameter/GMAC counting."""
        return {"lpet": (1, 1, image_size, image_size)}
