"""Per-trial overhead: ablate's launch wall time per short trial beside plain Ray Tune's.

    python benchmarks/trial_overhead.py                 # 12 trials each, 2 CPUs
    python benchmarks/trial_overhead.py --trials 24 --cpus 4

On one embedded Ray instance, in one run, back to back:

- ``plain``: a trivial function trainable (one ``tune.report``), Tune's defaults; run first
  and again last, the mean of both is the reference (the machine's load drifts);
- ``ablate``: ``ablate.launch.driver.launch_grid`` of the demo's CPM row, one training step,
  ``--trials`` seeds (the dataset is built first and not timed), as ``ablate run`` launches
  it: workers reused across trials (Tune's ``reuse_actors``);
- ``ablate, fresh workers``: the same with ``reuse_actors`` off (a new worker process per
  trial, importing torch, MLflow and ablate each time), unless ``--skip-fresh``.

Each figure is the wall time of ``Tuner.fit`` divided by the number of trials. It prints a
table, checks issue 18's target (ablate at most 1.5x plain) and writes
``benchmarks/results/trial_overhead-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TARGET = 1.5


def _trivial(config: dict[str, Any]) -> None:
    from ray import tune

    tune.report({"x": 1})


def plain_tune(trials: int, storage: Path) -> float:
    """Seconds of ``Tuner.fit`` for ``trials`` trivial trials (Tune's defaults)."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(_trivial, {"cpu": 1}),
        param_space={"seed": tune.grid_search(list(range(trials)))},
        run_config=tune.RunConfig(name="plain", storage_path=str(storage), verbose=0),
    )
    start = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - start


def ablate_grid(trials: int, workdir: Path, reuse: bool) -> float:
    """Seconds of ``Tuner.fit`` of a grid of ``trials`` one-step demo CPM trials."""
    import ablate.launch.driver as driver
    from ablate.cli import standard_job
    from ablate.config import ExperimentConfig, load_experiment
    from ablate.data.store import build_dataset
    from ablate.overrides import apply_overrides
    from ablate.workspace import Workspace

    exp = apply_overrides(
        ExperimentConfig,
        load_experiment(ROOT / "search_spaces" / "demo.yaml"),
        {
            "seeds": list(range(trials)),
            "train.steps": 1,
            "train.log_every": 1,
            "train.eval_slices": 2,
            "diffusion.ams_samples": 2,
        },
        "benchmark",
    )
    exp = exp.model_copy(update={"rows": {"cpm": exp.rows["cpm"]}})
    ws = Workspace.create(workdir)
    build_dataset(exp.data, ws.datasets)  # built once, outside the timing
    original = driver.REUSE_ACTORS
    driver.REUSE_ACTORS = reuse
    try:
        result = driver.launch_grid(
            exp, ws, name=f"overhead-{'reuse' if reuse else 'fresh'}", job=standard_job()
        )
    finally:
        driver.REUSE_ACTORS = original
    if result.n_errors:
        raise SystemExit(f"{result.n_errors} ablate trials failed: see {ws.workdir}")
    return result.wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray")
    parser.add_argument("--skip-fresh", action="store_true", help="skip reuse_actors=False")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    import ray

    from ablate.launch.driver import start_ray

    console = Console()
    start_ray(None, num_cpus=args.cpus)
    rows: dict[str, float] = {}
    plain_runs = []
    with tempfile.TemporaryDirectory() as tmp:
        with console.status(f"plain Ray Tune, {args.trials} trivial trials..."):
            plain_runs.append(plain_tune(args.trials, Path(tmp) / "plain1"))
        with console.status(f"ablate, {args.trials} one-step trials, reused workers..."):
            rows["ablate (one-step trial)"] = ablate_grid(args.trials, Path(tmp) / "a", True)
        if not args.skip_fresh:
            with console.status(f"ablate, {args.trials} one-step trials, fresh workers..."):
                rows["ablate, fresh worker per trial"] = ablate_grid(
                    args.trials, Path(tmp) / "b", False
                )
        with console.status(f"plain Ray Tune again, {args.trials} trivial trials..."):
            plain_runs.append(plain_tune(args.trials, Path(tmp) / "plain2"))
    ray.shutdown()
    rows = {"plain Ray Tune (trivial trial)": sum(plain_runs) / len(plain_runs), **rows}

    plain = rows["plain Ray Tune (trivial trial)"] / args.trials
    table = Table(title=f"Launch wall time per trial: {args.trials} trials, {args.cpus} CPUs")
    for col in ("launch", "wall s", "s / trial", "x plain"):
        table.add_column(col, justify="left" if col == "launch" else "right")
    for name, wall in rows.items():
        per = wall / args.trials
        table.add_row(name, f"{wall:.1f}", f"{per:.2f}", f"{per / plain:.2f}")
    console.print(table)
    ratio = rows["ablate (one-step trial)"] / args.trials / plain
    met = ratio <= TARGET
    console.print(
        f"target: ablate at most {TARGET}x plain Ray Tune per trial: "
        f"{'met' if met else 'NOT met'} ({ratio:.2f}x)"
    )
    out = args.results_dir / "trial_overhead-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "host": platform.node(),
        "processor": platform.processor() or "cpu",
        "cpus": args.cpus,
        "trials": args.trials,
        "seconds_per_trial": {name: wall / args.trials for name, wall in rows.items()},
        "plain_runs_s": plain_runs,
        "ratio_to_plain": ratio,
        "target": TARGET,
        "target_met": met,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"-> {out}")


if __name__ == "__main__":
    main()
