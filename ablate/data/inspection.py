"""Inspection of a dataset folder (``ablate data info``): what it holds and how it was made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ablate.data.format import SPLITS, array_path, read_provenance, validate_dataset


def constant_slices(root: Path) -> dict[str, list[int]]:
    """The reference (``spet``) slices with one value throughout (empty slices at a volume's
    ends, or flat ones), by subject; subjects without any are left out. Per-slice metrics are
    undefined on them, which is why the standard metrics are per subject volume."""
    root = Path(root)
    manifest = validate_dataset(root)
    out = {}
    for subject in manifest["subject"].unique():
        arr = np.load(array_path(root, str(subject), "spet"), mmap_mode="r")
        flat = np.asarray(arr, dtype=np.float32).reshape(arr.shape[0], -1)
        found = np.flatnonzero(flat.max(axis=1) == flat.min(axis=1)).tolist()
        if found:
            out[str(subject)] = found
    return out


def constant_slices_report(root: Path) -> list[str]:
    """What ``ablate data import`` and ``ablate data info`` say about constant slices: how
    many, which subjects, and how the metrics treat them; [] when there are none."""
    manifest = validate_dataset(Path(root))
    found = constant_slices(root)
    if not found:
        return []
    sizes = manifest.groupby("subject").size()
    n = sum(len(v) for v in found.values())
    where = ", ".join(f"{s} {len(v)} ({_ranges(v)})" for s, v in found.items())
    lines = [
        f"{n} of {len(manifest)} reference slices are constant (empty or flat): {where}. "
        "The standard metrics (PSNR, SSIM, NMSE, NRMSE) are computed per test subject over "
        "its volume, so these slices count as part of their volume; their per-slice values "
        "in test_metrics.parquet are NaN, and the paper-003 convention, per slice, leaves "
        "slices without foreground out."
    ]
    empty = [s for s, v in found.items() if len(v) == sizes[s]]
    if empty:
        lines.append(
            f"subject(s) {', '.join(empty)}: the whole reference volume is constant, so no "
            "metric is defined on it and a trial evaluating it fails: remove it or check "
            "its full-dose file"
        )
    return lines


def _ranges(values: list[int]) -> str:
    """``[0, 1, 2, 7]`` -> ``slices 0-2, 7``."""
    parts, start, prev = [], values[0], values[0]
    for value in [*values[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        start = prev = value
    return "slices " + ", ".join(parts)


def dataset_info(root: Path) -> dict[str, Any]:
    """Subjects, splits, shapes, intensity statistics and provenance of a dataset folder."""
    root = Path(root)
    manifest = validate_dataset(root)
    provenance = read_provenance(root)
    splits = {}
    for split in SPLITS:
        rows = manifest[manifest["split"] == split]
        splits[split] = {"subjects": int(rows["subject"].nunique()), "slices": len(rows)}
    stats = {}
    for kind in provenance.get("arrays", []):
        values = []
        shape = None
        for subject in manifest["subject"].unique():
            arr = np.load(array_path(root, str(subject), kind), mmap_mode="r")
            shape = tuple(arr.shape[1:])
            values.append(np.asarray(arr[:: max(1, arr.shape[0] // 8)], dtype=np.float32).ravel())
        v = np.concatenate(values)
        stats[kind] = {
            "shape": list(shape),
            "min": float(v.min()),
            "mean": float(v.mean()),
            "p99": float(np.percentile(v, 99)),
            "max": float(v.max()),
        }
    return {
        "path": str(root),
        "subjects": int(manifest["subject"].nunique()),
        "slices": len(manifest),
        "splits": splits,
        "arrays": stats,
        "scale": {"min": float(manifest["scale"].min()), "max": float(manifest["scale"].max())},
        "constant_slices": constant_slices(root),
        "provenance": provenance,
    }
