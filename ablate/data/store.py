"""Datasets built on demand: one simulation per (preset, seed, overrides), cached by content.

Every trial of a study calls :func:`build_dataset`; the first call simulates, later calls
(and concurrent ones in other processes or Ray workers) reuse the same folder. Concurrency
is handled by an advisory file lock (so normally only one process simulates) *and* by
writing into a temporary folder that is atomically renamed: even where locks do not work
(some network filesystems), a dataset folder is either complete or absent.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path

from ablate.config import DataConfig
from ablate.data.format import FORMAT_VERSION, validate_dataset
from ablate.data.simulate import resolve_config, simulate_dataset


def dataset_key(cfg: DataConfig) -> str:
    """``<preset>-<hash>``: a short content hash of preset, seed, overrides, format version."""
    resolve_config(cfg.preset, cfg.overrides)  # reject unknown knobs before hashing
    content = json.dumps(
        {
            "preset": cfg.preset,
            "seed": cfg.seed,
            "overrides": cfg.overrides,
            "format": FORMAT_VERSION,
        },
        sort_keys=True,
        default=str,
    )
    return f"{cfg.preset}-{hashlib.sha256(content.encode()).hexdigest()[:12]}"


def build_dataset(cfg: DataConfig, cache_dir: Path) -> Path:
    """The dataset folder for ``cfg``: ``cfg.path`` validated, or a cached simulation."""
    if cfg.path is not None:
        validate_dataset(cfg.path)
        return Path(cfg.path)
    cache_dir = Path(cache_dir)
    dest = cache_dir / dataset_key(cfg)
    if (dest / "provenance.json").is_file():
        return dest
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not dest.exists():
                try:
                    simulate_dataset(cfg.preset, cfg.seed, cfg.overrides, dest)
                except FileExistsError:
                    pass  # another process without the lock finished first
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return dest
