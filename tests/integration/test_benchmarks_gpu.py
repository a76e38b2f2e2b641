"""``benchmarks/gpu.py`` end to end on CPU at toy scale: every section is measured and the
targets are computed from the measurements (the GPU numbers come from the same code)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO


def test_gpu_benchmark_measures_every_section_and_checks_the_targets(tmp_path: Path) -> None:
    command = [
        sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--quick", "--device", "cpu",
        "--config", str(REPO / "search_spaces" / "demo.yaml"), "--image-size", "32",
        "--rows", "sr3", "full", "--variants", "fp32", "bf16", "--max-batch", "8",
        "--pack", "1", "2", "--window-s", "2", "--pack-setup-s", "60",
        "--results-dir", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Issue 9 targets" in done.stdout
    record = json.loads((tmp_path / "gpu-cpu-demo.json").read_text())
    rows = {r["row"]: r for r in record["rows"]}
    assert list(rows) == ["sr3", "full"]
    for r in rows.values():
        assert set(r["it_per_s_b4"]) == {"fp32", "bf16"}
        assert [p["batch"] for p in r["batch_sweep"]][0] == 4
        assert r["saturating_batch"] in (4, 8) and r["mfu"] > 0
        assert r["sampling"]["bf16"]["ams_ms"] > 0  # both rows sample stochastically
    assert [p["trials"] for p in record["packing"]] == [1, 2]
    goals = {g["target"]: g["value"] for g in record["targets"]}
    full, sr3 = rows["full"], rows["sr3"]
    speedup = full["it_per_s_b4"]["bf16"] / full["it_per_s_b4"]["fp32"]
    assert goals["full: bf16 vs fp32 it/s at batch 4"] == speedup
    ratio = sr3["sampling"]["bf16"]["single_ms"] / full["sampling"]["bf16"]["single_ms"]
    assert goals["sr3 100-step / full 10-step sample ms, 1 image"] == ratio
    assert goals["packing: 4 trials vs 1, aggregate it/s"] is None  # 4 was not run
    curve = full["loss_curve"]
    assert [len(c) for c in curve["curves"].values()] == [2, 2]  # --quick: 20 steps, 2 windows
    assert curve["curves"]["bf16"] != curve["curves"]["fp32"]  # bf16 really ran
    assert goals["full: bf16 vs fp32 loss curve, max gap %"] == 100 * curve["max_rel_gap"] < 5
