"""Training and sampling throughput of the rows of a search space at paper scale.

For each row of ``--config`` (default ``search_spaces/paper_table2.yaml``, 128x128; the
PMDM rows: ``--config search_spaces/pmdm_table1.yaml --image-size 256``), on random data:

- training: iterations/s of ``method.training_step`` (losses + backward + Adam step) at
  batch 4, the paper's batch size;
- sampling: ms for one reconstruction of one image (a single sample: the CPM alone, CPM +
  10 IRM steps, or 100 SR3 steps), and for AMS, ms for the K = ``diffusion.ams_samples``
  samples of one image drawn as one batch.

Run ``python benchmarks/throughput.py [--quick] [--rows cpm cpm_irm] [--device cpu|cuda]``.
PMDM's frozen stage-1 estimator keeps its random weights here (marked ready): the timing of
a network does not depend on its weights.
It prints a table and writes ``benchmarks/results/throughput-<device>.json``. Plain fp32, no
``torch.compile``: the numbers are what a trial of the grid gets today.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ablate.config import TrialConfig, load_experiment
from ablate.methods.base import Method
from ablate.methods.registry import build_method
from ablate.planning.complexity import count_params
from ablate.trials import row_trials

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BATCH = 4


def random_batch(
    method: Method, trial: TrialConfig, batch: int, device: torch.device, size: int
) -> dict:
    """Uniform [0, 1) tensors for every key the method reads, at ``batch`` images."""
    inputs = {k: s[1:] for k, s in method.input_shapes(size).items()}
    shapes = {
        "lpet": (1, size, size),
        "sinogram": (1, size, size),
        **inputs,
        "spet": (1, size, size),
        "negatives": (trial.loss.negatives, size, size),
    }
    if "lpet_nas" in inputs:
        shapes["spet_nas"] = inputs["lpet_nas"]
    missing = method.required_keys - shapes.keys()
    if missing:
        raise SystemExit(f"row '{trial.row_name}': no random stand-in for keys {sorted(missing)}")
    keys = method.required_keys | inputs.keys()
    return {k: torch.rand(batch, *shapes[k], device=device) for k in sorted(keys)}


def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Mean wall seconds of ``fn`` over ``repeats`` calls, after the caller's warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def bench_row(trial: TrialConfig, device: torch.device, quick: bool, size: int) -> dict[str, Any]:
    torch.manual_seed(0)
    method = build_method(trial, size).to(device)
    if hasattr(method, "estimator_ready"):
        method.estimator_ready.fill_(True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup, iters = (1, 2) if quick else (3, 20)
    sample_reps = 1 if quick else 3

    batch = random_batch(method, trial, BATCH, device, size)
    optimizers = method.configure_optimizers(trial.train.lr, trial.train.weight_decay)
    method.train()
    for _ in range(warmup):
        method.training_step(batch, optimizers)
    step_s = timed(lambda: method.training_step(batch, optimizers), iters, device)

    method.eval()
    inputs = method.input_shapes(size)
    one = {k: v[:1] for k, v in batch.items() if k in inputs}
    method.reconstruct(one)
    sample_s = timed(lambda: method.reconstruct(one), sample_reps, device)
    k = trial.diffusion.ams_samples
    ams_s = None
    if method.stochastic:
        many = {key: v.expand(k, *v.shape[1:]).contiguous() for key, v in one.items()}
        ams_s = timed(lambda: method.reconstruct(many), sample_reps, device)
    steps = (
        trial.diffusion.sr3.sample_steps
        if trial.row.method == "sr3"
        else (trial.diffusion.irm.sample_steps if getattr(trial.row, "irm", False) else 0)
    )
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "row": trial.row_name,
        "params_m": count_params(method) / 1e6,
        "batch": BATCH,
        "train_iters": iters,
        "train_it_per_s": 1.0 / step_s,
        "sample_steps": steps,
        "sample_ms_per_image": 1e3 * sample_s,
        "ams_k": k if method.stochastic else None,
        "ams_ms": None if ams_s is None else 1e3 * ams_s,  # all K samples, one batch
        "peak_mem_mb": peak,
    }


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every benchmark of rows shares: rows, device, config, image size."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", nargs="+", help="rows of --config (default: all)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed steps")
    parser.add_argument("--config", type=Path, default=ROOT / "search_spaces/paper_table2.yaml")
    parser.add_argument("--image-size", type=int, default=128, help="256 for pmdm_table1.yaml")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON goes")
    return parser


def benchmark_trials(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> tuple[torch.device, dict[str, TrialConfig], list[str]]:
    """The device, every row's trial (first seed) of ``--config``, and the rows asked for."""
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    exp = load_experiment(args.config)
    trials = row_trials(exp)
    rows = args.rows or list(trials)
    unknown = [r for r in rows if r not in trials]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {list(trials)}")
    return torch.device(args.device), trials, rows


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    device, trials, rows = benchmark_trials(args, parser)

    console = Console()
    results = []
    for name in rows:
        with console.status(f"{name} on {device}..."):
            results.append(bench_row(trials[name], device, args.quick, args.image_size))
        r = results[-1]
        console.print(
            f"{name}: {r['train_it_per_s']:.3g} it/s, {r['sample_ms_per_image']:.0f} ms/sample"
        )

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    table = Table(title=f"Throughput at paper scale, {gpu or platform.processor() or 'cpu'}")
    for col in ("row", "MParam", "train it/s (b=4)", "steps", "sample ms/img", "AMS ms (K imgs)"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for r in results:
        ams = "-" if r["ams_ms"] is None else f"{r['ams_ms']:.0f}"
        table.add_row(
            r["row"],
            f"{r['params_m']:.1f}",
            f"{r['train_it_per_s']:.3g}",
            str(r["sample_steps"]),
            f"{r['sample_ms_per_image']:.0f}",
            ams,
        )
    console.print(table)

    stem = "throughput" if args.config.stem == "paper_table2" else f"throughput-{args.config.stem}"
    out = args.results_dir / f"{stem}-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": gpu or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "image_size": args.image_size,
        "quick": args.quick,
        "dtype": "float32",
    }
    out.write_text(json.dumps({**meta, "rows": results}, indent=2) + "\n")
    console.print(f"-> {out}")


if __name__ == "__main__":
    main()
