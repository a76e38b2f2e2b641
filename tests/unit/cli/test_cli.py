"""The CLI's surface: help, and one-line errors (exit 2) for bad configs and launches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from tests.paths import REPO

runner = CliRunner()


def test_help_lists_the_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ablate.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in (
        "demo",
        "run",
        "search",
        "resume",
        "status",
        "table",
        "dashboard",
        "export",
        "predict",
        "count",
        "plan",
        "evaluate",
        "ui",
        "data",
    ):
        assert command in result.stdout


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrows:\n  cpm: {method: coarse_to_fine}\ntrain: {stepz: 3}\n")
    result = runner.invoke(app, ["run", str(bad), "--workdir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown key 'train.stepz'" in lines[0]
    assert "Traceback" not in result.output


def test_missing_config_and_bad_resources(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "config file not found" in result.output
    space = REPO / "search_spaces" / "demo.yaml"
    result = runner.invoke(app, ["run", str(space), "--resources", "tpu=1"])
    assert result.exit_code == 2 and "--resources" in result.output


def test_invalid_row_combination_fails_before_any_launch(tmp_path: Path) -> None:
    space = tmp_path / "rows.yaml"
    space.write_text("name: x\nrows:\n  bad: {method: coarse_to_fine, contrastive: true}\n")
    result = runner.invoke(app, ["run", str(space), "--workdir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "row 'bad'" in result.output and "contrastive needs irm" in result.output
    assert not (tmp_path / "runs" / "ray_results").exists()


def test_status_and_resume_in_a_workdir_without_a_store_create_nothing(tmp_path: Path) -> None:
    for command in ("status", "resume"):
        result = runner.invoke(app, [command, "nope", "--workdir", str(tmp_path)])
        assert result.exit_code == 2 and "no launches under" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # waits for the connection timeout
def test_unreachable_cluster_fails_fast_without_recording(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    space = REPO / "search_spaces" / "demo.yaml"
    runs = tmp_path / "runs"
    result = subprocess.run(  # its own process: no Ray an earlier test left connected here
        ["ablate", "run", str(space), "--address", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot reach a Ray cluster" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (runs / "mlflow.db").exists()
