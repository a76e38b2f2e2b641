"""Data benchmarks: simulation speed, loader throughput, and the low-dose realism check.

    python benchmarks/data.py                       # tiny + 4 subjects of each big preset
    python benchmarks/data.py --presets tiny --subjects 0   # 0 = the preset's own count
    python benchmarks/data.py --device cuda

Prints a table and writes ``benchmarks/results/data-<device>.json``. Measures:

- simulation: slices per second of each preset (phantoms, projection, Poisson, OSEM of every
  dose the preset stores; the one-off projector build is reported separately);
- loader: samples per second of each dataset type at batch 4 with 2 worker processes;
- realism: PSNR/SSIM of the low-dose reconstruction against the full-dose one at the
  preset's dose reduction (100), in both metric conventions of ``ablate.metrics``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ablate.data.dataset import SliceDataset, available_keys
from ablate.data.simulate import (
    Scanner,
    default_split,
    resolve_config,
    simulate_dataset,
)
from ablate.device import resolve_device
from ablate.metrics import image_metrics

LOADER_TYPES = {
    "pairs": ["lpet", "spet"],
    "pairs+nas": ["lpet", "spet", "lpet_nas", "spet_nas"],
    "pairs+nas+negatives(10)": ["lpet", "spet", "lpet_nas", "spet_nas", "negatives"],
    "sinogram pairs": ["sinogram", "spet"],
}


def bench_simulation(preset: str, subjects: int, device: str, root: Path) -> dict:
    overrides: dict = {"device": device}
    if subjects:
        overrides.update(subjects=subjects, split=list(default_split(subjects)))
    cfg = resolve_config(preset, overrides)
    start = time.perf_counter()
    Scanner(cfg, resolve_device(cfg.device))
    build_s = time.perf_counter() - start
    dest = root / preset
    start = time.perf_counter()
    simulate_dataset(preset, 0, overrides, dest)
    total_s = time.perf_counter() - start
    slices = cfg.subjects * cfg.slices
    return {
        "preset": preset,
        "subjects": cfg.subjects,
        "slices": slices,
        "image_size": cfg.image_size,
        "projector_build_s": round(build_s, 2),
        "total_s": round(total_s, 2),
        "slices_per_s": round(slices / max(total_s - build_s, 1e-9), 2),
        "path": str(dest),
    }


def bench_loader(root: Path, keys: list[str], batches: int = 60) -> float | None:
    if not set(keys) <= available_keys(root):
        return None
    negatives = 10 if "negatives" in keys else 0
    ds = SliceDataset(root, "train", keys, negatives=negatives)
    loader = DataLoader(
        ds, batch_size=4, num_workers=2, shuffle=True, persistent_workers=True, drop_last=True
    )
    seen, it = 0, iter(loader)
    next(it)  # worker start-up is not throughput
    start = time.perf_counter()
    while seen < batches * 4:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        seen += next(iter(batch.values())).shape[0]
    return seen / (time.perf_counter() - start)


def realism(root: Path) -> dict | None:
    if not {"lpet", "spet"} <= available_keys(root):
        return None
    ds = SliceDataset(root, "test", ["lpet", "spet"])
    items = [ds[i] for i in range(len(ds))]
    lp = torch.stack([x["lpet"] for x in items])
    sp = torch.stack([x["spet"] for x in items])
    m = image_metrics(lp, sp)
    return {k: round(float(np.nanmean(v.numpy())), 3) for k, v in m.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "lowdose-128", "sinogram-256"])
    parser.add_argument("--subjects", type=int, default=4, help="0: the preset's own count")
    parser.add_argument("--tiny-full", action="store_true", help="tiny with its own count too")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {
        "host": platform.node(),
        "cpu_threads": torch.get_num_threads(),
        "device": args.device,
        "cuda": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "presets": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            subjects = 0 if preset == "tiny" else args.subjects
            sim = bench_simulation(preset, subjects, args.device, Path(tmp))
            root = Path(sim.pop("path"))
            sim["loader_samples_per_s"] = {
                name: None if (v := bench_loader(root, keys)) is None else round(v, 1)
                for name, keys in LOADER_TYPES.items()
            }
            sim["lpet_vs_spet"] = realism(root)
            results["presets"].append(sim)
            print(json.dumps(sim))
    print()
    print(f"{'preset':<14}{'size':>5}{'slices':>7}{'build s':>8}{'slices/s':>9}  loader samples/s")
    for r in results["presets"]:
        loaders = ", ".join(f"{k} {v}" for k, v in r["loader_samples_per_s"].items() if v)
        print(
            f"{r['preset']:<14}{r['image_size']:>5}{r['slices']:>7}{r['projector_build_s']:>8}"
            f"{r['slices_per_s']:>9}  {loaders}"
        )
    for r in results["presets"]:
        if r["lpet_vs_spet"]:
            m = r["lpet_vs_spet"]
            print(
                f"{r['preset']}: LPET vs SPET at DRF 100: paper PSNR {m['paper_psnr']} dB, "
                f"SSIM {m['paper_ssim']}; standard PSNR {m['psnr']} dB, SSIM {m['ssim']}"
            )
    out = Path(__file__).parent / "results" / f"data-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
