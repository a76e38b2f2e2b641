"""The package works from a wheel, not only from a clone: ``pip install .`` (not editable) into
a fresh virtual environment, then the CLI from an empty folder reads the search spaces and the
benchmark records that ship inside the wheel (ablate/shipped.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.paths import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A venv holding only the built wheel (its dependencies come from the system's packages,
    which every machine running the suite has installed), with its ``bin`` first on PATH."""
    base = tmp_path_factory.mktemp("wheel")
    wheels = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("ablate_pet-*.whl")
    env_dir = base / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        # --ignore-installed: an editable install of the project among the system's packages
        # (a developer's clone) must not stand in for the wheel
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    env["COLUMNS"] = "250"  # the table's rows on one line each, whatever the runner's terminal
    return env


def _ablate(env: dict[str, str], cwd: Path, *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        ["ablate", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_the_wheel_imports_ablate_from_site_packages(wheel_env: dict[str, str], tmp_path: Path):
    where = subprocess.run(
        ["python", "-c", "import ablate, ablate.shipped as s; print(ablate.__file__); "
         "print(s.search_spaces_dir()); print(s.benchmark_records_dir())"],
        cwd=tmp_path, env=wheel_env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all("site-packages" in line for line in where), where
    assert not any(str(REPO) in line for line in where), where


def test_plan_and_count_run_from_an_empty_folder(wheel_env: dict[str, str], tmp_path: Path):
    plan = _ablate(wheel_env, tmp_path, "plan", "paper_table2", "--gpu", "H100")
    assert "18 trials" in plan and "measured (throughput-cuda.json: row sr3)" in plan
    count = _ablate(wheel_env, tmp_path, "count")
    assert "128.737" in count and "34.101" in count


def test_demo_runs_from_an_empty_folder(wheel_env: dict[str, str], tmp_path: Path):
    out = _ablate(wheel_env, tmp_path, "demo", "--rows", "sr3,cpm", "--seeds", "1", "--steps", "4")
    assert "(b) CPM" in out and "(a) SR3 baseline" in out
