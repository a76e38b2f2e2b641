"""GPU fast paths at paper scale: fp32 eager vs bf16 vs bf16 + compile, MFU, sampling, packing.

For each row of ``--config`` (default ``search_spaces/paper_table2.yaml``, 128x128; the PMDM
rows: ``--config search_spaces/pmdm_table1.yaml --image-size 256``), on random data
(``benchmarks/throughput.py`` supplies the batches and the timer):

- training iterations/s of ``method.training_step`` at batch 4 for each variant:
  ``fp32`` (the switches off: a plain eager PyTorch trial), ``bf16`` (bf16 autocast,
  channels_last, fused Adam) and ``bf16+compile`` (plus ``torch.compile``,
  ``--compile-mode``, default ``reduce-overhead``), each applied with the same helpers
  ``ablate.training.trial.TrainingRun`` uses;
- the saturating batch of the last variant: batches 4, 8, 16, ... (up to ``--max-batch``)
  until images/s gains less than 5% or memory runs out; images/s, peak memory and MFU at
  the best one. MFU = training FLOPs (3 x forward MACs x 2 per image) x images/s / the
  GPU's dense bf16 peak (``--peak-tflops``, default H100 SXM 989);
- sampling ms per image for each variant (bf16 variants sample under bf16 autocast), of one
  image and of K = ``--ams-k`` samples of one image as one batch (AMS), in
  ``torch.inference_mode``;
- loss curves: fp32 eager vs the fastest variant over ``--curve-steps`` steps from the same
  weights, batches and noise; the largest relative gap between their windowed means;
- packing: aggregate training it/s of 1, 2, 4, 8 concurrent trial processes (``--pack``) of
  ``--pack-row`` (default: the last row) at batch 4, each timed over the same wall-clock window.

Then it checks issue 9's targets (row ``full`` vs the fp32 baseline and vs ``sr3``'s
sampling, packing of 4 vs 1) and prints which are met. It writes
``benchmarks/results/gpu-<gpu name>[-<config>].json``. CPU smoke run:
``python benchmarks/gpu.py --quick --device cpu --config search_spaces/demo.yaml
--image-size 32 --variants fp32 bf16 --max-batch 8 --pack 1 2``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ablate.config import TrialConfig  # noqa: E402
from ablate.methods.base import Method  # noqa: E402
from ablate.methods.loop import to_device  # noqa: E402
from ablate.methods.registry import build_method  # noqa: E402
from ablate.planning.complexity import count_macs  # noqa: E402
from ablate.precision import autocast  # noqa: E402
from ablate.training.trial import compile_networks, place_and_optimise  # noqa: E402
from benchmarks.throughput import (  # noqa: E402
    BATCH,
    benchmark_parser,
    benchmark_trials,
    random_batch,
    timed,
)

#: Train-config switches of each variant; the first is the baseline.
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "bf16": {"precision": "bf16", "channels_last": True, "fused_adam": True},
    "bf16+compile": {
        "precision": "bf16",
        "channels_last": True,
        "fused_adam": True,
        "compile": True,
    },
}


#: Steps per point of the fp32 vs fast loss curves.
CURVE_WINDOW = 10


def with_switches(trial: TrialConfig, switches: dict[str, Any]) -> TrialConfig:
    return trial.model_copy(update={"train": trial.train.model_copy(update=switches)})


class Setup:
    """A method built and switched like a trial: optimisers, autocast, random batches."""

    def __init__(self, trial: TrialConfig, size: int, device: torch.device) -> None:
        torch.manual_seed(0)
        self.trial, self.size, self.device = trial, size, device
        self.method: Method = build_method(trial, size)
        if hasattr(self.method, "estimator_ready"):
            self.method.estimator_ready.fill_(True)
        self.optimizers = place_and_optimise(self.method, trial, device)
        if trial.train.compile:
            compile_networks(self.method, trial.train.compile_mode)

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        batch = random_batch(self.method, self.trial, size, self.device, self.size)
        return to_device(batch, self.device, self.trial.train.channels_last)

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with autocast(self.trial.train.precision, self.device):
            return self.method.training_step(batch, self.optimizers)

    def it_per_s(self, batch_size: int, warmup: int, iters: int) -> float:
        self.method.train()
        batch = self.batch(batch_size)
        for _ in range(warmup):
            self.step(batch)
        return 1.0 / timed(lambda: self.step(batch), iters, self.device)


def forward_macs_per_image(setup: Setup) -> float:
    """MACs of the forward pass of one training step (all networks, all loss terms) per
    image, counted eagerly at batch 4 (MACs grow linearly with the batch)."""
    batch = setup.batch(BATCH)
    with torch.compiler.set_stance("force_eager"):
        return count_macs(lambda: setup.method.training_losses(batch), setup.method) / BATCH


def peak_mem_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def batch_sweep(setup: Setup, warmup: int, iters: int, max_batch: int) -> list[dict[str, Any]]:
    """Training throughput at batch 4, 8, 16, ... until images/s gains under 5%, memory
    runs out, or ``max_batch``; the last point that helped is the saturating batch."""
    sweep: list[dict[str, Any]] = []
    batch = BATCH
    while batch <= max_batch:
        if setup.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(setup.device)
        try:
            it = setup.it_per_s(batch, warmup, iters)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        sweep.append(
            {
                "batch": batch,
                "it_per_s": it,
                "images_per_s": it * batch,
                "peak_mem_mb": peak_mem_mb(setup.device),
            }
        )
        if len(sweep) > 1 and sweep[-1]["images_per_s"] < 1.05 * sweep[-2]["images_per_s"]:
            break
        batch *= 2
    return sweep


@torch.inference_mode()
def sampling_ms(setup: Setup, k: int, reps: int) -> dict[str, float | None]:
    """ms per reconstruction of one image, and for K AMS samples of it as one batch."""
    method, device = setup.method, setup.device
    method.eval()
    one = {key: v[:1] for key, v in setup.batch(1).items() if key in method.input_shapes(1)}
    many = {key: v.expand(k, *v.shape[1:]).contiguous() for key, v in one.items()}

    def run(batch: dict[str, torch.Tensor]) -> None:
        with autocast(setup.trial.train.precision, device):
            method.reconstruct(batch)

    run(one)
    single = 1e3 * timed(lambda: run(one), reps, device)
    if not method.stochastic:
        return {"single_ms": single, "ams_ms": None}
    run(many)
    return {"single_ms": single, "ams_ms": 1e3 * timed(lambda: run(many), reps, device)}


def loss_curve_gap(trial: TrialConfig, device: torch.device, args: argparse.Namespace) -> dict:
    """fp32 eager vs the fastest variant trained from the same weights on the same batches
    with the same noise draws: the loss averaged over windows of ``CURVE_WINDOW`` steps, and
    the largest relative gap between the two curves (bf16 must not change what is learnt)."""
    curves = {}
    for name in ("fp32", args.variants[-1]):
        switches = VARIANTS[name] | {"compile_mode": args.compile_mode}
        setup = Setup(with_switches(trial, switches), args.image_size, device)
        torch.manual_seed(1)
        pool = [setup.batch(BATCH) for _ in range(8)]
        setup.method.train()
        losses = []
        for i in range(args.curve_steps):
            torch.manual_seed(1000 + i)  # the same noise levels and noise in both runs
            losses.append(setup.step(pool[i % len(pool)])["loss"])
        values = torch.stack(losses).float().cpu()
        curves[name] = values.reshape(-1, CURVE_WINDOW).mean(dim=1).tolist()
    base, fast = curves.values()
    gap = max(abs(f - b) / abs(b) for b, f in zip(base, fast, strict=True))
    return {"window": CURVE_WINDOW, "curves": curves, "max_rel_gap": gap}


def bench_row(trial: TrialConfig, device: torch.device, args: argparse.Namespace) -> dict:
    warmup, iters = (1, 2) if args.quick else (5, 30)
    reps = 1 if args.quick else 5
    result: dict[str, Any] = {"row": trial.row_name, "it_per_s_b4": {}, "sampling": {}}
    for name in args.variants:
        switches = VARIANTS[name] | {"compile_mode": args.compile_mode}
        setup = Setup(with_switches(trial, switches), args.image_size, device)
        result["it_per_s_b4"][name] = setup.it_per_s(BATCH, warmup, iters)
        result["sampling"][name] = sampling_ms(setup, args.ams_k, reps)
    if args.curve_steps:
        result["loss_curve"] = loss_curve_gap(trial, device, args)
    sweep = batch_sweep(setup, warmup, iters, args.max_batch)
    best = max(sweep, key=lambda point: point["images_per_s"])
    macs = forward_macs_per_image(setup)
    result.update(
        ams_k=args.ams_k,
        big_variant=args.variants[-1],
        batch_sweep=sweep,
        saturating_batch=best["batch"],
        images_per_s=best["images_per_s"],
        peak_mem_mb=best["peak_mem_mb"],
        forward_gmacs_per_image=macs / 1e9,
        mfu=3 * 2 * macs * best["images_per_s"] / (args.peak_tflops * 1e12),
    )
    return result


def pack_worker(args: argparse.Namespace, trial: TrialConfig, device: torch.device) -> None:
    """One packed trial: warm up, then count steps inside the shared window; print it/s."""
    torch.set_num_threads(trial.train.num_threads)  # as a trial worker does
    switches = VARIANTS[args.pack_variant] | {"compile_mode": args.compile_mode}
    setup = Setup(with_switches(trial, switches), args.image_size, device)
    setup.it_per_s(BATCH, 2, 1)
    batch = setup.batch(BATCH)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    while time.time() < args.window_start:
        time.sleep(0.01)
    start, steps = time.time(), 0
    if start > args.window_start + args.window_s / 2:
        raise SystemExit("a packed worker missed half its timing window: raise --pack-setup-s")
    while time.time() < args.window_start + args.window_s:
        setup.step(batch)
        steps += 1
    sync()
    print(
        json.dumps({"it_per_s": steps / (time.time() - start), "late_s": start - args.window_start})
    )


def packing(args: argparse.Namespace, row: str) -> list[dict[str, Any]]:
    """Aggregate it/s of N concurrent trial processes of ``row`` sharing one device."""
    results = []
    for n in args.pack:
        start = time.time() + args.pack_setup_s
        command = [
            sys.executable, __file__, "--worker", row, "--config", str(args.config),
            "--device", args.device, "--image-size", str(args.image_size),
            "--pack-variant", args.pack_variant, "--window-start", str(start),
            "--window-s", str(args.window_s), "--compile-mode", args.compile_mode,
        ]  # fmt: skip
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        printed = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"a packed worker of {row} failed (its error is printed above)")
        outs = [json.loads(text.strip().splitlines()[-1]) for text in printed]
        results.append(
            {
                "trials": n,
                "aggregate_it_per_s": sum(o["it_per_s"] for o in outs),
                "max_late_s": max(o["late_s"] for o in outs),
            }
        )
    base = results[0]["aggregate_it_per_s"] / results[0]["trials"]
    for r in results:
        r["speedup_vs_one"] = r["aggregate_it_per_s"] / base
    return results


def targets(rows: list[dict], packed: list[dict]) -> list[dict[str, Any]]:
    """Issue 9's targets, each with its measured value, or None when its rows were not run."""
    by_row = {r["row"]: r for r in rows}
    full, sr3 = by_row.get("full"), by_row.get("sr3")
    fast = rows[0]["big_variant"] if rows else None
    speedup = mfu = single = batched = pack4 = gap = None
    if full is not None:
        its = full["it_per_s_b4"]
        speedup = its[fast] / its["fp32"] if "fp32" in its else None
        mfu = 100 * full["mfu"]
        if "loss_curve" in full:
            gap = 100 * full["loss_curve"]["max_rel_gap"]
    if full is not None and sr3 is not None:
        f, b = full["sampling"][fast], sr3["sampling"][fast]
        single = b["single_ms"] / f["single_ms"]
        batched = b["ams_ms"] / f["ams_ms"]  # both K images per batch: per-image ratio
    pack = {p["trials"]: p for p in packed}
    if 1 in pack and 4 in pack:
        pack4 = pack[4]["speedup_vs_one"]
    return [
        {"target": f"full: {fast} vs fp32 it/s at batch 4", "goal": 2.0, "value": speedup},
        {"target": "full: MFU % at the saturating batch", "goal": 30.0, "value": mfu},
        {"target": "sr3 100-step / full 10-step sample ms, 1 image", "goal": 40.0, "value": single},
        {"target": "sr3 / full sample ms per image, K-image batch", "goal": 40.0, "value": batched},
        {"target": "packing: 4 trials vs 1, aggregate it/s", "goal": 2.5, "value": pack4},
        {
            "target": f"full: {fast} vs fp32 loss curve, max gap %",
            "goal": 5.0,
            "value": gap,
            "at_most": True,
        },
    ]


def print_tables(
    console: Console, title: str, rows: list[dict], packed: list[dict], goals: list[dict]
) -> None:
    variants = list(rows[0]["it_per_s_b4"]) if rows else []
    train = Table(title=f"Training, {title}")
    columns = ["row", *(f"{v} it/s b={BATCH}" for v in variants), "speedup"]
    for col in [*columns, "loss gap", "saturating img/s", "MFU", "peak MB"]:
        train.add_column(col, justify="left" if col == "row" else "right")
    for r in rows:
        its = r["it_per_s_b4"]
        train.add_row(
            r["row"],
            *(f"{its[v]:.3g}" for v in variants),
            f"{its[variants[-1]] / its[variants[0]]:.2f}x",
            f"{100 * r['loss_curve']['max_rel_gap']:.2f}%" if "loss_curve" in r else "-",
            f"{r['images_per_s']:.3g} (b={r['saturating_batch']})",
            f"{100 * r['mfu']:.1f}%",
            "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}",
        )
    console.print(train)

    k = rows[0]["ams_k"] if rows else "-"
    sampling = Table(title=f"Sampling ms per image: one image / in an AMS batch of K={k}")
    sampling.add_column("row")
    for v in variants:
        sampling.add_column(v, justify="right")
    for r in rows:
        cells = []
        for v in variants:
            ms = r["sampling"][v]
            ams = "" if ms["ams_ms"] is None else f" / {ms['ams_ms'] / r['ams_k']:.2f}"
            cells.append(f"{ms['single_ms']:.1f}{ams}")
        sampling.add_row(r["row"], *cells)
    console.print(sampling)

    if packed:
        pack = Table(title="Packing: concurrent trials on one device")
        for col in ("trials", "aggregate it/s", "vs one", "max late s"):
            pack.add_column(col, justify="right")
        for p in packed:
            pack.add_row(
                str(p["trials"]),
                f"{p['aggregate_it_per_s']:.3g}",
                f"{p['speedup_vs_one']:.2f}x",
                f"{p['max_late_s']:.1f}",
            )
        console.print(pack)

    verdict = Table(title="Issue 9 targets")
    for col in ("target", "goal", "measured", "met"):
        verdict.add_column(col, justify="left" if col == "target" else "right")
    for g in goals:
        value = g["value"]
        at_most = g.get("at_most", False)
        ok = value is not None and (value <= g["goal"] if at_most else value >= g["goal"])
        met = "not run" if value is None else ("yes" if ok else "NO")
        shown = "-" if value is None else f"{value:.3g}"
        verdict.add_row(g["target"], f"{'<=' if at_most else '>='} {g['goal']:g}", shown, met)
    console.print(verdict)


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--compile-mode", default="reduce-overhead")
    parser.add_argument("--max-batch", type=int, default=256, help="largest batch of the sweep")
    parser.add_argument("--ams-k", type=int, default=10)
    parser.add_argument(
        "--curve-steps", type=int, default=200, help="fp32 vs fast loss-curve steps; 0: skip"
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak")
    parser.add_argument("--pack", nargs="*", type=int, default=[1, 2, 4, 8], help="0 args: skip")
    parser.add_argument("--pack-variant", default="bf16", choices=list(VARIANTS))
    parser.add_argument("--pack-row", help="row of the packed trials (default: the last row)")
    parser.add_argument("--pack-setup-s", type=float, default=60.0, help="worker start budget")
    parser.add_argument("--window-s", type=float, default=20.0, help="packing timing window")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--window-start", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()

    device, trials, rows = benchmark_trials(args, parser)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # One static graph per batch size of the sweep, as a trial (fixed batch) would get.
    torch.compiler.config.automatic_dynamic_shapes = False
    if args.worker:
        pack_worker(args, trials[args.worker], device)
        return
    if args.curve_steps % CURVE_WINDOW:
        parser.error(f"--curve-steps must be a multiple of {CURVE_WINDOW}")
    if args.quick:
        args.window_s, args.pack_setup_s = min(args.window_s, 3.0), min(args.pack_setup_s, 20.0)
        args.curve_steps = min(args.curve_steps, 2 * CURVE_WINDOW)

    console = Console(width=160)
    results = []
    for name in rows:
        with console.status(f"{name} on {device}..."):
            results.append(bench_row(trials[name], device, args))
        its = results[-1]["it_per_s_b4"]
        console.print(f"{name}: " + ", ".join(f"{v} {x:.3g} it/s" for v, x in its.items()))
    pack_row = args.pack_row or rows[-1]
    if pack_row not in trials:
        parser.error(f"unknown --pack-row {pack_row!r}; known: {list(trials)}")
    packed = packing(args, pack_row) if args.pack else []
    goals = targets(results, packed)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    title = f"{args.image_size}x{args.image_size}, {gpu}"
    print_tables(console, title, results, packed, goals)
    stem = "gpu-" + re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-")
    if args.config.stem != "paper_table2":
        stem += f"-{args.config.stem}"
    out = args.results_dir / f"{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": gpu,
        "torch": torch.__version__,
        "config": args.config.name,
        "image_size": args.image_size,
        "quick": args.quick,
        "compile_mode": args.compile_mode,
        "peak_tflops": args.peak_tflops,
        "variants": {v: VARIANTS[v] for v in args.variants},
        "packing_row": pack_row if packed else None,
        "packing_variant": args.pack_variant,
    }
    record = {**meta, "rows": results, "packing": packed, "targets": goals}
    out.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"-> {out}")


if __name__ == "__main__":
    main()
