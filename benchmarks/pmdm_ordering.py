"""Does the platform reproduce paper 000's qualitative Table-1 ordering at small scale?

Trains every row of ``search_spaces/pmdm_table1.yaml`` (DeepPET, cGAN, pix2pix, VQ-VAE,
Palette, PMDM) for the same number of steps on a small simulated sinogram dataset (the
``tiny`` preset: 32x32 slices, 48 angles), with scaled-down networks, for several seeds,
and evaluates each on the same test slices. Prints the table (mean and 95% confidence
interval over seeds) and the paper's three claims as paired differences with 95% CIs:

1. DeepPET has the highest PSNR among the deterministic rows (DeepPET, cGAN, pix2pix, VQ-VAE);
2. PMDM's PSNR is above Palette's;
3. PMDM's sampling SD is below Palette's.

Usage::

    python benchmarks/pmdm_ordering.py --steps 2000 --seeds 0 1 2 --device auto

Writes ``benchmarks/results/pmdm_ordering.json``. Timing-free: this is about quality.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from ablate.config import (
    DataConfig,
    DiffusionConfig,
    ModelConfig,
    TrainConfig,
    TrialConfig,
    load_experiment,
)
from ablate.data.store import build_dataset
from ablate.paper import TABLE1
from ablate.training.evaluation import evaluate_method
from ablate.training.trial import TrainingRun

ROOT = Path(__file__).resolve().parents[1]
DETERMINISTIC = ("deeppet", "cgan", "pix2pix", "vqvae")

#: Networks scaled down for 32x32 slices and a short budget; same family as paper scale.
TINY_MODEL = ModelConfig.model_validate(
    {
        "deeppet": {"width": 16},
        "gan": {"width": 16},
        "vqvae": {"width": 32, "code_dim": 16, "codes": 64},
        "pmdm": {"width": 32, "mults": (1, 2, 2), "res_blocks": 1, "attn_res": (8,)},
    }
)


def ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval (half-width nan for one value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size < 2:
        return float(arr.mean()), math.nan
    half = stats.t.ppf(0.975, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size)
    return float(arr.mean()), float(half)


def run_trial(
    row_name: str, row: object, seed: int, args: argparse.Namespace, root: Path
) -> dict[str, object]:
    rowcfg = row.model_copy(update={"lr": args.lr} if args.lr else {})
    trial = TrialConfig(
        experiment="pmdm-ordering",
        row_name=row_name,
        row=rowcfg,
        seed=seed,
        data=DataConfig(preset="tiny"),
        model=TINY_MODEL,
        loss=load_experiment(ROOT / "search_spaces" / "pmdm_table1.yaml").loss,
        # DDPM's 1e-4..2e-2 is for T = 1000; scale it so that fewer steps still end in noise
        diffusion=DiffusionConfig.model_validate(
            {
                "pmdm": {
                    "train_steps": args.T,
                    "beta_start": 1e-4 * 1000 / args.T,
                    "beta_end": min(0.999, 2e-2 * 1000 / args.T),
                }
            }
        ),
        train=TrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=1e-4,
            log_every=max(1, args.steps // 10),
            eval_slices=args.eval_slices,
            device=args.device,
            num_threads=args.threads,
            estimator={"lr": 1e-4, "weight_decay": 1e-5},
        ),
    )
    torch.manual_seed(seed)
    start = time.perf_counter()
    run = TrainingRun.build(trial, root, args.workdir / "cache")
    history = run.train_until(args.steps)
    train_s = time.perf_counter() - start
    ev = evaluate_method(run.method, run.data("test"), trial, args.samples)
    return {
        "row": row_name,
        "seed": seed,
        "train_s": train_s,
        "final_loss": history[-1][1]["loss"],
        "summary": ev.summary,
        "per_slice_psnr": ev.per_slice["psnr"].tolist(),
    }


def paired(results: list[dict], a: str, b: str, metric: str) -> dict[str, float]:
    """a - b per seed (each seed's mean over the same test slices), mean and 95% CI."""
    by = {(r["row"], r["seed"]): r["summary"][metric] for r in results if r["row"] in (a, b)}
    seeds = sorted({r["seed"] for r in results})
    diffs = [by[(a, s)] - by[(b, s)] for s in seeds]
    mean, half = ci95(diffs)
    return {"mean": mean, "ci95": half, "per_seed": diffs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps per row")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--T", type=int, default=200, help="PMDM/Palette diffusion steps")
    parser.add_argument("--samples", type=int, default=4, help="K samples for AMS / SD")
    parser.add_argument("--eval-slices", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="one lr for every row")
    parser.add_argument("--rows", nargs="+", default=None, help="a subset of the rows")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-pmdm-ordering")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pmdm_ordering.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    exp = load_experiment(ROOT / "search_spaces" / "pmdm_table1.yaml")
    if args.rows:
        exp.rows = {name: row for name, row in exp.rows.items() if name in args.rows}
    root = build_dataset(DataConfig(preset="tiny"), args.workdir / "data")
    results = []
    for seed in args.seeds:
        for name, row in exp.rows.items():
            res = run_trial(name, row, seed, args, root)
            results.append(res)
            s = res["summary"]
            print(
                f"seed {seed} {name:8s} psnr {s['psnr']:.2f} ssim {s['ssim']:.3f} "
                f"nrmse {s['nrmse']:.3f} sd {s.get('sd', float('nan')):.4f} "
                f"({res['train_s']:.0f}s)",
                flush=True,
            )

    table = {}
    header = f"{'row':8s} | {'PSNR':>14s} | {'SSIM':>15s} | {'NRMSE':>15s} | {'SD':>17s} | paper"
    print("\n" + header + "\n" + "-" * len(header))
    for name in exp.rows:
        rows = [r for r in results if r["row"] == name]
        cells = {}
        for metric in ("psnr", "ssim", "nrmse", "sd"):
            vals = [r["summary"][metric] for r in rows if metric in r["summary"]]
            cells[metric] = ci95(vals) if vals else (math.nan, math.nan)
        table[name] = {m: {"mean": v[0], "ci95": v[1]} for m, v in cells.items()}
        fmt = {
            m: "-" if math.isnan(v[0]) else f"{v[0]:.4f} +- {v[1]:.4f}" for m, v in cells.items()
        }
        print(
            f"{name:8s} | {cells['psnr'][0]:6.2f} +- {cells['psnr'][1]:4.2f} | "
            f"{fmt['ssim']:>15s} | {fmt['nrmse']:>15s} | {fmt['sd']:>17s} | "
            f"{TABLE1[name].psnr:.2f} dB"
        )

    claims = {}
    others = [n for n in DETERMINISTIC if n != "deeppet" and n in table]
    if "deeppet" in table and others:
        best = max(others, key=lambda n: table[n]["psnr"]["mean"])
        claims[f"psnr deeppet - {best} (best other deterministic)"] = paired(
            results, "deeppet", best, "psnr"
        )
    if {"pmdm", "palette"} <= set(table):
        claims["psnr pmdm - palette"] = paired(results, "pmdm", "palette", "psnr")
        claims["sd palette - pmdm"] = paired(results, "palette", "pmdm", "sd")
    print("\nclaims (paired over seeds; holds if the CI lies above 0):")
    for claim, d in claims.items():
        lo, hi = d["mean"] - d["ci95"], d["mean"] + d["ci95"]
        verdict = "holds" if lo > 0 else ("reversed" if hi < 0 else "not resolved")
        print(f"  {claim:45s} {d['mean']:+.4f}  95% CI [{lo:+.4f}, {hi:+.4f}]  {verdict}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "settings": {k: str(v) for k, v in vars(args).items()},
                "model": TINY_MODEL.model_dump(),
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "host": platform.node(),
                "table": table,
                "claims": claims,
                "trials": results,
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
