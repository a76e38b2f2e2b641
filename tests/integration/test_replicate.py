"""``ablate run --until-resolved`` as a user runs it (issue 28 part 4): seed waves on a real
Ray cluster and MLflow store, Ctrl-C in the middle of wave 2, ``ablate resume``, the table.

Three tiny rows; the YAML tests one contrast, ``cpm_copy − cpm``, whose rows are the same
network trained from the same seeds: it is 0 on every seed and never resolves. So the waves'
course is known: wave 2 gives seeds 2 and 3 to ``cpm`` and ``cpm_copy`` only (``cpm_irm`` is
in no contrast), and replication stops at the seed cap of 4. Which rows get seeds when some
contrasts resolve and others do not is tested with planted effects in test_replication.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import mlflow_runs, tiny_experiment

pytestmark = pytest.mark.slow

NAME = "waves"
ROWS = {
    "cpm": {"method": "coarse_to_fine"},
    "cpm_irm": {"method": "coarse_to_fine", "irm": True},
    "cpm_copy": {"method": "coarse_to_fine", "label": "CPM again"},
}
STOP = (
    "after wave 2, unresolved at the seed cap (4): cpm_copy − cpm (resolved: corrected p < 0.025,"
    " alpha 0.05 over 2 planned looks, Bonferroni; the table's p values are each one look's)"
)


def _ablate(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ablate.cli", *args],
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_waves_interrupted_mid_wave_resume_and_say_why_they_stopped(
    ray_cluster, tmp_path: Path
) -> None:
    raw = tiny_experiment(NAME, ROWS, analysis={"contrasts": [["cpm_copy", "cpm"]]})
    raw["train"].update({"steps": 12, "log_every": 4, "eval_every": 6})  # intervals crossed
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    address = ["--address", ray_cluster.address]
    wave2 = tmp_path / "runs" / "ray_results" / NAME / "wave2"

    started = time.monotonic()
    run = _ablate(
        ["run", "space.yaml", "--until-resolved", "--max-seeds", "4", "--budget", "2h", *address],
        tmp_path,
        tmp_path / "run.log",
    )
    try:
        deadline = time.monotonic() + 300
        while not any(wave2.glob("*-s2-*")):  # a trial of wave 2 has started
            assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "wave 2 did not start within 300 s"
            time.sleep(0.2)
        run.send_signal(signal.SIGINT)  # Ctrl-C mid-wave
    finally:
        rc = _finish(run, 180)
    log = (tmp_path / "run.log").read_text()
    assert rc == 130, log[-3000:]
    assert "replication: seed waves until every contrast and claim resolves, at most 4 seeds" in log
    assert "wave 1 (" in log and "cpm_copy − cpm: unresolved" in log
    assert "wave 2: seeds [2, 3] for rows cpm, cpm_copy" in log
    assert f"Continue with: ablate resume {NAME}" in log
    interrupted = mlflow_runs(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", NAME, kind="trial")
    assert len(interrupted) < 10  # wave 2 was cut short

    resume = _ablate(["resume", NAME, *address], tmp_path, tmp_path / "resume.log")
    assert _finish(resume, 300) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    resumed = (tmp_path / "resume.log").read_text()
    assert f"replication stopped: {STOP}" in resumed

    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    trials = mlflow_runs(uri, NAME, kind="trial")
    names = sorted(trials["tags.mlflow.runName"])
    assert names == [*(f"cpm-s{s}" for s in range(4)), *(f"cpm_copy-s{s}" for s in range(4)),
                     "cpm_irm-s0", "cpm_irm-s1"]  # fmt: skip
    assert (trials["tags.ablate.status"] == "completed").all()
    assert set(interrupted["run_id"]) <= set(trials["run_id"])  # resumed, not duplicated

    parent = mlflow_runs(uri, NAME, kind="launch").iloc[0]
    assert parent["status"] == "FINISHED"
    assert parent["tags.ablate.replication_waves"] == "2"
    assert parent["tags.ablate.replication_stop"] == STOP
    artifact = MlflowClient(uri).download_artifacts(
        parent["run_id"], f"{NAME}.replication.json", str(tmp_path)
    )
    state = json.loads(Path(artifact).read_text())
    assert [(w["rows"], w["seeds"]) for w in state["waves"]] == [
        (["cpm", "cpm_copy", "cpm_irm"], [0, 1]),
        (["cpm", "cpm_copy"], [2, 3]),
    ]
    first, second = state["decisions"]
    assert [(t["name"], t["state"], t["n_seeds"]) for t in first["targets"]] == [
        ("cpm_copy − cpm", "unresolved", 2)
    ]
    assert first["stop"] is None and second["stop"] == "seed_cap"
    assert second["targets"][0]["effect"] == 0.0 and second["targets"][0]["n_seeds"] == 4
    assert 0 < first["spent_hours"] < second["spent_hours"] < 2

    table = subprocess.run(
        [sys.executable, "-m", "ablate.cli", "table", NAME, "--format", "md"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert table.returncode == 0, table.stderr
    launch = parent["tags.mlflow.runName"]
    assert f"\n- seed waves of launch '{launch}': 2; stopped: {STOP}\n" in table.stdout
    print(f"waves, Ctrl-C, resume, table: {time.monotonic() - started:.0f} s")
