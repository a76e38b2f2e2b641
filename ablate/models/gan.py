"""Networks of the GAN baselines of paper 000's Table 1: cGAN and pix2pix.

Both share the pix2pix U-Net generator (Isola et al. 2017: 4x4 stride-2 convs down to 1x1
for a 256x256 input, skip connections, dropout in the three innermost decoder blocks) and
differ in the discriminator, which always sees the condition concatenated with the image:

- :class:`PatchDiscriminator`: the 70x70 PatchGAN of pix2pix, one logit per image patch;
- :class:`ImageDiscriminator`: one logit per image, as in the conditional GAN of Mirza and
  Osindero (2014), built DCGAN-style from stride-2 convs down to 4x4 and a linear layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _down(in_ch: int, out_ch: int, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.LeakyReLU(0.2, inplace=False)]
    layers.append(nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1, bias=not norm))
    if norm:
        layers.append(nn.BatchNorm2d(out_ch))
    return nn.Sequential(*layers)


def _up(in_ch: int, out_ch: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.ReLU(inplace=False),
        nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class UNetGenerator(nn.Module):
    """pix2pix U-Net: ``depth`` stride-2 levels (8 for 256x256 reaches 1x1), skips at each.

    Channels are ``width * 2**i`` capped at ``8 * width``. The output is linear because
    PET intensities are not bounded to [-1, 1] (pix2pix's tanh assumes they are).
    """

    def __init__(
        self, in_channels: int = 1, width: int = 64, depth: int = 8, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"UNetGenerator needs depth >= 2, got {depth}")
        chans = [min(width * 2**i, 8 * width) for i in range(depth)]
        self.first = nn.Conv2d(in_channels, chans[0], 4, stride=2, padding=1)
        self.downs = nn.ModuleList(
            _down(chans[i - 1], chans[i], norm=i < depth - 1) for i in range(1, depth)
        )
        # decoder level i maps (skip-concatenated) features at level i+1 back to level i
        self.ups = nn.ModuleList()
        for i in reversed(range(1, depth)):
            in_ch = chans[i] if i == depth - 1 else 2 * chans[i]
            innermost = depth - 1 - i < 3
            self.ups.append(_up(in_ch, chans[i - 1], dropout if innermost and i > 1 else 0.0))
        self.last = nn.Sequential(
            nn.ReLU(inplace=False), nn.ConvTranspose2d(2 * chans[0], 1, 4, stride=2, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.first(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        h = skips.pop()
        for up in self.ups:
            h = torch.cat([up(h), skips.pop()], dim=1)
        return self.last(h)


def generator_depth(image_size: int, max_depth: int = 8) -> int:
    """Levels a pix2pix generator can have for this size: down to 1x1, at most ``max_depth``."""
    return min(max_depth, int(math.log2(image_size)))


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix's ``n_layers=3``: 70x70 receptive field), one logit per patch."""

    def __init__(self, in_channels: int = 2, width: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        ch = width
        for i in range(1, n_layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(ch, out, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2),
            ]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImageDiscriminator(nn.Module):
    """Conditional image-level discriminator: stride-2 convs to 4x4, then one linear logit."""

    def __init__(self, image_size: int, in_channels: int = 2, width: int = 64) -> None:
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"ImageDiscriminator needs a power-of-two size >= 8: {image_size}")
        layers: list[nn.Module] = []
        ch, size, i = in_channels, image_size, 0
        while size > 4:
            out = width * min(2**i, 8)
            layers.append(nn.Conv2d(ch, out, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2))
            ch, size, i = out, size // 2, i + 1
        self.features = nn.Sequential(*layers)
        self.logit = nn.Linear(ch * 4 * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.features(x).flatten(1))
