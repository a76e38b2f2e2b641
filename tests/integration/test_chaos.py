"""``benchmarks/chaos.py --short`` end to end: a 4-trial grid on the one-machine cluster
(``benchmarks/cluster.py``) loses a worker node, its driver, its tracking server (60-90 s)
and its object store (20-40 s), one of them during another, on the schedule of a fixed
seed; the launch still ends with every trial FINISHED once, every (metric, step) point of
the undisturbed reference logged exactly once, and no process left running. About 6
minutes on two cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.cluster import missing_tools
from tests.paths import REPO

pytestmark = pytest.mark.slow

SEED = 1
KINDS = {"kill_worker", "kill_driver", "mlflow_down", "s3_cut"}


def test_a_short_chaos_run_loses_and_repeats_nothing(tmp_path: Path) -> None:
    missing = missing_tools()
    if missing:
        pytest.skip(f"chaos test: {missing}")
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "chaos.py"), "--seed", str(SEED), "--short"]
        + ["--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = run.stdout[-8000:] + run.stderr[-4000:]
    record = json.loads((tmp_path / f"chaos-short-{SEED}.json").read_text())
    # every fault of the schedule fired, one of each kind, one during an outage
    schedule = record["schedule"]
    assert {fault["planned"]["kind"] for fault in schedule} == KINDS
    assert any(fault["planned"]["host"] for fault in schedule)
    assert all(f["executed"]["status"] in ("done", "cut short") for f in schedule), output
    verdict = record["verdict"]
    assert verdict["finished"] == verdict["trials"] == 4, output
    assert verdict["duplicate_runs"] == 0, verdict["status"]
    assert verdict["twice"] == 0, verdict["twice_points"]
    assert verdict["missing"] == 0, verdict["missing_points"]
    assert record["drivers"]["chaos"][-1]["exit"] == 0, output
    assert record["leftover_processes"] == []
    assert run.returncode == 0 and record["passed"], output
