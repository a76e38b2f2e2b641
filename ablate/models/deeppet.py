"""DeepPET: the convolutional encoder-decoder that maps a sinogram straight to a PET image.

Paper 000 (Sec. 2.1) uses it as the MSE posterior-mean estimator ``f_phi`` of PMDM-PET and
as the regression baseline of its Table 1; the design follows Haggstrom et al. (2019) as the
paper describes it: 22 convolutions; the encoder's filters shrink from 7x7 (first two
layers) to 5x5 (next two) to 3x3, stride-2 layers double the feature maps, reaching
``8 * width`` maps at 1/8 of the input (512 maps at 32x32 for ``width=64`` and a 256x256
input); the decoder upsamples by interpolation, each upsampling followed by a 3x3 conv that
halves the maps, batch norm and ReLU.

The sinogram is resampled to the image grid before the first layer
(:func:`ablate.models.deeppet.resample_sinogram`), so one network serves any (angles x bins).

Layer count: encoder 10 (4 at the bottleneck), decoder 3 stages x 3, head 3 = 22.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resample_sinogram(sinogram: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resample a sinogram [B, C, A, D] (angles x radial bins) to [B, C, H, W].

    Paper 000 pads sinogram and image to the same 256x256 canvas; resampling does the same
    job for any detector geometry (e.g. 252 angles x 344 bins is larger than 256 in one
    axis, so padding alone cannot), keeps every angle and bin, and lets conditional networks
    concatenate the sinogram with image-shaped tensors.
    """
    if tuple(sinogram.shape[-2:]) == tuple(size):
        return sinogram
    return F.interpolate(sinogram, size=size, mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Sequential):
    """Conv -> BatchNorm -> ReLU, 'same' padding; the building block of DeepPET."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Interpolation x2, then a 3x3 conv halving the maps (+BN+ReLU), then two 3x3 convs."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.reduce = ConvBNReLU(in_ch, out_ch, 3)
        self.refine = nn.Sequential(ConvBNReLU(out_ch, out_ch, 3), ConvBNReLU(out_ch, out_ch, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.refine(self.reduce(x))


class DeepPET(nn.Module):
    """Sinogram (resampled to the image grid) [B, in_ch, H, W] -> image [B, 1, H, W].

    ``H`` and ``W`` must be divisible by 8 (three stride-2 stages). The output is linear:
    the network is trained with MSE and estimates the posterior mean, which need not be
    non-negative where the reference is zero.
    """

    def __init__(self, width: int = 64, in_channels: int = 1, bottleneck_layers: int = 4) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            ConvBNReLU(in_channels, w, 7),
            ConvBNReLU(w, 2 * w, 7, stride=2),
            ConvBNReLU(2 * w, 2 * w, 5),
            ConvBNReLU(2 * w, 4 * w, 5, stride=2),
            ConvBNReLU(4 * w, 4 * w, 3),
            ConvBNReLU(4 * w, 8 * w, 3, stride=2),
            *[ConvBNReLU(8 * w, 8 * w, 3) for _ in range(bottleneck_layers)],
        )
        self.decoder = nn.Sequential(
            UpBlock(8 * w, 4 * w), UpBlock(4 * w, 2 * w), UpBlock(2 * w, w)
        )
        self.head = nn.Sequential(
            ConvBNReLU(w, w, 3), ConvBNReLU(w, w, 3), nn.Conv2d(w, 1, kernel_size=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"DeepPET needs H and W divisible by 8, got {tuple(x.shape[-2:])}")
        return self.head(self.decoder(self.encoder(x)))
