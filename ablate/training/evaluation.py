"""Test-time evaluation of a method: metrics per subject volume, AMS over K samples, SD.

The standard metrics (``psnr, ssim, nmse, nrmse``) are computed per subject over the
subject's evaluated slices taken together (:func:`ablate.metrics.volume_metrics`), and the
split's value is the mean over its subjects: the convention of reconstruction papers, and one
under which empty or constant slices at a volume's ends are part of a volume rather than an
undefined (or exploding) metric of their own. The paper-003 metrics (``paper_*``) stay per
slice, as its evaluation script does them, averaged over the slices where they are defined
(slices with foreground).

Which slices: ``train.eval_slices`` per split, shared out evenly among its subjects (every
subject scored when the budget allows, each on the same number of slices, so the mean over
subjects weights them equally), spread evenly through each subject's volume at centred
positions (a systematic sample of the volume, which the volume's MSE, SSIM and NMSE average
over). A budget at or above the split's slice count scores whole volumes. The selection
depends on the split alone, so every row and seed is scored on the same slices; the cost
stays the budget the user set (and the plan estimated).

AMS (paper 003): the mean of K stochastic samples of one input, scored like a single sample;
SD: the per-pixel standard deviation over those K samples, averaged over pixels and slices,
on the [0, 1] scale. The K samples of a slice are drawn as one batch (batched AMS).
Deterministic methods report single-sample metrics only. Rows whose input is a low-dose image
also score that input against the reference, the same way (``input_*``): the "low-dose
input" line of a table, what doing nothing achieves. Sinogram rows get no such line: the
datasets hold no analytic reconstruction of the measured sinogram other than the reference
itself (the simulator's ``spet`` of a sinogram preset *is* the OSEM of those counts).

A metric that cannot be computed (a subject whose reference is constant, a row whose output
is not finite) raises :class:`MetricUndefined`, naming the split, subject and cause: the
trial fails, it never completes without its metrics.

Diffusion rows also report the per-noise-level diagnostic on those slices: the PSNR of the
network's one-step ``x_0`` estimate at 8 signal fractions ``gamma`` spread over the training
schedule (``x0_psnr/level_<i>``, level 0 the cleanest, with its ``x0_gamma/level_<i>``), per
subject volume and averaged over subjects, the noise drawn from a generator of its own so the
samples do not change. Sampling runs under ``torch.inference_mode`` and, with
``train.precision: bf16``, bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ablate.config import TrialConfig
from ablate.data.dataset import SliceDataset
from ablate.errors import UserError
from ablate.methods.base import Batch, Method
from ablate.metrics import PAPER, STANDARD, image_metrics, sampling_sd, volume_metrics
from ablate.models.deeppet import resample_sinogram
from ablate.precision import autocast

#: How many slices of images to keep as the ``samples.npz`` artifact.
N_SAMPLE_IMAGES = 4
#: Metric-name prefixes of the per-noise-level diagnostic (``<prefix>/level_<i>``).
X0_PSNR, X0_GAMMA = "x0_psnr", "x0_gamma"
#: Prefix of the low-dose input's metrics (``input_psnr``, ``input_paper_psnr``, ...).
INPUT = "input_"


class MetricUndefined(UserError):
    """A split's metric cannot be computed; the message says for which subject and why."""


@dataclass
class Evaluation:
    summary: dict[str, float]
    #: one row per evaluated slice: ``index, subject, slice`` and the per-slice metrics
    per_slice: pd.DataFrame
    #: one row per subject: ``subject, n_slices``, the standard metrics (``ams_*`` for K > 1)
    #: and ``input_*`` for rows with a low-dose input
    per_subject: pd.DataFrame
    images: dict[str, np.ndarray]
    #: K > 1: one row per subject x sample, the standard metrics of each single sample
    per_sample: pd.DataFrame | None = None


def _shares(sizes: list[int], budget: int) -> list[int]:
    """Slices per subject: ``budget`` shared as evenly as the subjects' sizes allow. Below
    one slice per subject, the subjects that get one are spread evenly over the split."""
    n = len(sizes)
    base, extra = divmod(budget, n)
    shares = [base] * n
    for j in range(extra):
        shares[int((j + 0.5) * n / extra)] += 1
    shares = [min(share, size) for share, size in zip(shares, sizes, strict=True)]
    left = min(budget, sum(sizes)) - sum(shares)
    while left > 0:  # what a short subject cannot take goes to those with room
        for i in range(n):
            if left and shares[i] < sizes[i]:
                shares[i] += 1
                left -= 1
    return shares


def evaluation_indices(dataset: SliceDataset, n_slices: int) -> list[int]:
    """The items of ``dataset`` evaluated on a budget of ``n_slices`` (module docstring):
    an even share per subject, at centred positions ``floor((j + 1/2) n_s / m_s)`` of its
    ``n_s`` slices, in subject then slice order."""
    by_subject = dataset.items_by_subject()
    items = list(by_subject.values())
    out = []
    for slices, m in zip(items, _shares([len(s) for s in items], n_slices), strict=True):
        out += [slices[int((j + 0.5) * len(slices) / m)] for j in range(m)]
    return out


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
    """Metrics of ``method`` on the split ``dataset``; ``samples`` = K for stochastic rows.

    Raises :class:`MetricUndefined` when a table metric cannot be computed."""
    method.eval()
    device = next(method.parameters()).device
    indices = evaluation_indices(dataset, trial.train.eval_slices)
    subjects = [dataset.locate(i)[0] for i in indices]
    k = samples if method.stochastic else 1
    generator = torch.Generator(device=device).manual_seed(trial.seed + 7919)
    outputs, references, inputs, lows = [], [], [], []
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
        if "lpet" in batch:
            lows.append(batch["lpet"].float().cpu())
    summary_diag = noise_level_summary(method, dataset, indices, trial)
    out = torch.cat(outputs, dim=1)  # [K, B, 1, H, W]
    ref = torch.cat(references)
    _check_finite(out, subjects, dataset.split, trial.row_name)
    summary, per_subject, single = score(out[0], ref, subjects)
    per_slice = pd.DataFrame({name: values.numpy() for name, values in single.items()})
    per_slice.insert(0, "index", indices)
    per_slice.insert(1, "subject", subjects)
    per_slice.insert(2, "slice", [dataset.locate(i)[1] for i in indices])
    input_name = "input" if "lpet" in batch else "sinogram"
    images = {
        input_name: torch.cat(inputs)[:N_SAMPLE_IMAGES, 0].numpy(),
        "reference": ref[:N_SAMPLE_IMAGES, 0].numpy(),
        "output": out[0, :N_SAMPLE_IMAGES, 0].numpy(),
    }
    per_sample = None
    if k > 1:
        ams_summary, ams_subject, ams = score(out.mean(dim=0), ref, subjects)
        for name, values in ams.items():
            per_slice[f"ams_{name}"] = values.numpy()
        summary.update({f"ams_{n}": v for n, v in ams_summary.items()})
        per_subject = per_subject.join(ams_subject[list(STANDARD)].add_prefix("ams_"))
        per_sample = pd.concat(
            [_per_subject(out[s], ref, subjects).assign(sample=s) for s in range(k)]
        )
        per_sample = per_sample[["subject", "sample", *STANDARD]].reset_index(drop=True)
        summary["sd"] = sampling_sd(out)
        images["sd_map"] = out[:, :N_SAMPLE_IMAGES, 0].std(dim=0).numpy()
    _check_defined(summary, per_subject, dataset.split, k)
    if lows:  # the low-dose input itself, scored the same way: the table's baseline line
        low_summary, low_subject, _ = score(torch.cat(lows), ref, subjects)
        summary.update({INPUT + n: v for n, v in low_summary.items()})
        per_subject = per_subject.join(low_subject[list(STANDARD)].add_prefix(INPUT))
    summary.update(summary_diag)
    return Evaluation(summary, per_slice, per_subject, images, per_sample)


def score(
    pred: torch.Tensor, ref: torch.Tensor, subjects: list[str]
) -> tuple[dict[str, float], pd.DataFrame, dict[str, torch.Tensor]]:
    """The metrics of a split: (summary, per subject, per image). ``pred`` and ``ref`` are
    [B, 1, H, W] slices, ``subjects[i]`` the subject of slice i. The summary's standard
    metrics are the mean over subjects of their volume metrics; its paper metrics the mean
    over slices where defined (module docstring)."""
    per_image = image_metrics(pred, ref)
    per_subject = _per_subject(pred, ref, subjects)
    return _summary(per_subject, per_image), per_subject, per_image


def _per_subject(pred: torch.Tensor, ref: torch.Tensor, subjects: list[str]) -> pd.DataFrame:
    """``subject, n_slices`` and :func:`~ablate.metrics.volume_metrics` of each subject."""
    rows = []
    for subject in dict.fromkeys(subjects):
        rows_of = [i for i, s in enumerate(subjects) if s == subject]
        metrics = volume_metrics(pred[rows_of], ref[rows_of])
        rows.append({"subject": subject, "n_slices": len(rows_of), **metrics})
    return pd.DataFrame(rows)


def _summary(per_subject: pd.DataFrame, per_image: dict[str, torch.Tensor]) -> dict[str, float]:
    """Standard metrics: the mean over subjects (nan if any subject's is). Paper metrics: the
    mean over the slices where they are defined (nan if none is)."""
    out = {name: float(per_subject[name].mean(skipna=False)) for name in STANDARD}
    for name in PAPER:
        values = per_image[name].numpy()
        defined = values[~np.isnan(values)]
        out[name] = float(defined.mean()) if len(defined) else float("nan")
    return out


def _check_finite(out: torch.Tensor, subjects: list[str], split: str, row: str) -> None:
    bad = ~torch.isfinite(out).flatten(2).all(dim=2).all(dim=0)  # [B] slices with a bad pixel
    if bad.any():
        where = sorted({subjects[i] for i in bad.nonzero().flatten().tolist()})
        raise MetricUndefined(
            f"{split} metrics undefined: the output of row '{row}' has NaN/inf pixels on "
            f"{int(bad.sum())} slice(s) of subject(s) {', '.join(where)} (the model diverged: "
            "lower train.lr or check the loss history)"
        )


def _check_defined(
    summary: dict[str, float], per_subject: pd.DataFrame, split: str, k: int
) -> None:
    """Every metric a table shows is finite, or the evaluation fails saying why."""
    names = [*STANDARD, *PAPER]
    names += [f"ams_{n}" for n in names] if k > 1 else []
    for name in names:
        if np.isfinite(summary[name]):
            continue
        base = name.removeprefix("ams_")
        if base in STANDARD:
            bad = per_subject[~np.isfinite(per_subject[name])].iloc[0]
            raise MetricUndefined(
                f"{split} metric '{name}' is {bad[name]} for subject {bad['subject']}: "
                f"{_why(base, bad[name], int(bad['n_slices']))}"
            )
        raise MetricUndefined(
            f"{split} metric '{name}' is undefined: no evaluated slice of the {split} split has "
            "reference pixels above the paper's 0.05 threshold (is the data on the [0, 1] "
            "scale of ablate data import?)"
        )


def _why(metric: str, value: float, n_slices: int) -> str:
    if metric == "psnr" and value == np.inf:
        return "the output equals the reference exactly (no error to measure)"
    return (
        f"its reference is constant over its {n_slices} evaluated slice(s), so there is "
        "no data range or signal to score against (an empty volume: remove the subject, "
        "or raise train.eval_slices if only the evaluated slices are empty; ablate data info "
        "lists constant slices)"
    )


@torch.inference_mode()
def noise_level_summary(
    method: Method, dataset: SliceDataset, indices: list[int], trial: TrialConfig
) -> dict[str, float]:
    """``x0_psnr/level_<i>`` (volume PSNR per subject, mean over subjects) and
    ``x0_gamma/level_<i>`` of a diffusion row's
    :meth:`~ablate.methods.base.Method.noise_level_diagnostics`; {} for other rows.
    The noise comes from a CPU generator seeded by the trial's seed alone, so every
    evaluation of a trial (and every row of a seed) noises the slices identically."""
    device = next(method.parameters()).device
    generator = torch.Generator().manual_seed(trial.seed + 104729)
    estimates: dict[int, list[torch.Tensor]] = {}
    gammas: dict[int, float] = {}
    references = []
    chunk = max(1, trial.train.batch_size * 4)
    for start in range(0, len(indices), chunk):
        batch = _collate(dataset, indices[start : start + chunk], device)
        with autocast(trial.train.precision, device):
            levels = method.noise_level_diagnostics(batch, generator)
        if levels is None:
            return {}
        references.append(batch["spet"].float().cpu())
        for i, (gamma, x0) in enumerate(levels):
            gammas[i] = gamma
            estimates.setdefault(i, []).append(x0.float().cpu())
    ref = torch.cat(references)
    subjects = [dataset.locate(i)[0] for i in indices]
    out: dict[str, float] = {}
    for i, gamma in gammas.items():
        per_subject = _per_subject(torch.cat(estimates[i]), ref, subjects)
        out[f"{X0_PSNR}/level_{i}"] = float(per_subject["psnr"].mean(skipna=False))
        out[f"{X0_GAMMA}/level_{i}"] = gamma
    return out


def write_evaluation_artifacts(evaluation: Evaluation, folder: Path) -> None:
    """``test_metrics.parquet`` (per slice), ``test_subjects.parquet`` (per subject),
    ``test_samples.parquet`` (per subject x sample, K > 1) and ``samples.npz`` (images for
    dashboards)."""
    evaluation.per_slice.to_parquet(folder / "test_metrics.parquet", index=False)
    evaluation.per_subject.to_parquet(folder / "test_subjects.parquet", index=False)
    if evaluation.per_sample is not None:
        evaluation.per_sample.to_parquet(folder / "test_samples.parquet", index=False)
    np.savez_compressed(folder / "samples.npz", **evaluation.images)
