"""Inspection of a dataset folder (``ablate data info``): what it holds and how it was made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ablate.data.format import SPLITS, array_path, read_provenance, validate_dataset


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
        "provenance": provenance,
    }
