"""``ablate plan`` and ``--dry-run``: the cost of a launch before it runs (issue 18).

The arithmetic is checked against torch's own FLOP counter on a real training step; the
measured figures against the benchmark record they come from; the CLI as a user runs it
(a subprocess in a fresh folder), creating nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ablate.config import ExperimentConfig, load_experiment
from ablate.errors import UserError
from ablate.methods.registry import build_method
from ablate.overrides import apply_overrides
from ablate.planning.estimates import plan_launch, profile
from ablate.planning.records import RESULTS
from ablate.trials import row_trials
from tests.paths import REPO

DEMO = REPO / "search_spaces" / "demo.yaml"
TABLE2 = REPO / "search_spaces" / "paper_table2.yaml"


def _exp(path: Path, **overrides: object) -> ExperimentConfig:
    return apply_overrides(ExperimentConfig, load_experiment(path), dict(overrides), "test")


@pytest.mark.parametrize("row", ["cpm_irm_nas"])
def test_training_flops_match_torch_flop_counter_within_10_percent(row: str) -> None:
    trial = row_trials(load_experiment(DEMO))[row]
    planned = profile(trial, 32).step_tflop * 1e12
    torch.manual_seed(0)
    method = build_method(trial, 32)
    b, s = trial.train.batch_size, 32
    shapes = {"lpet": 1, "spet": 1, "lpet_nas": 5, "spet_nas": 5, "negatives": 2}
    batch = {k: torch.rand(b, shapes[k], s, s) for k in method.required_keys}
    optimizers = method.configure_optimizers(1e-3, 0.0)
    with FlopCounterMode(display=False) as counter:
        method.training_step(batch, optimizers)
    assert counter.get_total_flops() == pytest.approx(planned, rel=0.10)


def test_paper_table2_on_h100_uses_the_measured_rows() -> None:
    plan = plan_launch(load_experiment(TABLE2), gpu="H100")
    assert len(plan.trials) == 18 and plan.kind == "grid"
    record = json.loads((RESULTS / "throughput-cuda.json").read_text())
    measured = {r["row"]: r for r in record["rows"]}
    for row in ("sr3", "cpm", "cpm_irm", "cpm_irm_nas", "full"):
        trials = [t for t in plan.trials if t.row == row]
        assert len(trials) == 3
        for t in trials:
            assert t.train_source.startswith("measured (throughput-cuda.json")
            assert t.it_per_s == measured[row]["train_it_per_s"]
            assert t.train_s == pytest.approx(500_000 / measured[row]["train_it_per_s"])
            assert t.measured_memory_gb == pytest.approx(measured[row]["peak_mem_mb"] / 1024)
            assert t.gpu_fraction == 0.25  # ~4 GB: four fit an 80 GB GPU
    train_h = sum(t.train_s for t in plan.trials) / 3600
    assert train_h < plan.gpu_hours < train_h * 1.01  # evaluation and start-up are small
    assert plan.suggested_gpu == 0.25


def test_rows_match_records_by_settings_not_by_name() -> None:
    exp = _exp(TABLE2, seeds=[0])
    renamed = exp.model_copy(update={"rows": {"my_cpm": exp.rows["cpm"]}})
    (t,) = plan_launch(renamed, gpu="H100").trials
    assert t.train_source == "measured (throughput-cuda.json: row cpm)"
    wider = _exp(TABLE2, seeds=[0], **{"model.coarse_to_fine.cpm_width": 96})
    wider = wider.model_copy(update={"rows": {"cpm": wider.rows["cpm"]}})
    (t,) = plan_launch(wider, gpu="H100").trials
    assert t.train_source.startswith("estimate, assumed MFU")
    assert "measured fp32 eager rows on H100" in t.train_source
    bf16 = _exp(TABLE2, seeds=[0], **{"train.precision": "bf16", "train.steps": 1000})
    bf16 = bf16.model_copy(update={"rows": {"cpm": bf16.rows["cpm"]}})
    (t,) = plan_launch(bf16, gpu="H100").trials
    assert t.train_source.startswith("estimate, assumed MFU 1%")
    assert "no bf16 eager record" in t.train_source


def test_a_gpu_benchmark_record_of_the_same_switches_is_used(tmp_path: Path) -> None:
    switches = {"precision": "bf16", "channels_last": True, "fused_adam": True, "compile": True}
    record = {
        "device": "NVIDIA H200",
        "config": "demo.yaml",
        "image_size": 32,
        "quick": False,
        "compile_mode": "reduce-overhead",
        "variants": {"fp32": {}, "bf16+compile": switches},
        "rows": [
            {
                "row": "cpm",
                "it_per_s_b4": {"fp32": 50.0, "bf16+compile": 200.0},
                "sampling": {"bf16+compile": {"single_ms": 2.0, "ams_ms": None}},
                "ams_k": 10,
            }
        ],
    }
    (tmp_path / "gpu-NVIDIA-H200.json").write_text(json.dumps(record))
    fast = {f"train.{k}": v for k, v in switches.items()}
    exp = _exp(DEMO, seeds=[0], **fast, **{"train.compile_mode": "reduce-overhead"})
    exp = exp.model_copy(update={"rows": {"cpm": exp.rows["cpm"], "full": exp.rows["full"]}})
    cpm, full = plan_launch(exp, gpu="h200", results_dir=tmp_path).trials
    assert cpm.it_per_s == 200.0 and cpm.train_source.startswith("measured (gpu-NVIDIA-H200")
    assert cpm.eval_source == "measured (gpu-NVIDIA-H200.json)"
    assert "median of 1 measured" in full.train_source  # calibrated on the cpm row
    assert cpm.overhead_s > 200  # the compile warm-up
    plain = _exp(DEMO, seeds=[0])
    plain = plain.model_copy(update={"rows": {"cpm": plain.rows["cpm"]}})
    (t,) = plan_launch(plain, gpu="H200", results_dir=tmp_path).trials
    assert t.it_per_s == 50.0  # the fp32 variant of the same record


def test_a_search_plans_its_samples_and_asha() -> None:
    plan = plan_launch(load_experiment(REPO / "search_spaces" / "loss_weights.yaml"), search=True)
    assert plan.kind == "search" and len(plan.trials) == 8 and plan.device == "cpu"
    assert plan.search is not None and plan.search["rungs"] == [1, 2]
    assert 0.3 < plan.search["expected_fraction"] < 1


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(UserError, match="known: H100, H200, A100, cpu"):
        plan_launch(load_experiment(DEMO), gpu="V100")


def ablate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ablate", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # the CLI in subprocesses
def test_plan_cli_json_and_bad_gpu(tmp_path: Path) -> None:
    out = ablate("plan", str(DEMO), "train.steps=40", "--rows", "cpm,full", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert [t["row"] for t in plan["trials"]] == ["cpm", "cpm", "full", "full"]
    assert all(t["steps"] == 40 for t in plan["trials"])
    bad = ablate("plan", str(DEMO), "--gpu", "V100", cwd=tmp_path)
    lines = [line for line in (bad.stdout + bad.stderr).splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "known: H100, H200, A100, cpu" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # the CLI in a subprocess, twice
@pytest.mark.parametrize(
    "args",
    [
        ["run", str(DEMO), "train.steps=20", "--rows", "cpm", "--dry-run"],
        ["search", str(REPO / "search_spaces" / "loss_weights.yaml"), "--dry-run"],
    ],
)
def test_dry_run_prints_the_plan_and_creates_nothing(args: list[str], tmp_path: Path) -> None:
    out = ablate(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Plan:" in out.stdout and "tune.with_resources({'cpu': 1, 'gpu': 0})" in out.stdout
    assert (
        f"would be created, in a new store sqlite:///{tmp_path.resolve()}/runs/mlflow.db"
        in out.stdout
    )
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    assert not (tmp_path / "runs").exists()
