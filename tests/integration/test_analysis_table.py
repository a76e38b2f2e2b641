"""``ablate table`` shows contrasts, claims and variance shares, as a user runs it: a real sqlite
MLflow store whose trials logged per-subject artifacts (the trainable's contract:
test_subjects.parquet, test_samples.parquet) and whose launch logged its experiment YAML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

ROWS = ["sr3", "cpm", "full"]
SEEDS = [0, 1, 2]
SUBJECTS = ["sub-01", "sub-02", "sub-03", "sub-04"]
K = 3
YAML = {
    "name": "claims",
    "rows": {r: {"method": "sr3"} for r in ROWS},
    "analysis": {"contrasts": "additive", "correction": "holm"},
    "claims": [
        {"better": "full", "than": "sr3", "metric": "psnr"},
        {"better": "cpm", "than": "sr3", "metric": "psnr"},
        {"trend": ROWS, "metric": "sd", "direction": "decreasing"},
    ],
}


def subject_psnr(row: str, seed: int) -> np.ndarray:
    """full is 3 dB above sr3 on every subject and seed; cpm equals sr3 up to noise."""
    rng = np.random.default_rng(100 * ROWS.index(row) + seed)
    return 24 + 3.0 * (row == "full") + np.arange(len(SUBJECTS)) + rng.normal(0, 0.3, 4)


def write_store(root: Path) -> str:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("claims", artifact_location=(root / "art").as_uri())
    parent = client.create_run(exp_id, run_name="launch", tags={"ablate.kind": "launch"})
    pid = parent.info.run_id
    client.log_param(pid, "rows", ",".join(ROWS))
    staging = root / "staging"
    staging.mkdir()
    config = staging / "claims.experiment.yaml"
    config.write_text(yaml.safe_dump(YAML, sort_keys=False))
    client.log_artifact(pid, str(config))
    for i, row in enumerate(ROWS):
        for seed in SEEDS:
            tags = {"mlflow.parentRunId": pid, "ablate.kind": "trial", "ablate.status": "completed"}
            run_id = client.create_run(exp_id, run_name=f"{row}-s{seed}", tags=tags).info.run_id
            psnr = subject_psnr(row, seed)
            sd = 0.01 - 0.002 * i + 1e-4 * seed
            metrics = {"psnr": psnr.mean(), "ssim": 0.9, "nmse": 0.05, "sd": sd}
            client.log_batch(
                run_id,
                params=[Param("row", row), Param("seed", str(seed))],
                metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
            )
            folder = staging / run_id
            folder.mkdir()
            pd.DataFrame(
                {"subject": SUBJECTS, "n_slices": 8, "psnr": psnr, "ssim": 0.9, "nmse": 0.05}
            ).to_parquet(folder / "test_subjects.parquet")
            noise = np.random.default_rng(seed).normal(0, 0.1, (len(SUBJECTS), K))
            pd.DataFrame(
                {
                    "subject": np.repeat(SUBJECTS, K),
                    "sample": np.tile(np.arange(K), len(SUBJECTS)),
                    "psnr": (psnr[:, None] + noise).ravel(),
                }
            ).to_parquet(folder / "test_samples.parquet")
            client.log_artifacts(run_id, str(folder))
            client.set_terminated(run_id, "FINISHED")
    client.set_terminated(pid, "FINISHED")
    return uri


def ablate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ablate.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


pytestmark = pytest.mark.slow  # nine CLI subprocesses: about a minute on an idle 2-core machine


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("claims")
    return root, write_store(root)


def test_table_prints_contrasts_claims_and_shares(store: tuple[Path, str]) -> None:
    root, uri = store
    result = ablate("table", "claims", "--tracking-uri", uri, "--format", "md", cwd=root)
    assert result.returncode == 0, result.stderr
    md = result.stdout
    assert md.index("Ablation study 'claims'") < md.index("Contrasts of 'claims'")
    assert "additive: each row against the one before it" in md
    assert "crossed random effects" in md and "Holm (family-wise)" in md  # test + correction
    assert "| cpm − sr3 | PSNR |" in md and "| full − cpm | PSNR |" in md
    assert "3 seeds × 4 subj." in md
    claims = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ")[4]
        for line in md.splitlines()
        if " better than " in line or " decreasing over " in line
    }
    assert claims == {
        "full better than sr3 in psnr": "supported",
        "cpm better than sr3 in psnr": "unresolved",
        "sd decreasing over sr3 → cpm → full": "supported",
    }
    assert "the paper's +2.34 dB needs ≈" in md  # TABLE2: 25.638 - 23.302
    assert "Where the variance of one subject's value comes from" in md

    latex = ablate("table", "claims", "--tracking-uri", uri, "--format", "latex", cwd=root)
    assert latex.returncode == 0, latex.stderr
    assert latex.stdout.count(r"\toprule") == 4 and r"\label{tab:claims-claims}" in latex.stdout
    html = ablate("table", "claims", "--tracking-uri", uri, "--format", "html", cwd=root)
    assert '<tr class="supported">' in html.stdout and '<table class="ablation contrasts">' in (
        html.stdout
    )


def test_csv_parts_and_the_tidy_frame_round_trip(store: tuple[Path, str]) -> None:
    root, uri = store
    args = ["table", "claims", "--tracking-uri", uri]
    plain = ablate(*args, "--format", "csv", cwd=root)
    assert plain.returncode == 0 and plain.stdout.startswith("line,row,label,")  # as before
    claims = ablate(*args, "--format", "csv", "--part", "claims", cwd=root)
    assert claims.returncode == 0, claims.stderr
    frame = pd.read_csv(pd.io.common.StringIO(claims.stdout))
    assert list(frame["verdict"]) == ["supported", "unresolved", "supported"]
    assert (frame["n_seeds"] == 3).all()

    out = root / "claims.parquet"
    written = ablate(*args, "--format", "parquet", "--out", str(out), cwd=root)
    assert written.returncode == 0, written.stderr
    assert "9 trial, 36 subject, 108 sample lines" in written.stdout
    tidy = pd.read_parquet(out)
    assert {"row", "seed", "subject", "sample", "dataset", "launch", "level", "psnr"} <= set(tidy)
    subjects = tidy[tidy["level"] == "subject"]
    assert sorted(subjects["subject"].unique()) == SUBJECTS
    full = subjects[(subjects["row"] == "full") & (subjects["seed"] == 1)]["psnr"]
    assert full.to_numpy() == pytest.approx(subject_psnr("full", 1))

    from_mlflow = ablate(*args, "--format", "csv", "--part", "contrasts", cwd=root)
    from_file = ablate("table", str(out), "--format", "csv", "--part", "contrasts", cwd=root)
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout == from_mlflow.stdout  # the file keeps the settings and the data


def test_parent_run_holds_effects_and_claims(store: tuple[Path, str]) -> None:
    from ablate.mlflow_internals import MLFLOW_RUN_NOTE
    from dashboards.mlflow_report import attach_report

    _, uri = store
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("claims")
    parent = client.search_runs([exp.experiment_id], "tags.`ablate.kind` = 'launch'")[0]
    assert "report/ablation_table.md" in attach_report(uri, "claims", parent.info.run_id)
    run = client.get_run(parent.info.run_id)
    metrics = run.data.metrics
    assert metrics["effect/full-cpm/psnr"] > 2 and metrics["effect/full-cpm/psnr.low"] > 0
    assert metrics["claim/0/effect.p_adjusted"] < 0.05
    note = run.data.tags[MLFLOW_RUN_NOTE]
    assert "Claims of 'claims'" in note and "| full better than sr3 in psnr |" in note
