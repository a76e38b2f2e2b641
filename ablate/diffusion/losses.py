"""Loss terms of paper 003 (eqs. 3, 7, 8) as small functions of tensors.

Both contrastive forms compare the one-step estimate ``y~ = x_cp + r0~`` (eq. 6) with the
positive full-dose slice ``y`` and ``N`` negatives (full-dose slices of other subjects). They
return the *unweighted* term; the method multiplies by ``loss.k``.

Numerical sanity (shared by both forms): near ``t = T`` the estimate divides the predicted
noise by ``sqrt(gamma) ~ 7e-3`` and can be wildly out of range, and eq. 7's negative term is
unbounded below (it rewards moving away from the negatives without limit). The estimate is
therefore clamped into the data range ``[floor, hi]`` (``hi`` = the largest intensity among
the positive and the negatives) before either form sees it, which bounds both terms; the main
L1 noise loss keeps training the estimate everywhere. Negatives are averaged, not summed, so
the weight does not depend on ``N`` (the reference code also divides by ``N``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def noise_l1(pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Eqs. 3 and 8: mean absolute error between predicted and true noise."""
    return F.l1_loss(pred, noise)


def _clamped(
    estimate: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, floor: float
) -> torch.Tensor:
    hi = torch.maximum(positive.detach().amax(), negatives.detach().amax()).clamp_min(floor)
    return estimate.clamp(min=floor).minimum(hi)


def contrastive_likelihood(
    estimate: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Eq. 7 as written, with ``p~(y | r_t, c)`` a unit-variance Gaussian around ``y~``:
    ``mean (y~ - y)^2 / 2  -  mean_i mean (y~ - y_i)^2 / 2`` (constants dropped).

    ``estimate``, ``positive``: [B, 1, H, W]; ``negatives``: [B, N, H, W].
    """
    est = _clamped(estimate, positive, negatives, 0.0)
    pos = 0.5 * (est - positive).pow(2).mean()
    neg = 0.5 * (est - negatives).pow(2).mean()
    return pos - neg


def contrastive_reference_kl(
    estimate: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    t_frac: torch.Tensor,
    eps: float = 1e-3,
) -> torch.Tensor:
    """The reference code's form: pixel-wise ``KL(p || y~) = p (ln p - ln y~)`` of intensities
    treated as probabilities, ``(2 - t/T) KL(y || y~) - mean_i (1 + t/T) KL(y_i || y~)``,
    averaged over pixels. ``t_frac`` = ``t / T`` per sample, [B].

    Intensities are floored at ``eps`` (the reference floors at 1e-30, where ``ln`` reaches
    -69 and the negative term dominates every other loss); see the module docstring.
    """
    est = _clamped(estimate, positive, negatives, eps).log()
    w = t_frac.reshape(-1, 1, 1, 1).to(estimate)

    def kl(p: torch.Tensor) -> torch.Tensor:
        p = p.clamp_min(eps)
        return p * (p.log() - est)

    pos = ((2.0 - w) * kl(positive)).mean()
    neg = ((1.0 + w) * kl(negatives)).mean()
    return pos - neg
