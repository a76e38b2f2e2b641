"""Auxiliary-guidance inputs of paper 003: neighbouring axial slices (NAS) and spectra.

The dataset builds NAS stacks from its volumes; :func:`nas_indices` is the rule it shares
with anything else that stacks slices (off the volume -> the centre slice, as the reference
code does). :func:`spectrum` is computed on the fly inside the methods from ``lpet``/``spet``.
"""

from __future__ import annotations

import torch


def nas_indices(center: int, depth: int, radius: int = 2) -> list[int]:
    """Slice indices ``center - radius .. center + radius`` of a volume with ``depth`` slices;
    neighbours outside the volume are replaced by the centre slice."""
    if not 0 <= center < depth:
        raise IndexError(f"slice {center} outside a volume of {depth} slices")
    return [i if 0 <= i < depth else center for i in range(center - radius, center + radius + 1)]


def nas_stack(volume: torch.Tensor, center: int, radius: int = 2) -> torch.Tensor:
    """The NAS stack [2 radius + 1, H, W] around slice ``center`` of a [D, H, W] volume."""
    return volume[nas_indices(center, volume.shape[0], radius)]


def spectrum(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Log-magnitude spectrum ``20 ln|fftshift(fft2(x))|``, min-max scaled to [0, 1] per slice.

    Works on any [..., H, W] batch. A constant slice (e.g. an empty one) has a flat spectrum
    except at DC; the range guard keeps it finite instead of dividing 0 by 0.
    """
    mag = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1)).abs()
    spec = 20.0 * torch.log(mag + eps)
    flat = spec.flatten(-2)
    lo = flat.amin(-1, keepdim=True)[..., None]
    hi = flat.amax(-1, keepdim=True)[..., None]
    return (spec - lo) / (hi - lo).clamp_min(eps)
