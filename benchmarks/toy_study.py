"""A CPU-scale study of both papers' orderings: the demo's rows plus Palette and PMDM.

Paper 003's rows are ``search_spaces/demo.yaml`` as it stands (its declared departures
included) at ``--steps`` training steps; paper 000's Palette and PMDM-PET rows run on the
``tiny`` sinograms at the budget of ``benchmarks/pmdm_ordering.py`` (its networks, batch 8,
``--pmdm-steps`` steps, T = ``--T``), with the small-budget diffusion settings declared in
:data:`PMDM_DEPARTURES`. Every row is scored on the same test slices (the platform's fixed
evaluation slices), so rows pair per seed and per slice.

The paper orderings it tests are :data:`CLAIMS`, judged by the platform's own analysis
(``ablate.analysis``: seed-level paired t-test on trial means, the trials here logging no
per-subject metrics; Holm across the five claims; MDE and seeds needed for the papers'
effects), the table ``ablate table`` prints for a study's ``claims:``:

1. SR3 < (f) in PSNR;
2. SD falling from (c) to (f): (f) below (c), and the least-squares slope over (c)..(f);
3. PMDM > Palette in PSNR;
4. PMDM's SD below Palette's.

Beside the claims, Table 2's additive reading: each of rows (b)..(f) against the row before
it in PSNR (a Holm family of its own), i.e. whether each component adds PSNR.

``--reanalyse FILE.json`` re-judges the trials of an earlier run without training.

Usage (60 minutes on 2 CPU cores, 2 trials at a time; the cores were partly shared)::

    python benchmarks/toy_study.py --steps 3000 --pmdm-steps 600 --seeds 0 1 2 --jobs 2

Writes ``benchmarks/results/toy_study.json`` and ``benchmarks/results/toy_study.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from pmdm_ordering import ci95  # this script's folder, as `python benchmarks/...` runs it

from ablate.analysis import analyse
from ablate.config import BetterClaim, TrendClaim, parse_experiment
from ablate.data.store import build_dataset
from ablate.metrics import image_metrics
from ablate.training.evaluation import evaluate_method, evaluation_indices
from ablate.training.trial import TrainingRun
from ablate.trials import expand
from dashboards.contrasts import AnalysisTable, render

ROOT = Path(__file__).resolve().parents[1]
C2F = ("cpm_irm", "cpm_irm_nas", "cpm_irm_nas_spec", "full")  # rows (c)..(f)
DEMO_ROWS = ("sr3", "cpm", *C2F)  # rows (a)..(f): each adds one component to the row before

#: pmdm_ordering.py's networks for 32x32 sinograms.
PMDM_MODEL = {
    "deeppet": {"width": 16},
    "pmdm": {"width": 32, "mults": [1, 2, 2], "res_blocks": 1, "attn_res": [8]},
}
#: Declared departures of Palette/PMDM from paper 000 for this budget (the paper: eps,
#: linear, unweighted, full T-step ancestral sampling).
PMDM_DEPARTURES = {"prediction": "v", "schedule": "cosine"}


#: The per-noise-level diagnostic's noisiest level: the one-step x0 from (almost) pure noise.
NOISIEST_X0 = "x0_psnr/level_7"


#: The papers' orderings, as ``claims:`` entries of a study's YAML.
CLAIMS = [
    BetterClaim(better="full", than="sr3", metric="psnr"),
    BetterClaim(better="full", than="cpm_irm", metric="sd"),
    TrendClaim(trend=list(C2F), metric="sd", direction="decreasing"),
    BetterClaim(better="pmdm", than="palette", metric="psnr"),
    BetterClaim(better="pmdm", than="palette", metric="sd"),
]


def demo_trials(args: argparse.Namespace) -> list:
    raw = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
    raw["seeds"] = args.seeds
    raw["train"]["steps"] = args.steps
    raw["name"] = "toy-study"
    return expand(parse_experiment(raw, "demo.yaml"))


def pmdm_trials(args: argparse.Namespace) -> list:
    raw = {
        "name": "toy-study-pmdm",
        "rows": {
            "palette": {"method": "palette", "lr": args.pmdm_lr, "label": "Palette"},
            "pmdm": {
                "method": "pmdm",
                "conditioning": "r0",
                "lr": args.pmdm_lr,
                "label": "PMDM-PET",
            },
        },  # fmt: skip
        "seeds": args.seeds,
        "data": {"preset": "tiny"},
        "model": PMDM_MODEL,
        "diffusion": {
            "ams_samples": args.samples,
            "pmdm": {
                "train_steps": args.T,
                "beta_start": 1e-4 * 1000 / args.T,
                "beta_end": min(0.999, 2e-2 * 1000 / args.T),
                **PMDM_DEPARTURES,
            },
        },
        "train": {
            "steps": args.pmdm_steps,
            "batch_size": 8,
            "lr": 1e-4,
            "log_every": max(1, args.pmdm_steps // 10),
            "eval_slices": 16,
            "estimator": {"lr": 1e-4, "weight_decay": 1e-5},
        },
    }
    return expand(parse_experiment(raw, "toy study (PMDM)"))


def estimator_psnr(method: Any, dataset: Any, trial: Any) -> float | None:
    """PSNR of PMDM's frozen stage-1 estimate r0* on the evaluation slices, or None for a row
    without one: the conditional mean PMDM's noisy-end x0 estimate can at best improve on."""
    estimator = getattr(method, "estimator", None)
    if estimator is None:
        return None
    items = [dataset[i] for i in evaluation_indices(dataset, trial.train.eval_slices)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    with torch.no_grad():
        r0 = estimator(method.sinogram_image(batch))
    return float(image_metrics(r0.float(), batch["spet"].float())["psnr"].mean())


def run_trial(trial: Any, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(trial.seed)
    root = build_dataset(trial.data, args.workdir / "data")
    start = time.perf_counter()
    run = TrainingRun.build(trial, root, args.workdir / "cache")
    run.train_until(trial.train.steps)
    train_s = time.perf_counter() - start
    samples = trial.diffusion.ams_samples
    ev = evaluate_method(run.eval_method, run.data("test"), trial, samples)
    r0_psnr = estimator_psnr(run.eval_method, run.data("test"), trial)
    if r0_psnr is not None:
        ev.summary["estimator_psnr"] = r0_psnr
    return {
        "row": trial.row_name,
        "label": trial.row.label or trial.row_name,
        "seed": trial.seed,
        "train_s": train_s,
        "summary": ev.summary,
        "per_slice_psnr": ev.per_slice["psnr"].tolist(),
    }


def judge(results: list[dict]) -> Any:
    """The platform's analysis of the trials' claims (``ablate.analysis.analyse``) on a tidy
    frame of trial lines (the trials' logged metrics; these trials keep no per-subject ones)."""
    rows = list(dict.fromkeys(r["row"] for r in results))
    lines = [
        {
            "experiment": "toy-study",
            "launch": "toy-study",
            "parent_run_id": "toy-study",
            "run_id": f"{r['row']}-s{r['seed']}",
            "row": r["row"],
            "row_index": rows.index(r["row"]),
            "label": r["label"],
            "seed": r["seed"],
            "dataset": "tiny",
            "status": "completed",
            "error": "",
            "start_time": pd.Timestamp(0),
            "level": "trial",
            **r["summary"],
        }
        for r in results
    ]
    present = set(rows)
    claims = [c for c in CLAIMS if set(c.rows) <= present]
    steps = [r for r in DEMO_ROWS if r in present]  # Table 2's reading: each row vs the last
    pairs = [(b, a) for a, b in zip(steps, steps[1:], strict=False)]
    return analyse(pd.DataFrame(lines), contrasts=pairs, metrics=("psnr",), claims=claims)


def table(results: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for row in dict.fromkeys(r["row"] for r in results):
        mine = [r for r in results if r["row"] == row]
        line: dict[str, Any] = {"row": row, "label": mine[0]["label"], "n": len(mine)}
        for metric in ("psnr", "ams_psnr", "ssim", "sd", NOISIEST_X0, "estimator_psnr"):
            vals = [r["summary"][metric] for r in mine if metric in r["summary"]]
            line[metric] = ci95(vals) if vals else None
        line["train_s"] = float(np.mean([r["train_s"] for r in mine]))
        rows.append(line)
    return rows


def markdown(rows: list[dict], claims: Any, args: argparse.Namespace) -> str:
    def cell(v: tuple[float, float] | None, digits: int) -> str:
        if v is None:
            return "–"
        return (
            f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"
            if not math.isnan(v[1])
            else f"{v[0]:.{digits}f}"
        )

    out = [
        f"Toy study: demo rows at {args.steps} steps, Palette/PMDM at {args.pmdm_steps} steps "
        f"(T = {args.T}, {PMDM_DEPARTURES}); seeds {args.seeds}; mean ± 95% CI over seeds; "
        "standard convention.",
        "",
        "| row | PSNR | AMS PSNR | SSIM | SD | x0 PSNR, noisiest level | r0* PSNR | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['label']} | {cell(r['psnr'], 2)} | {cell(r['ams_psnr'], 2)} | "
            f"{cell(r['ssim'], 3)} | {cell(r['sd'], 4)} | {cell(r[NOISIEST_X0], 2)} | "
            f"{cell(r['estimator_psnr'], 2)} | {r['train_s']:.0f} |"
        )
    if claims is not None:
        for part in ("contrasts", "claims"):
            out += ["", render(AnalysisTable("toy-study", claims, part), "md")]
    return "\n".join(out) + "\n"


def claim_records(analysis: Any) -> list[dict[str, Any]]:
    return [
        {
            "claim": c.text,
            "verdict": c.verdict,
            "effect": c.effect.effect,
            "ci95": [c.effect.low, c.effect.high],
            "p_adjusted": c.effect.p_adjusted,
            "n_seeds": c.effect.n_seeds,
            "mde": c.mde,
            "paper_effect": c.paper_effect,
            "seeds_needed": c.seeds_needed,
            "explanation": c.explanation,
        }
        for c in analysis.claims
    ]


def reanalyse(path: Path) -> None:
    """Judge the contrasts and claims of a saved run (``toy_study.json``) with the platform's
    analysis; writes ``<name>-claims.md`` and ``<name>-claims.json`` beside it."""
    record = json.loads(path.read_text())
    analysis = judge(record["trials"])
    text = "\n".join(
        render(AnalysisTable("toy-study", analysis, part), "md") for part in ("contrasts", "claims")
    )
    print(text)
    stem = path.with_name(path.stem + "-claims")
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(claim_records(analysis), indent=1) + "\n")
    print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="demo rows' training steps")
    parser.add_argument("--pmdm-steps", type=int, default=600, help="Palette/PMDM steps")
    parser.add_argument("--pmdm-lr", type=float, default=2e-4)
    parser.add_argument("--T", type=int, default=200, help="Palette/PMDM diffusion steps")
    parser.add_argument("--samples", type=int, default=4, help="K for AMS/SD (PMDM rows)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=None, help="a subset of the rows")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    parser.add_argument("--jobs", type=int, default=1, help="trials run at once (processes)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench-toy-study")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/toy_study.json")
    parser.add_argument("--reanalyse", type=Path, help="judge the trials of this JSON instead")
    args = parser.parse_args()
    if args.reanalyse:
        reanalyse(args.reanalyse)
        return

    trials = demo_trials(args) + pmdm_trials(args)
    if args.rows:
        trials = [t for t in trials if t.row_name in args.rows]
    results = []
    # PMDM trials first: their stage-1 estimator is cached per seed, the other rows are quick
    order = sorted(trials, key=lambda t: t.row_name not in ("pmdm", "palette"))
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_trial, trial, args) for trial in order]
        for future in as_completed(futures):
            res = future.result()
            results.append(res)
            s = res["summary"]
            print(f"seed {res['seed']} {res['row']:18s} psnr {s['psnr']:.2f} "
                  f"ams {s.get('ams_psnr', math.nan):.2f} sd {s.get('sd', math.nan):.4f} "
                  f"({res['train_s']:.0f}s)", flush=True)  # fmt: skip
    position = {(t.row_name, t.seed): i for i, t in enumerate(trials)}
    results.sort(key=lambda r: position[(r["row"], r["seed"])])

    claims = judge(results)
    rows = table(results)
    text = markdown(rows, claims, args)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "pmdm_departures": PMDM_DEPARTURES,
        "host": platform.node(),
        "table": rows,
        "claims": claim_records(claims),
        "trials": results,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(text)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
