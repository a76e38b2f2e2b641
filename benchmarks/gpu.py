"""GPU fast paths at paper scale: fp32 eager vs bf16 vs bf16 + compile, MFU, sampling, packing.

For each row of ``--config`` (default ``search_spaces/paper_table2.yaml``, 128x128), on random
data (``benchmarks/throughput.py`` supplies the batches and the timer):

- training iterations/s of ``method.training_step`` at batch 4 for each variant:
  ``fp32`` (the switches off: a plain eager PyTorch trial), ``bf16`` (bf16 autocast,
  channels_last, fused Adam) and ``bf16+compile`` (plus ``torch.compile``,
  ``--compile-mode``, default ``reduce-overhead``), each applied with the same helpers
  ``ablate.training.TrainingRun`` uses;
- images/s, peak memory and MFU of the last variant at ``--big-batch``; MFU = training FLOPs
  (3 x forward MACs x 2 per step) x it/s / the GPU's dense bf16 peak (``--peak-tflops``,
  default H100 SXM 989);
- sampling ms per image, single and AMS (K = ``--ams-k`` samples of one image as one batch),
  under ``torch.inference_mode`` and bf16 autocast;
- packing: aggregate training it/s of 1, 2, 4 concurrent trial processes (``--pack``) of the
  first row at batch 4, each timed over the same wall-clock window.

Prints a table and writes ``benchmarks/results/gpu-<gpu name>.json``. CPU smoke run:
``python benchmarks/gpu.py --quick --device cpu --config search_spaces/demo.yaml
--image-size 32 --variants fp32 bf16``.
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

from ablate.complexity import count_macs  # noqa: E402
from ablate.config import TrialConfig  # noqa: E402
from ablate.methods.base import Method  # noqa: E402
from ablate.methods.registry import build_method  # noqa: E402
from ablate.training import autocast, compile_networks, fuse_adam, to_device  # noqa: E402
from benchmarks.throughput import (  # noqa: E402
    BATCH,
    ROOT,
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


def with_switches(trial: TrialConfig, switches: dict[str, Any]) -> TrialConfig:
    return trial.model_copy(update={"train": trial.train.model_copy(update=switches)})


class Setup:
    """A method built and switched like a trial: optimisers, autocast, random batches."""

    def __init__(self, trial: TrialConfig, size: int, device: torch.device) -> None:
        torch.manual_seed(0)
        self.trial, self.size, self.device = trial, size, device
        train = trial.train
        self.method: Method = build_method(trial, size).to(device)
        if hasattr(self.method, "estimator_ready"):
            self.method.estimator_ready.fill_(True)
        if train.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.optimizers = self.method.configure_optimizers(train.lr, train.weight_decay)
        if train.fused_adam and device.type == "cuda":
            self.optimizers = fuse_adam(self.optimizers)
        if train.compile:
            compile_networks(self.method, train.compile_mode)

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        batch = random_batch(self.method, self.trial, size, self.device, self.size)
        return to_device(batch, self.device, self.trial.train.channels_last)

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        with autocast(self.trial, self.device):
            self.method.training_step(batch, self.optimizers)

    def it_per_s(self, batch_size: int, warmup: int, iters: int) -> float:
        self.method.train()
        batch = self.batch(batch_size)
        for _ in range(warmup):
            self.step(batch)
        return 1.0 / timed(lambda: self.step(batch), iters, self.device)


def forward_macs(setup: Setup, batch_size: int) -> int:
    """MACs of the forward pass of one training step (all networks, all loss terms)."""
    batch = setup.batch(batch_size)
    with torch.compiler.set_stance("force_eager"):
        return count_macs(lambda: setup.method.training_losses(batch), setup.method)


@torch.inference_mode()
def sampling_ms(setup: Setup, k: int, reps: int) -> tuple[float, float | None]:
    """ms per reconstruction of one image, and of K AMS samples of it as one batch."""
    method, device = setup.method, setup.device
    method.eval()
    one = {key: v[:1] for key, v in setup.batch(1).items() if key in method.input_shapes(1)}
    many = {key: v.expand(k, *v.shape[1:]).contiguous() for key, v in one.items()}

    def run(batch: dict[str, torch.Tensor]) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            method.reconstruct(batch)

    run(one)
    single = 1e3 * timed(lambda: run(one), reps, device)
    if not method.stochastic:
        return single, None
    run(many)
    return single, 1e3 * timed(lambda: run(many), reps, device)


def bench_row(trial: TrialConfig, device: torch.device, args: argparse.Namespace) -> dict:
    warmup, iters = (1, 2) if args.quick else (5, 30)
    result: dict[str, Any] = {"row": trial.row_name, "it_per_s_b4": {}}
    for name in args.variants:
        switches = VARIANTS[name] | {"compile_mode": args.compile_mode}
        setup = Setup(with_switches(trial, switches), args.image_size, device)
        result["it_per_s_b4"][name] = setup.it_per_s(BATCH, warmup, iters)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    big = setup.it_per_s(args.big_batch, warmup, iters)
    macs = forward_macs(setup, args.big_batch)
    single, ams = sampling_ms(setup, args.ams_k, 1 if args.quick else 5)
    result.update(
        big_variant=args.variants[-1],
        big_batch=args.big_batch,
        images_per_s=big * args.big_batch,
        forward_gmacs_per_image=macs / args.big_batch / 1e9,
        mfu=3 * 2 * macs * big / (args.peak_tflops * 1e12),
        peak_mem_mb=torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
        sample_ms_per_image=single,
        ams_k=args.ams_k if ams is not None else None,
        ams_ms=ams,
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
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"a packed worker of {row} failed")
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


def print_table(console: Console, title: str, rows: list[dict], packed: list[dict]) -> None:
    variants = list(rows[0]["it_per_s_b4"]) if rows else []
    table = Table(title=title)
    columns = ["row", *(f"{v} it/s b={BATCH}" for v in variants), "speedup", "img/s", "MFU"]
    for col in [*columns, "peak MB", "sample ms", "AMS ms"]:
        table.add_column(col, justify="left" if col == "row" else "right")
    for r in rows:
        its = r["it_per_s_b4"]
        table.add_row(
            r["row"],
            *(f"{its[v]:.3g}" for v in variants),
            f"{its[variants[-1]] / its[variants[0]]:.2f}x",
            f"{r['images_per_s']:.3g} (b={r['big_batch']})",
            f"{100 * r['mfu']:.1f}%",
            "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}",
            f"{r['sample_ms_per_image']:.1f}",
            "-" if r["ams_ms"] is None else f"{r['ams_ms']:.1f} (K={r['ams_k']})",
        )
    console.print(table)
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


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--compile-mode", default="reduce-overhead")
    parser.add_argument("--big-batch", type=int, default=32, help="batch for img/s and MFU")
    parser.add_argument("--ams-k", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak")
    parser.add_argument("--pack", nargs="*", type=int, default=[1, 2, 4], help="0 args: skip")
    parser.add_argument("--pack-variant", default="bf16", choices=list(VARIANTS))
    parser.add_argument("--pack-setup-s", type=float, default=60.0, help="worker start budget")
    parser.add_argument("--window-s", type=float, default=20.0, help="packing timing window")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--window-start", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()

    device, trials, rows = benchmark_trials(args, parser)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.worker:
        pack_worker(args, trials[args.worker], device)
        return
    if args.quick:
        args.window_s, args.pack_setup_s = min(args.window_s, 3.0), min(args.pack_setup_s, 20.0)

    console = Console(width=160)
    results = []
    for name in rows:
        with console.status(f"{name} on {device}..."):
            results.append(bench_row(trials[name], device, args))
        its = results[-1]["it_per_s_b4"]
        console.print(f"{name}: " + ", ".join(f"{v} {x:.3g} it/s" for v, x in its.items()))
    packed = packing(args, rows[0]) if args.pack else []

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print_table(
        console, f"GPU fast paths at {args.image_size}x{args.image_size}, {gpu}", results, packed
    )
    out = (
        ROOT
        / "benchmarks"
        / "results"
        / f"gpu-{re.sub(r'[^A-Za-z0-9]+', '-', gpu).strip('-')}.json"
    )
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
        "packing_row": rows[0] if packed else None,
        "packing_variant": args.pack_variant,
    }
    out.write_text(json.dumps({**meta, "rows": results, "packing": packed}, indent=2) + "\n")
    console.print(f"-> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
