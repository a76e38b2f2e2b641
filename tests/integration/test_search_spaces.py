"""Each YAML of search_spaces/ runs on its own defaults at a reduced step count (issue 25).

Toy-scale tests used to pick settings that dodge a user's code paths: ``steps < log_every``
(no progress report between validations), ``eval_every`` dividing ``steps``, one seed (the
table's paired test never runs), ``ams_samples: 1``. Here every YAML keeps its own
``log_every``, ``eval_every``, seeds, ``ams_samples``, loader workers and scheduler; only the
step count falls (still past ``log_every``, and past ``eval_every`` without dividing it), and
for the paper-scale YAMLs the networks, the dataset and PMDM/Palette's diffusion steps T shrink
and the trial asks for one CPU and no GPU (the paper's ``resources`` need 4 CPUs and a GPU per
trial). ``demo.yaml`` runs at
its full defaults in ``tests/integration/test_readme.py`` (``ablate demo``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.paths import REPO

TINY_DATA = ["data.preset=tiny"]
#: Paper-scale YAMLs at toy size: 30 steps cross their log_every (25); eval_every is 0.
PAPER_TABLE2 = [
    *TINY_DATA,
    "model.sr3.width=8",
    "model.sr3.mults=[1,2,2]",
    "model.sr3.res_blocks=1",
    "model.coarse_to_fine.cpm_width=8",
    "model.coarse_to_fine.irm_width=8",
    "model.coarse_to_fine.res_blocks=1",
    "model.coarse_to_fine.guide_channels=8",
]
PMDM_TABLE1 = [
    *TINY_DATA,
    "model.deeppet.width=8",
    "model.gan.width=8",
    "model.vqvae.width=16",
    "model.vqvae.code_dim=8",
    "model.vqvae.codes=16",
    "model.pmdm.width=8",
    "model.pmdm.mults=[1,2,2]",
    "model.pmdm.res_blocks=1",
    # T = 50, not 1000: Palette/PMDM sample through every step of T, K = 10 times per test
    # slice, which at T = 1000 took 15 min a trial on 2 cores (the sampler and K stay the YAML's);
    # the linear betas end at 0.2, not 0.02, so the 50-step schedule still ends at noise
    # (signal fraction 0.005; the preflight refuses one that does not)
    "diffusion.pmdm.train_steps=50",
    "diffusion.pmdm.beta_end=0.2",
]
ONE_CPU = ["resources.cpu=1", "resources.gpu=0"]

#: (id, CLI arguments after ``ablate``, experiment name, what kind of launch).
CASES = [
    # log_every 25, eval_every 100 (not dividing 110), ams_samples 4, ASHA
    (
        "loss_weights",
        ["search", "search_spaces/loss_weights.yaml", "search.num_samples=3", "train.steps=110"],
        "loss-weights",
        "search",
    ),
    # log_every 25 against eval_every 40: progress posts at 25 and 50 fall between validations
    # (an eval_every equal to log_every leaves no step for a progress post)
    (
        "loss_weights-multiobjective",
        [
            "search",
            "search_spaces/loss_weights.yaml",
            "search.metric=[psnr,sd]",
            "search.mode=[max,min]",
            "search.num_samples=2",
            "train.steps=60",
            "train.eval_every=40",
        ],
        "loss-weights",
        "search",
    ),
    (
        "paper_table2",
        ["run", "search_spaces/paper_table2.yaml", "--seeds", "2", "train.steps=30"]
        + PAPER_TABLE2
        + ONE_CPU,
        "paper-table2",
        "grid",
    ),
    (
        "pmdm_table1",
        ["run", "search_spaces/pmdm_table1.yaml", "--seeds", "2", "train.steps=30"]
        + PMDM_TABLE1
        + ONE_CPU,
        "pmdm-table1",
        "grid",
    ),
]


def _ablate(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ablate", *args], cwd=folder, capture_output=True, text=True, timeout=1200
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "name", "kind"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_search_space_defaults_run_end_to_end(
    args: list[str], name: str, kind: str, tmp_path: Path
) -> None:
    shutil.copytree(REPO / "search_spaces", tmp_path / "search_spaces")
    run = _ablate(tmp_path, *args)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    # every Tune result is a validation holding the metric ASHA / the checkpoint score reads
    results = list((tmp_path / "runs" / "ray_results" / name).glob("*/result.json"))
    assert results
    for path in results:
        reports = [json.loads(line) for line in path.read_text().splitlines()]
        assert reports and all("val_psnr" in r and "it_per_s" not in r for r in reports)
    # and the live view got progress between them (stderr is no terminal: printed lines)
    assert "it/s" in run.stderr and "0 failed" in run.stdout + run.stderr
    table = _ablate(tmp_path, "table", name, "--format", "md")
    assert table.returncode == 0, table.stderr
    if kind == "grid":  # two seeds: every row's p is a paired test over matched seeds
        rows = [
            line for line in table.stdout.splitlines() if line.startswith("| (") or "2/2" in line
        ]
        assert rows and all("2/2" in line for line in rows), table.stdout
        assert "2 seeds" in table.stdout, table.stdout
