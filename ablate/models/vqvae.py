"""VQ-VAE (van den Oord et al. 2017), conditioned as paper 000's baseline: sinogram in, image out.

Encoder: stride-2 4x4 convs (``downsample`` of them) and two residual blocks, then a 1x1
projection to ``code_dim``; the latent grid is quantised to its nearest codebook vectors
(straight-through gradients); the decoder mirrors the encoder with transposed convs. The
loss is the paper's: reconstruction + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """ReLU -> 3x3 conv -> ReLU -> 1x1 conv, added to the input (VQ-VAE's residual block)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup with a straight-through gradient estimator."""

    def __init__(self, num_codes: int, code_dim: int) -> None:
        super().__init__()
        self.codebook = nn.Embedding(num_codes, code_dim)
        self.codebook.weight.data.uniform_(-1.0 / num_codes, 1.0 / num_codes)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise z [B, D, h, w]; return (quantised with straight-through grad, codebook
        loss, commitment loss)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        codes = self.codebook.weight
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)
        quant = self.codebook(dist.argmin(1)).view(b, h, w, d).permute(0, 3, 1, 2)
        codebook_loss = F.mse_loss(quant, z.detach())
        commitment_loss = F.mse_loss(z, quant.detach())
        return z + (quant - z).detach(), codebook_loss, commitment_loss


class VQVAE(nn.Module):
    """Image-shaped input [B, in_ch, H, W] -> image [B, 1, H, W] through a discrete latent."""

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 128,
        code_dim: int = 64,
        num_codes: int = 512,
        downsample: int = 2,
    ) -> None:
        super().__init__()
        enc: list[nn.Module] = []
        ch = in_channels
        for i in range(downsample):
            enc += [nn.Conv2d(ch, width, 4, stride=2, padding=1)]
            if i < downsample - 1:
                enc.append(nn.ReLU())
            ch = width
        enc += [nn.Conv2d(width, width, 3, padding=1), ResBlock(width, width // 4)]
        enc += [ResBlock(width, width // 4), nn.ReLU(), nn.Conv2d(width, code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = VectorQuantizer(num_codes, code_dim)
        dec: list[nn.Module] = [nn.Conv2d(code_dim, width, 3, padding=1)]
        dec += [ResBlock(width, width // 4), ResBlock(width, width // 4)]
        for i in range(downsample):
            last = i == downsample - 1
            dec += [nn.ReLU(), nn.ConvTranspose2d(width, 1 if last else width, 4, 2, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (reconstruction, codebook loss, commitment loss)."""
        quant, codebook_loss, commitment_loss = self.quantizer(self.encoder(x))
        return self.decoder(quant), codebook_loss, commitment_loss
