"""Image-quality metrics on batched tensors, in two conventions.

Every function takes ``pred`` and ``ref`` of shape [B, 1, H, W] (``ref`` is the full-dose
reference) and returns one value per image, shape [B], as float64 on the input's device.
The work is a handful of batched convolutions and reductions: no Python loop over images,
so the training loop can call it on every evaluation batch, on CPU or GPU.

**Standard convention** (DESIGN.md sec. 7), what tables report as ``psnr/ssim/nmse/nrmse``:
per test subject *volume* (:func:`volume_metrics`: the subject's evaluated slices taken
together), then the mean over subjects. Per-image values (:func:`image_metrics`) are kept for
analysis, but a slice is a poor unit: an empty or constant slice (any brain volume cut to the
skull has some at its ends) has no data range, and a near-empty one makes NMSE's denominator
vanish (one dim slice read NMSE 612 and decided a table's NMSE column). Over a volume, those
slices are a few voxels among many: they count as what they are, mostly background.

- data range ``R`` = max - min of the reference, per image (per volume for volume metrics);
- PSNR = 10 log10(R^2 / MSE), MSE over all pixels;
- SSIM as ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=R)``: an 11x11 Gaussian window (truncated at 3.5
  sigma), K1 = 0.01, K2 = 0.03, averaged over the positions where the window fits entirely
  inside the image (skimage's crop of the border);
- NMSE = ||x - y||^2 / ||y||^2 (y the reference), NRMSE = sqrt(NMSE);
- over a volume: PSNR from the MSE over all its voxels and its range, SSIM the mean of the
  SSIM map over every valid window position of every slice (2D windows, the volume's range),
  NMSE the ratio of sums over all its voxels.

**Paper-003 convention** (``paper_*``), to compare with Han et al.'s Table 2. It follows the
authors' published evaluation script (``our_paper_metric.py`` in their repository), applied
per 2D slice:

- the foreground is the set of pixels where the reference is > 0.05 (intensities on the
  [0, 1] scale); *both* images are set to zero outside it;
- PSNR uses the MSE over foreground pixels only and the data range max - min over the
  foreground pixels of *both* images together (the script's ``dr``; DESIGN.md's one-line
  summary says "masked max - min of the reference", but the script takes the joint range);
- SSIM is skimage's default window (7x7 uniform, sample covariance, i.e. variances scaled by
  49/48) on the two masked images, with that same ``dr``. The script passes no data range,
  which skimage >= 0.20 rejects for float images (older releases silently used 2, the range
  of the float dtype); ``dr`` is the fix users of that code apply;
- NMSE = ||x_f - y_f||^2 / ||x_f||^2 over foreground pixels: the script calls skimage's
  ``normalized_root_mse(pred, ref)`` with the *prediction* in the reference slot, so the
  error is normalised by the prediction's energy, then squares it.

The script runs on whole volumes; we apply it to each slice, which is what the training loop
sees. Both conventions give ``nan`` where they are undefined, so callers average with
``nanmean``:

- identical images: PSNR = +inf, SSIM = 1, NMSE = 0;
- a constant reference (data range 0): PSNR and SSIM are nan (no peak to compare against);
  NMSE is +inf, or nan when the prediction is zero too;
- paper convention, a reference without foreground (every pixel <= 0.05): all nan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Paper 003's evaluation zeroes full-dose pixels at or below this value ([0, 1] scale).
PAPER_THRESHOLD = 0.05

#: The standard convention's metrics, as :func:`volume_metrics` and :func:`image_metrics` name them.
STANDARD = ("psnr", "ssim", "nmse", "nrmse")
#: The paper-003 convention's metrics (per slice).
PAPER = ("paper_psnr", "paper_ssim", "paper_nmse")

_K1, _K2 = 0.01, 0.03


def _check_pair(pred: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    if pred.shape != ref.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and ref {tuple(ref.shape)} differ in shape")
    if pred.ndim != 4 or pred.shape[1] != 1:
        raise ValueError(f"expected images [B, 1, H, W], got {tuple(pred.shape)}")
    # float64: E[x^2] - E[x]^2 in float32 loses the digits SSIM needs to match skimage.
    return pred.detach().to(torch.float64), ref.detach().to(torch.float64)


def _range(ref: Tensor) -> Tensor:
    flat = ref.flatten(1)
    return flat.amax(1) - flat.amin(1)


def _gaussian_1d(sigma: float = 1.5, truncate: float = 3.5) -> Tensor:
    """scipy.ndimage's discrete Gaussian: radius int(truncate * sigma + 0.5), sums to 1."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _uniform_1d(size: int = 7) -> Tensor:
    return torch.full((size,), 1.0 / size, dtype=torch.float64)


def _ssim(x: Tensor, y: Tensor, data_range: Tensor, window: Tensor, cov_norm: float) -> Tensor:
    """Mean SSIM per image with a separable window, over the window's 'valid' positions.

    Filtering with no padding gives exactly the map skimage keeps after cropping its border
    (its reflect padding only ever touches the cropped part).
    """
    size = window.numel()
    if min(x.shape[-2:]) < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size}, got {tuple(x.shape)}")
    w = window.to(x.device)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5, H, W]
    stack = F.conv2d(stack, w.view(1, 1, -1, 1).expand(5, 1, -1, 1), groups=5)
    stats = F.conv2d(stack, w.view(1, 1, 1, -1).expand(5, 1, 1, -1), groups=5)
    ux, uy, uxx, uyy, uxy = stats.unbind(1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    r = data_range.view(-1, 1, 1)
    c1, c2 = (_K1 * r) ** 2, (_K2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    out = s.flatten(1).mean(1)
    return torch.where(data_range > 0, out, torch.nan)


def _psnr(mse: Tensor, data_range: Tensor) -> Tensor:
    out = 10 * torch.log10(data_range**2 / mse)
    return torch.where(data_range > 0, out, torch.nan)


def psnr(pred: Tensor, ref: Tensor) -> Tensor:
    """PSNR in dB per image [B], standard convention (data range of the reference)."""
    x, y = _check_pair(pred, ref)
    return _psnr((x - y).pow(2).flatten(1).mean(1), _range(y))


def ssim(pred: Tensor, ref: Tensor) -> Tensor:
    """SSIM per image [B], standard convention (Gaussian 11x11, sigma 1.5; see module doc)."""
    x, y = _check_pair(pred, ref)
    return _ssim(x, y, _range(y), _gaussian_1d(), cov_norm=1.0)


def nmse(pred: Tensor, ref: Tensor) -> Tensor:
    """||pred - ref||^2 / ||ref||^2 per image [B]."""
    x, y = _check_pair(pred, ref)
    return (x - y).pow(2).flatten(1).sum(1) / y.pow(2).flatten(1).sum(1)


def nrmse(pred: Tensor, ref: Tensor) -> Tensor:
    """sqrt(NMSE) per image [B]."""
    return nmse(pred, ref).sqrt()


def paper_metrics(
    pred: Tensor, ref: Tensor, threshold: float = PAPER_THRESHOLD
) -> dict[str, Tensor]:
    """PSNR, SSIM and NMSE per image in paper 003's convention (see the module docstring).

    Returns keys ``paper_psnr``, ``paper_ssim``, ``paper_nmse``, each [B].
    """
    x, y = _check_pair(pred, ref)
    mask = y > threshold
    x, y = x * mask, y * mask
    count = mask.flatten(1).sum(1)
    inf = torch.tensor(torch.inf, dtype=x.dtype, device=x.device)
    hi = torch.maximum(
        torch.where(mask, x, -inf).flatten(1).amax(1), torch.where(mask, y, -inf).flatten(1).amax(1)
    )
    lo = torch.minimum(
        torch.where(mask, x, inf).flatten(1).amin(1), torch.where(mask, y, inf).flatten(1).amin(1)
    )
    empty = count == 0
    dr = torch.where(empty, torch.zeros_like(hi), hi - lo)
    sq_err = (x - y).pow(2).flatten(1).sum(1)
    nan = torch.full_like(dr, torch.nan)
    window = _uniform_1d(7)
    return {
        "paper_psnr": torch.where(empty, nan, _psnr(sq_err / count.clamp(min=1), dr)),
        "paper_ssim": _ssim(
            x, y, dr, window, cov_norm=window.numel() ** 2 / (window.numel() ** 2 - 1)
        ),
        "paper_nmse": torch.where(empty, nan, sq_err / x.pow(2).flatten(1).sum(1)),
    }


def image_metrics(pred: Tensor, ref: Tensor) -> dict[str, Tensor]:
    """Every per-image metric the tables use, keyed by their MLflow names, each [B].

    ``psnr, ssim, nmse, nrmse`` (standard) and ``paper_psnr, paper_ssim, paper_nmse``.
    """
    out = {"psnr": psnr(pred, ref), "ssim": ssim(pred, ref), "nmse": nmse(pred, ref)}
    out["nrmse"] = out["nmse"].sqrt()
    out.update(paper_metrics(pred, ref))
    return out


def volume_metrics(pred: Tensor, ref: Tensor) -> dict[str, float]:
    """PSNR, SSIM, NMSE, NRMSE of one volume, standard convention: ``pred`` and ``ref``
    [S, 1, H, W] are S slices of one subject, taken together (see the module docstring).

    nan where undefined: a reference constant over the whole volume has no data range
    (PSNR, SSIM nan), an all-zero one no energy (NMSE nan or inf).
    """
    x, y = _check_pair(pred, ref)
    data_range = (y.amax() - y.amin()).reshape(1)
    sq_err = (x - y).pow(2)
    out = {
        "psnr": _psnr(sq_err.mean().reshape(1), data_range),
        # every slice has the same number of window positions: the mean of the per-slice
        # means is the mean over all positions of the volume
        "ssim": _ssim(x, y, data_range.expand(x.shape[0]), _gaussian_1d(), cov_norm=1.0).mean(),
        "nmse": sq_err.sum() / y.pow(2).sum(),
    }
    out["nrmse"] = out["nmse"].sqrt()
    return {name: float(value.reshape(())) for name, value in out.items()}


def sampling_sd(samples: Tensor) -> float:
    """Paper 003's SD: per-pixel standard deviation over K samples, averaged over everything.

    ``samples`` is [K, B, 1, H, W] on the [0, 1] intensity scale (the caller rescales). The
    per-pixel deviation is the population one (``ddof=0``, numpy's ``std`` default; the paper
    does not say which), and K must be at least 2.
    """
    if samples.ndim != 5 or samples.shape[2] != 1:
        raise ValueError(f"expected samples [K, B, 1, H, W], got {tuple(samples.shape)}")
    if samples.shape[0] < 2:
        raise ValueError("the sampling SD needs at least K = 2 samples")
    return samples.detach().to(torch.float64).std(dim=0, correction=0).mean().item()
