"""Test-time evaluation of a method: single-sample metrics, AMS over K samples, sampling SD.

AMS (paper 003): the mean of K stochastic samples of one input; SD: the per-pixel standard
deviation over those K samples, averaged over pixels and slices, on the [0, 1] scale.
The K samples of a slice are drawn as one batch (batched AMS). Deterministic methods
report single-sample metrics only. The slices evaluated are spread evenly over the split
and fixed by its size, so every row and seed is scored on the same slices. Diffusion rows
also report the per-noise-level diagnostic on those slices: the PSNR of the network's
one-step ``x_0`` estimate at 8 signal fractions ``gamma`` spread over the training schedule
(``x0_psnr/level_<i>``, level 0 the cleanest, with its ``x0_gamma/level_<i>``), the noise
drawn from a generator of its own so the samples do not change. Sampling runs
under ``torch.inference_mode`` and, with ``train.precision: bf16``, bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ablate.config import TrialConfig
from ablate.data.dataset import SliceDataset
from ablate.methods.base import Batch, Method
from ablate.metrics import image_metrics, psnr, sampling_sd
from ablate.models.deeppet import resample_sinogram
from ablate.precision import autocast

#: How many slices of images to keep as the ``samples.npz`` artifact.
N_SAMPLE_IMAGES = 4
#: Metric-name prefixes of the per-noise-level diagnostic (``<prefix>/level_<i>``).
X0_PSNR, X0_GAMMA = "x0_psnr", "x0_gamma"


@dataclass
class Evaluation:
    summary: dict[str, float]
    per_slice: pd.DataFrame
    images: dict[str, np.ndarray]


def evaluation_indices(n_items: int, n_slices: int) -> list[int]:
    """``n_slices`` indices spread evenly over a split of ``n_items`` items."""
    if n_items <= n_slices:
        return list(range(n_items))
    return np.linspace(0, n_items - 1, n_slices).round().astype(int).tolist()


def _collate(dataset: SliceDataset, indices: list[int], device: torch.device) -> Batch:
    items = [dataset[i] for i in indices]
    return {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}


def _input_image(batch: Batch) -> torch.Tensor:
    """What the row reconstructs from, as an image: the LPET slice, or the sinogram
    resampled to the image grid (angles x bins stretched to H x W) for sinogram rows."""
    if "lpet" in batch:
        return batch["lpet"]
    return resample_sinogram(batch["sinogram"], tuple(batch["spet"].shape[-2:]))


@torch.inference_mode()
def evaluate_method(
    method: Method, dataset: SliceDataset, trial: TrialConfig, samples: int
) -> Evaluation:
    """Metrics of ``method`` on the split ``dataset``; ``samples`` = K for stochastic rows."""
    method.eval()
    device = next(method.parameters()).device
    indices = evaluation_indices(len(dataset), trial.train.eval_slices)
    k = samples if method.stochastic else 1
    generator = torch.Generator(device=device).manual_seed(trial.seed + 7919)
    outputs, references, inputs = [], [], []
    chunk = max(1, trial.train.batch_size * 4 // k)
    for start in range(0, len(indices), chunk):
        batch = _collate(dataset, indices[start : start + chunk], device)
        b = batch["spet"].shape[0]
        repeated = {key: value.repeat(k, *[1] * (value.dim() - 1)) for key, value in batch.items()}
        with autocast(trial.train.precision, device):
            out = method.reconstruct(repeated, generator=generator)
        outputs.append(out.float().reshape(k, b, *out.shape[1:]).cpu())
        references.append(batch["spet"].float().cpu())
        inputs.append(_input_image(batch).float().cpu())
    summary_diag = noise_level_summary(method, dataset, indices, trial)
    out = torch.cat(outputs, dim=1)  # [K, B, 1, H, W]
    ref = torch.cat(references)
    single = image_metrics(out[0], ref)
    summary = {name: float(values.mean()) for name, values in single.items()}
    per_slice = pd.DataFrame({name: values.numpy() for name, values in single.items()})
    per_slice.insert(0, "index", indices)
    input_name = "input" if "lpet" in batch else "sinogram"
    images = {
        input_name: torch.cat(inputs)[:N_SAMPLE_IMAGES, 0].numpy(),
        "reference": ref[:N_SAMPLE_IMAGES, 0].numpy(),
        "output": out[0, :N_SAMPLE_IMAGES, 0].numpy(),
    }
    if k > 1:
        ams = image_metrics(out.mean(dim=0), ref)
        summary.update({f"ams_{name}": float(values.mean()) for name, values in ams.items()})
        for name, values in ams.items():
            per_slice[f"ams_{name}"] = values.numpy()
        summary["sd"] = sampling_sd(out)
        images["sd_map"] = out[:, :N_SAMPLE_IMAGES, 0].std(dim=0).numpy()
    summary.update(summary_diag)
    return Evaluation(summary, per_slice, images)


@torch.inference_mode()
def noise_level_summary(
    method: Method, dataset: SliceDataset, indices: list[int], trial: TrialConfig
) -> dict[str, float]:
    """``x0_psnr/level_<i>`` (mean over the slices) and ``x0_gamma/level_<i>`` of a diffusion
    row's :meth:`~ablate.methods.base.Method.noise_level_diagnostics`; {} for other rows.
    The noise comes from a CPU generator seeded by the trial's seed alone, so every
    evaluation of a trial (and every row of a seed) noises the slices identically."""
    device = next(method.parameters()).device
    generator = torch.Generator().manual_seed(trial.seed + 104729)
    psnrs: dict[int, list[torch.Tensor]] = {}
    gammas: dict[int, float] = {}
    chunk = max(1, trial.train.batch_size * 4)
    for start in range(0, len(indices), chunk):
        batch = _collate(dataset, indices[start : start + chunk], device)
        with autocast(trial.train.precision, device):
            levels = method.noise_level_diagnostics(batch, generator)
        if levels is None:
            return {}
        ref = batch["spet"].float().cpu()
        for i, (gamma, x0) in enumerate(levels):
            gammas[i] = gamma
            psnrs.setdefault(i, []).append(psnr(x0.float().cpu(), ref))
    out: dict[str, float] = {}
    for i, gamma in gammas.items():
        out[f"{X0_PSNR}/level_{i}"] = float(torch.cat(psnrs[i]).mean())
        out[f"{X0_GAMMA}/level_{i}"] = gamma
    return out


def write_evaluation_artifacts(evaluation: Evaluation, folder: Path) -> None:
    """``test_metrics.parquet`` (per slice) and ``samples.npz`` (images for dashboards)."""
    evaluation.per_slice.to_parquet(folder / "test_metrics.parquet", index=False)
    np.savez_compressed(folder / "samples.npz", **evaluation.images)
