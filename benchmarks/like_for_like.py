"""Which diffusion parameterisation serves every diffusion row of the demo best (issue 32)?

An ablation compares rows on equal terms, so the demo's SR3 row (a) and its IRM rows (c)-(f)
must share one parameterisation. This runs ``search_spaces/demo.yaml`` as it stands (its
budget, networks, ``loss.cpm`` and ``residual_scale``) with ``diffusion.sr3`` and
``diffusion.irm`` both set to each candidate, and scores every row on the demo's evaluation
slices (K = ``diffusion.ams_samples`` samples): single-sample and AMS PSNR, SD and the
noisiest level's one-step x0 PSNR.

Usage (2 trials at a time, 1 torch thread each)::

    python benchmarks/like_for_like.py --rows sr3 cpm_irm full --seeds 0 --jobs 2 \\
        --variants eps v+cosine v x0

Writes ``benchmarks/results/like_for_like.json`` (every trial, appended as it finishes).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import yaml
from toy_study import NOISIEST_X0, run_trial  # this script's folder, as `python benchmarks/...`

from ablate.config import parse_experiment
from ablate.trials import expand

ROOT = Path(__file__).resolve().parents[1]

#: Candidate -> the knobs both diffusion families get (the papers': eps on linear).
VARIANTS: dict[str, dict[str, str]] = {
    "eps": {"prediction": "eps", "schedule": "linear"},
    "v+cosine": {"prediction": "v", "schedule": "cosine"},
    "v": {"prediction": "v", "schedule": "linear"},
    "x0": {"prediction": "x0", "schedule": "linear"},
    "x0+cosine": {"prediction": "x0", "schedule": "cosine"},
}


def trials(variant: str, args: argparse.Namespace) -> list:
    raw = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
    raw["name"], raw["seeds"] = f"like-for-like-{variant}", args.seeds
    raw["rows"] = {name: raw["rows"][name] for name in args.rows}
    for family in ("sr3", "irm"):
        raw["diffusion"][family].update(VARIANTS[variant])
    return expand(parse_experiment(raw, "demo.yaml"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rows", nargs="+", default=["sr3", "cpm_irm", "full"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--jobs", type=int, default=1, help="trials run at once (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-like-for-like")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/like_for_like.json")
    args = parser.parse_args()

    jobs = [(v, t) for v in args.variants for t in trials(v, args)]
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_trial, t, args): v for v, t in jobs}
        for future in as_completed(futures):
            result = {"variant": futures[future], **future.result()}
            result.pop("per_slice_psnr")
            results.append(result)
            s = result["summary"]
            print(
                f"{result['variant']:>9} {result['label']:<18} s{result['seed']} "
                f"PSNR {s['psnr']:6.2f}  AMS {s.get('ams_psnr', float('nan')):6.2f}  "
                f"SD {s.get('sd', float('nan')):.4f}  x0@7 {s.get(NOISIEST_X0, float('nan')):6.2f}"
                f"  ({result['train_s']:.0f} s)",
                flush=True,
            )
            args.out.write_text(
                json.dumps(
                    {
                        "command": "python benchmarks/like_for_like.py "
                        + " ".join(
                            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                            for k, v in (
                                ("rows", args.rows),
                                ("seeds", args.seeds),
                                ("jobs", args.jobs),
                                ("variants", args.variants),
                            )
                        ),  # fmt: skip
                        "host": platform.node(),
                        "wall_s": time.perf_counter() - start,
                        "results": sorted(results, key=lambda r: (r["variant"], r["row"])),
                    },
                    indent=2,
                )
            )


if __name__ == "__main__":
    main()
