"""Why do the DDPM-sampled rows sample badly at small budgets? One suspect at a time.

Two controlled settings on the ``tiny`` preset (32x32 simulated slices), with SR3's demo
network (width 16, multipliers 1-2-2, one res block, attention at 8x8):

- ``memorise``: one training slice, 4 copies a batch, lr 1e-3, ``--steps`` steps; then K
  samples of that same slice. A denoiser that has memorised one slice must sample it
  (>= 30 dB every sample, AMS >= single).
- ``demo``: SR3 on the demo's training split (batch 4, lr 1e-3) and the demo's test slices.

Each variant changes one thing from the baseline (the papers' settings: eps prediction,
linear 1e-6..1e-2 over T = 2000, L1, unweighted, clip [0, 1], no EMA, 20 sample steps) and
reports the sample PSNR of each of K samples, the AMS PSNR, the samples' mean intensities
and the per-noise-level one-step x0 PSNR (the platform's diagnostic).

Usage::

    python benchmarks/diffusion_suspects.py --mode memorise --steps 1000 \\
        --variants base x0 v cosine v+cosine
    python benchmarks/diffusion_suspects.py --mode demo --steps 3000 --variants base v+cosine

Writes ``benchmarks/results/diffusion_suspects-<mode>.json`` (appends per variant).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from ablate.config import DataConfig
from ablate.data.dataset import SliceDataset
from ablate.data.store import build_dataset
from ablate.diffusion.samplers import Sampling
from ablate.diffusion.schedules import NoiseSchedule
from ablate.methods.sr3 import SR3
from ablate.metrics import psnr
from ablate.models.unet import UNetShape
from ablate.training.evaluation import evaluation_indices

ROOT = Path(__file__).resolve().parents[1]

#: variant -> the settings it changes from the papers' (see the module docstring).
VARIANTS: dict[str, dict] = {
    "base": {},
    "x0": {"prediction": "x0"},
    "v": {"prediction": "v"},
    "cosine": {"schedule": "cosine"},
    "v+cosine": {"prediction": "v", "schedule": "cosine"},
    "x0+cosine": {"prediction": "x0", "schedule": "cosine"},
    "minsnr": {"min_snr": 5.0},
    "v+minsnr": {"prediction": "v", "min_snr": 5.0},
    "v+cosine+minsnr": {"prediction": "v", "schedule": "cosine", "min_snr": 5.0},
    "clip2": {"clip": (0.0, 2.0)},
    "noclip": {"clip": None},
    "ema": {"ema": 0.99},
    "steps200": {"sample_steps": 200},
    "ddim": {"sampler": "ddim"},
    "beta0.02": {"beta_end": 2e-2},
}


def build(settings: dict, T: int) -> SR3:
    schedule = NoiseSchedule.named(
        settings.get("schedule", "linear"), T, 1e-6, settings.get("beta_end", 1e-2)
    )
    method = SR3(
        32,
        unet=UNetShape(settings.get("width", 16), (1, 2, 2), 1, (8,), 0.0),
        schedule=schedule,
        sampling=Sampling(settings.get("sample_steps", 20), settings.get("sampler", "ddpm")),
        prediction=settings.get("prediction", "eps"),
        min_snr=settings.get("min_snr"),
    )
    if "clip" in settings:
        method.diffusion.clip = settings["clip"] or (-1e9, 1e9)
    return method


def run(variant: str, args: argparse.Namespace, data: Path) -> dict:
    settings = {**VARIANTS[variant], "width": args.width}
    torch.manual_seed(args.seed)
    method = build(settings, args.T)
    train = SliceDataset(data, "train", ["lpet", "spet"])
    if args.mode == "memorise":
        item = train[len(train) // 2]
        fixed = {k: v.unsqueeze(0).repeat(4, 1, 1, 1) for k, v in item.items()}
        test = {k: v.unsqueeze(0) for k, v in item.items()}
    else:
        split = SliceDataset(data, "test", ["lpet", "spet"])
        idx = evaluation_indices(split, args.eval_slices)
        test = {k: torch.stack([split[i][k] for i in idx]) for k in ("lpet", "spet")}
    opt = torch.optim.Adam(method.parameters(), lr=args.lr)
    ema = copy.deepcopy(method) if "ema" in settings else None
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    losses = []
    for _ in range(args.steps):
        if args.mode == "memorise":
            batch = fixed
        else:
            pick = torch.randint(0, len(train), (4,), generator=gen).tolist()
            batch = {k: torch.stack([train[i][k] for i in pick]) for k in ("lpet", "spet")}
        loss = method.training_losses(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if ema is not None:
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), method.parameters(), strict=True):
                    pe.lerp_(p, 1 - settings["ema"])
    train_s = time.perf_counter() - start
    net = (ema or method).eval()
    k = args.samples
    rep = {key: v.repeat(k, 1, 1, 1) for key, v in test.items()}
    with torch.no_grad():
        out = net.reconstruct(rep, torch.Generator().manual_seed(7919 + args.seed))
        b = test["spet"].shape[0]
        out = out.reshape(k, b, *out.shape[1:])
        single = [float(psnr(out[i], test["spet"]).mean()) for i in range(k)]
        ams = float(psnr(out.mean(0), test["spet"]).mean())
        diag = net.noise_level_diagnostics(test, torch.Generator().manual_seed(104729))
        x0 = {f"{g:.2e}": round(float(psnr(e, test["spet"]).mean()), 2) for g, e in diag}
    return {
        "variant": variant,
        "settings": {k: v for k, v in settings.items()},
        "mode": args.mode,
        "steps": args.steps,
        "train_s": round(train_s, 1),
        "loss_first_last": [round(sum(losses[:50]) / 50, 4), round(sum(losses[-50:]) / 50, 4)],
        "sample_psnr": [round(v, 2) for v in single],
        "sample_psnr_mean": round(sum(single) / k, 2),
        "ams_psnr": round(ams, 2),
        "sample_means": [round(float(out[i].mean()), 3) for i in range(k)],
        "reference_mean": round(float(test["spet"].mean()), 3),
        "sample_max": round(float(out.max()), 3),
        "reference_max": round(float(test["spet"].max()), 3),
        "x0_psnr": x0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["memorise", "demo"], default="memorise")
    parser.add_argument("--variants", nargs="+", default=["base"], choices=sorted(VARIANTS))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--T", type=int, default=2000)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--eval-slices", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-suspects")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = build_dataset(DataConfig(preset="tiny"), args.workdir / "data")
    out = args.out or ROOT / "benchmarks" / "results" / f"diffusion_suspects-{args.mode}.json"
    results = json.loads(out.read_text()) if out.is_file() else []
    for variant in args.variants:
        result = run(variant, args, data)
        print(json.dumps(result), flush=True)
        results.append(result)
        out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
