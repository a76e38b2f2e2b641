"""Lesion-level metrics: what a clinical reader looks at first, which PSNR can hide.

A model that blurs a small lesion into its surroundings can still gain PSNR (the lesion is a
few pixels of the slice). Published low-dose PET work therefore also reports, per lesion:

- **SUVmax bias (%)**: ``100 (max_pred - max_ref) / max_ref`` over the lesion's voxels;
- **SUVmean bias (%)**: the same with the means over the lesion's voxels;
- **CRC**, the contrast recovery coefficient against the reference (NEMA's definition with
  the reference image as the truth): ``(L_pred / B_pred - 1) / (L_ref / B_ref - 1)``, ``L``
  the lesion mean and ``B`` the mean of a background ring around the lesion in the same
  slices (pixels :data:`RING_GAP_PX` to ``RING_GAP_PX + RING_WIDTH_PX`` away, outside every
  lesion). The one formula covers hot and cold lesions; 1 is full recovery, 0 none. A
  lesion whose reference contrast is under :data:`MIN_CONTRAST` has no defined CRC (nan).

The ratios do not depend on the intensity scale, so they read the same on the stored
normalised images as in SUV or Bq/mL. Lesions are integer labels ``[slices, H, W]``
(0 = none), stored with the dataset as the ``lesions`` array: the simulator's spheres, or a
user's label NIfTI (``ablate data import --masks``). :func:`lesion_summary` scores the test
split's lesions (every slice a lesion touches, the single sample of a stochastic row) and
gives the trial's ``lesion_*`` metrics: means over lesions, and the absolute errors the
ablation table ranks by.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

#: Background ring around a lesion, in pixels: skip the partial-volume rim, then this wide.
RING_GAP_PX, RING_WIDTH_PX = 2, 3
#: Below this reference contrast |L/B - 1| a lesion's CRC is undefined (nan).
MIN_CONTRAST = 0.05
#: The trial-level metrics :func:`lesion_summary` returns (the table shows the ``abs_`` ones).
METRICS = (
    "lesion_n",
    "lesion_suvmax_bias",
    "lesion_suvmean_bias",
    "lesion_crc",
    "lesion_abs_suvmax_bias",
    "lesion_abs_suvmean_bias",
    "lesion_abs_crc_error",
)


def per_lesion(pred: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per lesion label of ``labels``: ``label, voxels, suvmax_bias, suvmean_bias,
    crc`` of ``pred`` against ``ref`` (all ``[slices, H, W]`` on the same grid)."""
    pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    labels = np.asarray(labels).round().astype(np.int64)
    rows = []
    for label in np.unique(labels[labels > 0]):
        inside = labels == label
        ring = _ring(inside) & (labels == 0)
        ref_max, ref_mean = ref[inside].max(), ref[inside].mean()
        row = {
            "label": int(label),
            "voxels": int(inside.sum()),
            "suvmax_bias": _bias(pred[inside].max(), ref_max),
            "suvmean_bias": _bias(pred[inside].mean(), ref_mean),
            "crc": float("nan"),
        }
        if ring.any():
            ref_bg, pred_bg = ref[ring].mean(), pred[ring].mean()
            if ref_bg > 0 and pred_bg > 0 and abs(ref_mean / ref_bg - 1) >= MIN_CONTRAST:
                row["crc"] = float((pred[inside].mean() / pred_bg - 1) / (ref_mean / ref_bg - 1))
        rows.append(row)
    return pd.DataFrame(rows, columns=["label", "voxels", "suvmax_bias", "suvmean_bias", "crc"])


def _bias(value: float, reference: float) -> float:
    return float(100.0 * (value - reference) / reference) if reference != 0 else float("nan")


def _ring(inside: np.ndarray) -> np.ndarray:
    """Pixels RING_GAP_PX..RING_GAP_PX + RING_WIDTH_PX from the lesion, slice by slice."""
    ring = np.zeros_like(inside)
    for k in np.nonzero(inside.any(axis=(1, 2)))[0]:
        distance = ndimage.distance_transform_edt(~inside[k])
        ring[k] = (distance > RING_GAP_PX) & (distance <= RING_GAP_PX + RING_WIDTH_PX)
    return ring


def summarise(lesions: pd.DataFrame) -> dict[str, float]:
    """The trial's ``lesion_*`` metrics from the rows of :func:`per_lesion` (all subjects)."""
    if lesions.empty:
        return {}
    crc = lesions["crc"].dropna()
    out = {
        "lesion_n": float(len(lesions)),
        "lesion_suvmax_bias": float(lesions["suvmax_bias"].mean()),
        "lesion_suvmean_bias": float(lesions["suvmean_bias"].mean()),
        "lesion_abs_suvmax_bias": float(lesions["suvmax_bias"].abs().mean()),
        "lesion_abs_suvmean_bias": float(lesions["suvmean_bias"].abs().mean()),
    }
    if len(crc):
        out["lesion_crc"] = float(crc.mean())
        out["lesion_abs_crc_error"] = float((1 - crc).abs().mean())
    return out


@torch.inference_mode()
def lesion_summary(method: object, dataset: object) -> tuple[dict[str, float], pd.DataFrame]:
    """Score every lesion of ``dataset`` (a :class:`~ablate.data.dataset.SliceDataset` split
    whose dataset stores ``lesions``): the trial's metrics and the per-lesion table (with
    ``subject``). A dataset without lesion labels gives ``({}, empty)``."""
    from ablate.data.format import array_path, read_provenance

    if "lesions" not in read_provenance(dataset.root).get("arrays", []):
        return {}, pd.DataFrame()
    device = next(method.parameters()).device
    tables = []
    for subject, indices in dataset.items_by_subject().items():
        labels = np.load(array_path(dataset.root, subject, "lesions"), mmap_mode="r")
        slices = [(index, dataset.locate(index)[1]) for index in indices]
        touched = [(index, i) for index, i in slices if labels[i].any()]
        if not touched:
            continue
        preds, refs = [], []
        for start in range(0, len(touched), 8):
            items = [dataset[index] for index, _ in touched[start : start + 8]]
            batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
            generator = torch.Generator(device=device).manual_seed(start)
            preds.append(method.reconstruct(batch, generator=generator).float().cpu()[:, 0])
            refs.append(batch["spet"].float().cpu()[:, 0])
        table = per_lesion(
            torch.cat(preds).numpy(),
            torch.cat(refs).numpy(),
            np.asarray(labels[[i for _, i in touched]]),
        )
        table.insert(0, "subject", subject)
        tables.append(table)
    lesions = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return summarise(lesions), lesions
