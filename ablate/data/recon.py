"""OSEM reconstruction (MLEM when ``subsets == 1``) of batched 2D sinograms.

The system model is ``ybar = att * A(PSF(x)) + background`` per slice, where ``att`` is the
attenuation factor of each line of response. Low- and full-dose data go through exactly
the same function and settings, so their difference is the noise of the counts only.
"""

from __future__ import annotations

import torch

from ablate.data.projector import GaussianPSF, ParallelBeamProjector


def osem(
    counts: torch.Tensor,
    projector: ParallelBeamProjector,
    iterations: int,
    attenuation: torch.Tensor | None = None,
    psf: GaussianPSF | None = None,
    background: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reconstruct ``[B, H, W]`` images from ``[B, angles, bins]`` measured counts.

    ``counts`` must already be divided by the per-slice calibration (counts per unit activity)
    so that the result is in activity units. Pixels outside the projector's field of view stay 0.
    """
    b = counts.shape[0]
    subsets = projector.subsets
    blur = psf if psf is not None else (lambda v: v)
    att = attenuation if attenuation is not None else torch.ones_like(counts)
    bg = background if background is not None else torch.zeros_like(counts)
    mask = projector.fov_mask
    sens = [blur(projector.back(att[:, s::subsets], s)) for s in range(subsets)]
    x = mask.expand(b, -1, -1).clone()
    for _ in range(iterations):
        for s in range(subsets):
            att_s = att[:, s::subsets]
            expected = att_s * projector.forward(blur(x), s) + bg[:, s::subsets]
            ratio = torch.where(expected > 0, counts[:, s::subsets] / expected.clamp_min(1e-12), 0)
            update = blur(projector.back(att_s * ratio, s))
            x = torch.where(sens[s] > 0, x * update / sens[s].clamp_min(1e-12), 0) * mask
            # background pixels shrink geometrically towards float32 denormals, which make
            # CPU matrix products ~100x slower: flush them to exact zero
            x = torch.where(x > 1e-30, x, 0)
    return x


def gaussian_filter(images: torch.Tensor, pixel_mm: float, fwhm_mm: float) -> torch.Tensor:
    """Post-reconstruction Gaussian filter of ``[B, H, W]`` images (no-op when fwhm is 0)."""
    if fwhm_mm <= 0:
        return images
    psf = GaussianPSF(images.shape[-1], pixel_mm, fwhm_mm, device=images.device)
    return psf(images)
