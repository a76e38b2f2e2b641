"""One SR3-style UNet family for every network of paper 003: the SR3 baseline denoiser, the
coarse prediction module (CPM) and the iterative refinement module's denoiser (IRM).

The three differ only in constructor arguments (widths, multipliers, attention, whether a
noise-level embedding exists, which ResBlocks are guided), so a row of the ablation table is
a set of arguments, not a new class. Layer layout follows SR3 (Saharia et al.): a 3x3 stem,
``res_blocks`` ResBlocks per level with a strided-conv downsample between levels, a middle
of two ResBlocks (the first with self-attention), ``res_blocks + 1`` ResBlocks per level on
the way up (each fed a skip connection), nearest upsample + 3x3 conv, and a GroupNorm-SiLU-conv
head. With the paper's widths this layout reproduces the paper's parameter counts
(``ablate count``).

Guided ResBlocks (paper 003 eq. 5, after Ren et al. 2022) receive feature maps from the
auxiliary-guidance extractors (``ablate.models.feature_extractor``). Guide maps are keyed by
their downsampling exponent ``k`` (a map of size ``image_size / 2**k``), which is also the
index of the encoder level they feed; the middle sits at level ``len(channel_mults) - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

GuideMaps = Mapping[int, torch.Tensor]


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count dividing ``channels`` (32 at paper widths),
    so tiny test widths (8, 16) still build."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class NoiseLevelEmbedding(nn.Module):
    """WaveGrad-style embedding of a continuous noise level: sinusoids of ``scale * level``
    followed by an MLP ``dim -> 4 dim -> dim``.

    The level is ``sqrt(gamma)`` in [0, 1]; ``scale`` stretches it so neighbouring levels get
    distinguishable sinusoids (WaveGrad uses 5000; 1000 suits a few-thousand-step schedule).
    """

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"noise-level embedding width must be even, got {dim}")
        self.dim = dim
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            -math.log(1e4) * torch.arange(half, device=level.device, dtype=torch.float32) / half
        )
        angles = self.scale * level.float().reshape(-1, 1) * freqs
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


class ConvBlock(nn.Sequential):
    """GroupNorm -> SiLU -> (dropout) -> 3x3 conv: the pre-activation unit of SR3 ResBlocks."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0, groups: int = 32) -> None:
        super().__init__(
            group_norm(in_ch, groups),
            nn.SiLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
        )


class ResBlock(nn.Module):
    """Two pre-activation conv units with a residual path; the noise-level embedding (when the
    network has one) is projected and added between them, as in SR3/WaveGrad.

    When ``guide_streams > 0`` the block is a *guided* ResBlock: before each conv unit the
    guide maps of every stream are projected by a 1x1 conv (shared by the streams, so they land
    in one feature space), concatenated with the activations and fused back to the block's
    width by another 1x1 conv.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int | None = None,
        dropout: float = 0.0,
        groups: int = 32,
        guide_streams: int = 0,
        guide_channels: int = 64,
    ) -> None:
        super().__init__()
        self.block1 = ConvBlock(in_ch, out_ch, groups=groups)
        self.block2 = ConvBlock(out_ch, out_ch, dropout=dropout, groups=groups)
        self.emb = nn.Linear(emb_dim, out_ch) if emb_dim is not None else None
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.guide_streams = guide_streams
        if guide_streams:
            self.inject1 = nn.Conv2d(guide_channels, in_ch, 1)
            self.fuse1 = nn.Conv2d((1 + guide_streams) * in_ch, in_ch, 1)
            self.inject2 = nn.Conv2d(guide_channels, out_ch, 1)
            self.fuse2 = nn.Conv2d((1 + guide_streams) * out_ch, out_ch, 1)

    def _guide(
        self, h: torch.Tensor, guides: Sequence[torch.Tensor], inject: nn.Module, fuse: nn.Module
    ) -> torch.Tensor:
        if len(guides) != self.guide_streams:
            raise ValueError(f"guided ResBlock expects {self.guide_streams} guide maps")
        return fuse(torch.cat([h, *(inject(g) for g in guides)], dim=1))

    def forward(
        self,
        x: torch.Tensor,
        emb: torch.Tensor | None = None,
        guides: Sequence[torch.Tensor] = (),
    ) -> torch.Tensor:
        h = self._guide(x, guides, self.inject1, self.fuse1) if self.guide_streams else x
        h = self.block1(h)
        if self.emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        if self.guide_streams:
            h = self._guide(h, guides, self.inject2, self.fuse2)
        return self.block2(h) + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual connection (SR3)."""

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None], v.transpose(1, 2)[:, None]
        )
        return x + self.proj(out[:, 0].transpose(1, 2).reshape(b, c, h, w))


class Stage(nn.Module):
    """A ResBlock optionally followed by self-attention: one entry of the UNet's block lists."""

    def __init__(self, block: ResBlock, attention: SelfAttention | None) -> None:
        super().__init__()
        self.block = block
        self.attn = attention

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor | None, guides: Sequence[torch.Tensor] = ()
    ) -> torch.Tensor:
        x = self.block(x, emb, guides)
        return self.attn(x) if self.attn is not None else x


class UNet(nn.Module):
    """SR3-style UNet; see the module docstring for the layout.

    Args:
        in_channels / out_channels: image channels in and out.
        base_width: channels of the first level; level ``i`` has ``base_width * mults[i]``.
        channel_mults: one multiplier per level (``len - 1`` downsamplings).
        res_blocks: ResBlocks per encoder level (the decoder has one more per level).
        attn_res: feature-map sizes (in pixels) whose encoder/decoder blocks get attention;
            the first middle block always has attention.
        image_size: input size, needed to turn ``attn_res`` into levels.
        dropout: dropout before the second conv of every ResBlock.
        noise_embedding: add a WaveGrad noise-level embedding (diffusion denoisers) or not
            (the deterministic CPM).
        guide_levels: encoder levels (1 = first downsampled level) whose ResBlocks are guided.
        guide_mid: whether the two middle ResBlocks are guided.
        guide_streams: number of guidance types fused in guided blocks (NAS, spectrum).
        guide_channels: channels of each guide map.
        norm_groups: GroupNorm groups (reduced to a divisor of narrow widths).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_width: int = 64,
        channel_mults: Sequence[int] = (1, 2, 3, 4),
        res_blocks: int = 3,
        attn_res: Sequence[int] = (),
        image_size: int = 128,
        dropout: float = 0.0,
        noise_embedding: bool = False,
        guide_levels: Sequence[int] = (),
        guide_mid: bool = False,
        guide_streams: int = 0,
        guide_channels: int = 64,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        levels = len(channel_mults)
        if image_size % 2 ** (levels - 1):
            raise ValueError(
                f"image size {image_size} is not divisible by 2^{levels - 1} ({levels} UNet levels)"
            )
        if any(not 1 <= lvl < levels - 1 for lvl in guide_levels):
            raise ValueError(f"guide levels {tuple(guide_levels)} must lie in 1..{levels - 2}")
        if (guide_levels or guide_mid) and guide_streams < 1:
            raise ValueError("guided blocks need guide_streams >= 1")
        self.guide_levels = tuple(guide_levels)
        self.guide_mid = guide_mid
        self.mid_level = levels - 1
        self.noise_embed = NoiseLevelEmbedding(base_width) if noise_embedding else None
        emb_dim = base_width if noise_embedding else None

        def stage(cin: int, cout: int, guided: bool, attn: bool) -> Stage:
            block = ResBlock(
                cin,
                cout,
                emb_dim,
                dropout,
                norm_groups,
                guide_streams if guided else 0,
                guide_channels,
            )
            return Stage(block, SelfAttention(cout, norm_groups) if attn else None)

        self.stem = nn.Conv2d(in_channels, base_width, 3, padding=1)
        skips = [base_width]
        ch = base_width
        size = image_size
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for lvl, mult in enumerate(channel_mults):
            blocks = nn.ModuleList()
            for _ in range(res_blocks):
                guided = lvl in self.guide_levels
                blocks.append(stage(ch, base_width * mult, guided, size in attn_res))
                ch = base_width * mult
                skips.append(ch)
            self.down.append(blocks)
            if lvl < levels - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                size //= 2
        self.mid = nn.ModuleList([stage(ch, ch, guide_mid, True), stage(ch, ch, guide_mid, False)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for lvl in reversed(range(levels)):
            out = base_width * channel_mults[lvl]
            blocks = nn.ModuleList()
            for _ in range(res_blocks + 1):
                blocks.append(stage(ch + skips.pop(), out, False, size in attn_res))
                ch = out
            self.up.append(blocks)
            if lvl > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
                size *= 2
        self.head = ConvBlock(ch, out_channels, groups=norm_groups)

    def forward(
        self,
        x: torch.Tensor,
        noise_level: torch.Tensor | None = None,
        guides: Sequence[GuideMaps] = (),
    ) -> torch.Tensor:
        """``noise_level``: [B] (``sqrt(gamma)``) when the net embeds it; ``guides``: one map
        per guidance stream, ``{k: [B, guide_channels, H / 2**k, W / 2**k]}``."""
        if self.noise_embed is not None:
            if noise_level is None:
                raise ValueError("this UNet embeds a noise level: pass noise_level")
            emb = self.noise_embed(noise_level)
        else:
            emb = None

        def at(level: int) -> list[torch.Tensor]:
            return [g[level] for g in guides]

        h = self.stem(x)
        skips = [h]
        for lvl, blocks in enumerate(self.down):
            level_guides = at(lvl) if lvl in self.guide_levels else []
            for blk in blocks:
                h = blk(h, emb, level_guides)
                skips.append(h)
            if lvl < len(self.downsample):
                h = self.downsample[lvl](h)
                skips.append(h)
        mid_guides = at(self.mid_level) if self.guide_mid else []
        for blk in self.mid:
            h = blk(h, emb, mid_guides)
        for i, blocks in enumerate(self.up):
            for blk in blocks:
                h = blk(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(h)


@dataclass(frozen=True)
class UNetShape:
    """What a row's settings say about one of its UNets: width, multipliers, blocks,
    attention sizes and dropout. The method adds what only it knows (input channels, image
    size, noise embedding, guidance) in :meth:`build`; every network has one output channel.
    """

    width: int
    mults: tuple[int, ...]
    res_blocks: int
    attn_res: tuple[int, ...] = ()
    dropout: float = 0.0

    def build(
        self, in_channels: int, image_size: int, *, noise_embedding: bool, **guidance: Any
    ) -> UNet:
        """The UNet of this shape; ``guidance`` holds :class:`UNet`'s ``guide_*`` arguments."""
        return UNet(
            in_channels,
            1,
            base_width=self.width,
            channel_mults=self.mults,
            res_blocks=self.res_blocks,
            attn_res=self.attn_res,
            image_size=image_size,
            dropout=self.dropout,
            noise_embedding=noise_embedding,
            **guidance,
        )
