"""A 2D parallel-beam PET projector as sparse system matrices, plus an image-space PSF.

Why a system matrix: on CPU, a `torch.sparse_csr` matrix-times-dense product projects a whole
batch of slices in one call and is the fastest option measured here (DESIGN.md section 4);
on a GPU the same code runs unchanged. The back projector is the exact transpose, stored as
its own CSR matrix, so forward and back are adjoint by construction (tested by the
inner-product identity).

Geometry: distance-driven, each pixel is a box whose shadow on the detector has width
``pixel * max(|cos|, |sin|)`` centred on its projected centre, split between the bins it
overlaps (plain pixel-driven interpolation aliases at oblique angles: +12 % at 45 degrees).
Entries are in millimetres (pixel area over bin width), so ``A @ mu`` with ``mu``
in 1/mm is the attenuation line integral and ``A @ x`` of an activity map is its line
integral. Only pixels inside the circle that every angle sees
(the reconstruction field of view) have entries.

Sinogram layout: ``[..., angles, bins]`` (angles over [0, pi), bins centred on the image
centre). Ordered subsets take every ``subsets``-th angle, starting from subset index.
"""

from __future__ import annotations

import math
import warnings

import torch


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]):
    """A CSR matrix from (row, col, value) triplets with unique (row, col) pairs."""
    order = torch.argsort(rows * shape[1] + cols)
    rows, cols, vals = rows[order], cols[order], vals[order]
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we rely on mm only
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow.to(torch.int32), cols.to(torch.int32), vals, size=shape, check_invariants=False
        )


class ParallelBeamProjector:
    """Forward and back projection of square slices, optionally by ordered subset of angles.

    Args:
        image_size: slice width and height in pixels.
        pixel_mm: pixel size.
        angles: number of projection angles over [0, pi).
        bins: number of radial detector bins.
        bin_mm: radial bin width.
        subsets: number of ordered subsets (1 = plain MLEM); a matrix per subset is built.
        device: where the matrices live.
    """

    def __init__(
        self,
        image_size: int,
        pixel_mm: float,
        angles: int,
        bins: int,
        bin_mm: float,
        subsets: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        if angles % subsets:
            raise ValueError(f"{angles} angles cannot be split into {subsets} equal subsets")
        self.image_size, self.pixel_mm = image_size, pixel_mm
        self.angles, self.bins, self.bin_mm, self.subsets = angles, bins, bin_mm, subsets
        self.device = torch.device(device)
        n = image_size
        centre = (n - 1) / 2
        coords = (torch.arange(n, dtype=torch.float64) - centre) * pixel_mm
        y = -coords[:, None].expand(n, n)  # rows run from +y (top) to -y
        x = coords[None, :].expand(n, n)
        radius = ((bins - 1) / 2 - 1) * bin_mm
        inside = (x**2 + y**2) <= radius**2
        self.fov_mask = inside.to(torch.float32).to(self.device)
        pix = torch.nonzero(inside.flatten()).squeeze(1)
        xs, ys = x.flatten()[pix], y.flatten()[pix]
        theta = torch.arange(angles, dtype=torch.float64) * math.pi / angles
        weight = pixel_mm**2 / bin_mm
        self._fwd: list[torch.Tensor] = []
        self._back: list[torch.Tensor] = []
        per_subset = angles // subsets
        reach = math.ceil(pixel_mm / bin_mm) + 1  # bins one pixel footprint can touch
        for s in range(subsets):
            th = theta[s::subsets, None]
            cos, sin = torch.cos(th), torch.sin(th)
            u = (xs[None, :] * cos + ys[None, :] * sin) / bin_mm + (bins - 1) / 2
            half = 0.5 * pixel_mm * torch.maximum(cos.abs(), sin.abs()) / bin_mm
            first = torch.floor(u - half + 0.5).long()
            a = torch.arange(per_subset)[:, None].expand_as(first)
            p = pix[None, :].expand_as(first)
            rows, cols, vals = [], [], []
            for j in range(reach):
                b = first + j
                overlap = torch.minimum(u + half, b + 0.5) - torch.maximum(u - half, b - 0.5)
                inside_det = (b >= 0) & (b < bins)
                rows.append((a * bins + b.clamp(0, bins - 1))[inside_det])
                cols.append(p[inside_det])
                vals.append((overlap.clamp_min(0) / (2 * half) * weight).expand_as(b)[inside_det])
            rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
            keep = vals > 0
            rows, cols, vals = rows[keep], cols[keep], vals[keep].to(torch.float32)
            shape = (per_subset * bins, n * n)
            self._fwd.append(_csr(rows, cols, vals, shape).to(self.device))
            self._back.append(_csr(cols, rows, vals, (shape[1], shape[0])).to(self.device))

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return (self.angles, self.bins)

    def forward(self, image: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """Project ``[B, H, W]`` slices to ``[B, angles, bins]`` (or one subset's angles)."""
        b = image.shape[0]
        flat = image.reshape(b, -1).T.contiguous()
        if subset is not None:
            return (self._fwd[subset] @ flat).T.reshape(b, -1, self.bins)
        out = image.new_zeros(b, self.angles, self.bins)
        for s, mat in enumerate(self._fwd):
            out[:, s :: self.subsets] = (mat @ flat).T.reshape(b, -1, self.bins)
        return out

    def back(self, sinogram: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """Back-project ``[B, angles, bins]`` (or one subset's angles) to ``[B, H, W]``."""
        b, n = sinogram.shape[0], self.image_size
        if subset is not None:
            flat = sinogram.reshape(b, -1).T.contiguous()
            return (self._back[subset] @ flat).T.reshape(b, n, n)
        out = sinogram.new_zeros(b, n * n)
        for s, mat in enumerate(self._back):
            flat = sinogram[:, s :: self.subsets].reshape(b, -1).T.contiguous()
            out += (mat @ flat).T
        return out.reshape(b, n, n)


class GaussianPSF:
    """Isotropic Gaussian blur ``G X G^T`` with a banded matrix ``G`` (symmetric: self-adjoint).

    A dense matrix product beats ``conv2d`` on CPU for batches of large slices (DESIGN.md).
    Rows are normalised to sum to one away from the edges, so total activity is preserved.
    """

    def __init__(
        self, image_size: int, pixel_mm: float, fwhm_mm: float, device: torch.device | str = "cpu"
    ) -> None:
        self.fwhm_mm = fwhm_mm
        sigma = fwhm_mm / (2 * math.sqrt(2 * math.log(2))) / pixel_mm
        idx = torch.arange(image_size, dtype=torch.float64)
        if sigma <= 0:
            g = torch.eye(image_size, dtype=torch.float64)
        else:
            g = torch.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma) ** 2)
            g = g * (g >= 1e-6)
            g = g / g.sum(1, keepdim=True).max()
        self.matrix = g.to(torch.float32).to(device)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.fwhm_mm <= 0:
            return image
        return self.matrix @ image @ self.matrix.T
