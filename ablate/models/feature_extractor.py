"""Auxiliary-guidance feature extractors of paper 003 (sec. 3.2, eq. 5).

For one guidance type (the NAS slice stack or the spectrum) and each level ``k = 1..M``, the
guide image is downsampled ``k`` times by stride-2 3x3 convs, encoded by a small ResNet into a
``guide_channels`` feature map (fed to the guided ResBlocks of the UNets at the matching
resolution), and decoded by a 3x3 head back to the guide's channels. The head's output is
pulled towards the full-dose counterpart with L1 (eq. 5), which is what makes the features
carry full-dose information.

Deliberate difference from the reference code: there the full-dose target goes through the
*same learned* stride-2 convs as the input, so shrinking those convs to zero makes the loss
vanish without learning anything. Here the target is average-pooled by ``2**k``, a fixed
operator that cannot collapse; the input path keeps the learned convs (and the paper's
parameter count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ablate.models.unet import ResBlock


class LevelExtractor(nn.Module):
    """Guide features at downsampling level ``k`` (maps of size ``H / 2**k``).

    The ResNet widens ``guide_channels / 8 -> /4 -> /2 -> 3/4 -> 1`` (8, 16, 32, 48, 64 at the
    paper's 64 channels), with GroupNorm of 8 groups.
    """

    def __init__(self, in_channels: int, level: int, guide_channels: int = 64) -> None:
        super().__init__()
        if level < 1:
            raise ValueError(f"guidance level must be >= 1, got {level}")
        if guide_channels % 8:
            raise ValueError(f"guide_channels must be a multiple of 8, got {guide_channels}")
        self.level = level
        self.down = nn.Sequential(
            *(nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1) for _ in range(level))
        )
        quarter = guide_channels // 4
        widths = (quarter, 2 * quarter, 3 * quarter, 4 * quarter)
        self.stem = nn.Conv2d(in_channels, guide_channels // 8, 3, padding=1)
        blocks = []
        ch = guide_channels // 8
        for width in widths:
            blocks.append(ResBlock(ch, width, groups=8))
            ch = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(guide_channels, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (guide feature map, head reconstruction of the downsampled guide)."""
        h = self.stem(self.down(x))
        for block in self.blocks:
            h = block(h)
        return h, self.head(h)


class GuidanceExtractor(nn.Module):
    """One guidance type: a :class:`LevelExtractor` for each level ``k = 1..levels``."""

    def __init__(self, in_channels: int, levels: int = 3, guide_channels: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.extractors = nn.ModuleList(
            LevelExtractor(in_channels, k, guide_channels) for k in range(1, levels + 1)
        )

    def forward(
        self, guide: torch.Tensor, target: torch.Tensor | None = None
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        """Guide maps ``{k: features}`` and, given the full-dose ``target``, the eq.-5 loss:
        the sum over levels of the mean absolute error at that level."""
        if guide.shape[1] != self.in_channels:
            raise ValueError(
                f"guidance input has {guide.shape[1]} channels, expected {self.in_channels}"
            )
        maps: dict[int, torch.Tensor] = {}
        loss = guide.new_zeros(()) if target is not None else None
        for extractor in self.extractors:
            feats, recon = extractor(guide)
            maps[extractor.level] = feats
            if target is not None:
                down = F.avg_pool2d(target, 2**extractor.level)
                loss = loss + F.l1_loss(recon, down)
        return maps, loss
