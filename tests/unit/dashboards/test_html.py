"""The static dashboard, opened in a real headless Chromium; and the MLflow UI command."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ablate.cli import app
from dashboards.html import build_dashboard
from dashboards.plots import pareto_front
from dashboards.results import mlflow_ui_command
from tests.paths import REPO
from tests.unit.dashboards.test_results import shared_store

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)


@pytest.fixture
def study_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return shared_store(tmp_path_factory)


def chromium(page: Path, tmp_path: Path, *args: str) -> str:
    """Run headless Chromium on a local page (fresh profile, no network chatter); stdout."""
    return chromium_url(page.as_uri(), tmp_path, *args)


def chromium_url(url: str, tmp_path: Path, *args: str) -> str:
    """Run headless Chromium on ``url`` (fresh profile, no network chatter); stdout."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=20000",
        *args,
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rendered(dom: str) -> tuple[int, int, str]:
    """(plots the page says rendered, plotly SVG roots, text of the error box) of a DOM dump."""
    count = re.search(r'<html[^>]*data-plots-rendered="(\d+)"', dom)
    errors = re.search(r'<pre id="js-errors"[^>]*>(.*?)</pre>', dom, re.S)
    return (
        int(count.group(1)) if count else -1,
        dom.count('class="main-svg"'),
        errors.group(1) if errors else "",
    )


@needs_chromium
def test_dashboard_renders_in_headless_chromium(study_uri: str, tmp_path: Path) -> None:
    index = build_dashboard("study", study_uri, tmp_path / "dash")
    source = index.read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"https?:", source)  # offline
    n_plots = int(re.search(r'data-plots="(\d+)"', source).group(1))
    # contrasts (forest plot), quality, AMS+SD, PSNR vs GMACs, PSNR vs MParam, quality vs
    # noise level, loss curves
    assert n_plots == 7

    dom = chromium(index, tmp_path, "--dump-dom")
    count, svgs, errors = rendered(dom)
    assert errors == "" and 'data-js-errors="yes"' not in dom
    assert count == n_plots and svgs >= n_plots
    assert f"{n_plots} plots rendered" in dom
    assert "failed: NaN loss" in dom and "Pareto front" in dom
    # the forest plot: the tested contrasts against the reference, the zero line, the caption
    assert "PSNR: effect per contrast, 95% CI" in dom and "sr3 − cpm" in dom
    assert "crossed random effects" in dom and "Holm (family-wise)" in dom
    assert "Optuna search" not in dom  # a grid: the ablation view only
    # quality vs noise level: one x0 curve and one sample-PSNR level per diffusion line
    assert "Quality vs noise level" in dom and "signal fraction gamma" in dom
    for label in ("sr3", "cpm_irm", "cpm_irm_nas"):
        assert f"{label}: one-step x0" in dom and f"{label}: sample psnr" in dom
    assert "cpm: one-step x0" not in dom  # deterministic rows have no curve
    assert "updatemenu-header" in dom  # the loss / loss/main switch
    # samples: 2 per row; 4 panels for the deterministic cpm, 5 (with SD) for the others
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', dom)) == 8 + 3 * 10
    assert (index.parent / "results.parquet").is_file()

    shot = tmp_path / "dashboard.png"
    chromium(
        index, tmp_path, "--hide-scrollbars", "--window-size=1400,3000", f"--screenshot={shot}"
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (3000, 1400) and pixels.std() > 10  # not a blank page


@needs_chromium
def test_script_errors_are_caught_by_the_check(study_uri: str, tmp_path: Path) -> None:
    """The browser check fails on a broken page: a script error is reported in the DOM."""
    index = build_dashboard("study", study_uri, tmp_path / "dash")
    broken = tmp_path / "broken.html"
    broken.write_text(
        index.read_text().replace("</body>", "<script>undefinedFn();</script></body>")
    )
    count, _, errors = rendered(chromium(broken, tmp_path, "--dump-dom"))
    assert "undefinedFn" in errors


@needs_chromium
def test_legacy_search_dashboard_has_optuna_plots(study_uri: str, tmp_path: Path) -> None:
    """A search logged before the objective tags and without validation histories."""
    index = build_dashboard("search", study_uri, tmp_path / "dash")
    dom = chromium(index, tmp_path, "--dump-dom")
    count, svgs, errors = rendered(dom)
    assert errors == "" and count == 4 and svgs >= 4  # history, parallel, importance, slices
    for title in (
        "Optimisation history: val PSNR",
        "Parallel coordinates: val PSNR",
        "Parameter importance (PED-ANOVA)",
        "Slice plots: val PSNR",
    ):
        assert title in dom
    assert "Optuna study 'search': 8 complete, 0 pruned of 8 trials." in dom
    assert "No trial logged a validation history of the objective." in dom
    assert "search dashboard" in dom and "Ablation table" not in dom


def _text(dom: str) -> str:
    """The page's visible text: the DOM without scripts (plotly.js, figure specs) and tags."""
    return re.sub(r"<[^>]+>", " ", re.sub(r"<script\b.*?</script>", " ", dom, flags=re.S))


def _row2_blocks(dom: str) -> list[str]:
    """The two-column rows of plots (``<div class="row2">``), as rendered."""
    starts = [m.start() for m in re.finditer(r'<div class="row2">', dom)]
    return [dom[a:b] for a, b in zip(starts, starts[1:] + [len(dom)], strict=True)]


@needs_chromium
def test_search_dashboard_renders_the_study_view(tmp_path_factory, tmp_path: Path) -> None:
    from tests.unit.dashboards.test_study import SEARCHED, tuned_store

    uri = tuned_store(tmp_path_factory)
    index = build_dashboard("tuned", uri, tmp_path / "dash")
    dom = chromium(index, tmp_path, "--dump-dom")
    count, svgs, errors = rendered(dom)
    assert errors == "" and 'data-js-errors="yes"' not in dom
    n_plots = int(re.search(r'data-plots="(\d+)"', index.read_text()).group(1))
    # intermediate values, history, parallel coordinates, importance, slices, confirm metrics
    assert n_plots == 6 and count == n_plots and svgs >= n_plots

    # the intermediate values render beside the history, the parallel coordinates below
    beside = [b for b in _row2_blocks(dom) if "Intermediate values: val PSNR" in b]
    assert len(beside) == 1 and "Optimisation history: val PSNR, best so far" in beside[0]
    assert beside[0].count('class="main-svg"') >= 2
    assert "Parallel coordinates: val PSNR" in dom and "pruned here (ASHA)" in dom

    # the trials table: one column per searched parameter, states, run links
    table = re.search(r'<table class="ablation trials sortable">.*?</table>', dom, re.S).group(0)
    heads = re.findall(r"<th [^>]*>([^<]*)</th>", table)
    assert heads[: len(SEARCHED) + 3] == ["#", *SEARCHED, "state", "val PSNR ↑"]
    assert table.count(">pruned at step") == 3 and table.count('href="http://127.0.0.1:5000/') == 8

    # no label anywhere on the page (table cells, plot text) is "None"
    assert not re.search(r"\bNone\b", _text(dom))
    assert "Confirm grid of search" in dom and "full_defaults" in dom

    # a header click sorts the table by that column
    clicking = tmp_path / "click.html"
    clicking.write_text(
        index.read_text().replace(
            "</body>",
            "<script>document.querySelector('table.trials th:nth-child(2)').click();"
            "document.documentElement.setAttribute('data-order', Array.prototype.map.call("
            "document.querySelectorAll('table.trials tbody tr'), function (r) {"
            "return r.cells[1].getAttribute('data-value'); }).join(' '));</script></body>",
        )
    )
    order = re.search(r'data-order="([^"]*)"', chromium(clicking, tmp_path, "--dump-dom"))
    values = [float(v) for v in order.group(1).split()]
    assert len(values) == 8 and values == sorted(values)


def test_pareto_front() -> None:
    points = [(1.0, 24.0), (4.0, 23.0), (2.0, 25.0), (3.0, 25.5), (2.5, 24.5)]
    assert pareto_front(points) == [0, 2, 3]


def test_cli_dashboard_writes_a_page(study_uri: str, tmp_path: Path) -> None:
    out = tmp_path / "cli-dash"
    args = ["dashboard", "study", "--tracking-uri", study_uri, "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "index.html").stat().st_size > 1_000_000  # plotly.js is inlined
    result = CliRunner().invoke(app, ["dashboard", "nope", "--tracking-uri", study_uri])
    assert result.exit_code == 2 and "no launch or experiment named 'nope'" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_command_binds_localhost_to_the_workdir_store(tmp_path: Path) -> None:
    cmd = mlflow_ui_command(tmp_path, port=5123)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "ui"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cmd[cmd.index("--default-artifact-root") + 1] == (tmp_path / "mlartifacts").as_uri()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
    remote = mlflow_ui_command(tmp_path, host="0.0.0.0", tracking_uri="postgresql://db/mlflow")
    assert remote[remote.index("--backend-store-uri") + 1] == "postgresql://db/mlflow"
    assert remote[remote.index("--host") + 1] == "0.0.0.0"


@pytest.mark.slow
def test_ui_serves_the_store_on_localhost(study_uri: str, tmp_path: Path) -> None:
    workdir = Path(study_uri.removeprefix("sqlite:///")).parent
    port = _free_port()
    cmd = mlflow_ui_command(workdir, port=port)
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, body = time.monotonic() + 90, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert body.strip() == "OK", (tmp_path / "ui.log").read_text()[-2000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it spawned
        proc.wait(timeout=60)


def test_dashboard_of_a_study_where_every_trial_failed(study_uri: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from tests.unit.dashboards.test_results import _log_trial

    client = MlflowClient(tracking_uri=study_uri)
    exp = client.create_experiment("allfailed", artifact_location=(tmp_path / "art").as_uri())
    pid = client.create_run(exp, tags={"ablate.kind": "launch"}).info.run_id
    client.log_param(pid, "rows", "cpm")
    _log_trial(client, exp, pid, "cpm", 0, tmp_path, status="failed", error="CUDA OOM")
    source = build_dashboard("allfailed", study_uri, tmp_path / "dash").read_text()
    assert "failed: CUDA OOM" in source and "No trial logged a &#x27;loss&#x27; history." in source


def write_factorial(root: Path) -> str:
    """A finished launch of ``demo_factorial.yaml`` (12 rows x 3 seeds, trial metrics): PSNR
    a set function of the switches (nas +1 dB, irm:spectrum +1 dB) plus seed noise, the
    launch's experiment YAML logged on its parent run as a launch logs it."""
    import yaml
    from mlflow.tracking import MlflowClient

    from ablate.config import load_experiment
    from tests.unit.dashboards.test_results import _log_trial

    exp = load_experiment(REPO / "search_spaces" / "demo_factorial.yaml")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("factorial", artifact_location=(root / "art").as_uri())
    pid = client.create_run(exp_id, run_name="launch", tags={"ablate.kind": "launch"}).info.run_id
    client.log_param(pid, "rows", ",".join(exp.rows))
    yaml_path = root / "demo-factorial.experiment.yaml"
    yaml_path.write_text(yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False))
    client.log_artifact(pid, str(yaml_path))
    tmp = root / "staging"
    tmp.mkdir()
    rng = np.random.default_rng(0)
    for name, row in exp.rows.items():
        x = {f: 0.5 if getattr(row, f) else -0.5 for f in ("irm", "nas", "spectrum")}
        for seed in range(3):
            psnr = 25 + x["nas"] + x["irm"] * x["spectrum"] + 0.3 * seed + rng.normal(0, 0.1)
            metrics = {"psnr": psnr, "ssim": 0.9 + psnr / 1000, "nmse": 0.1 - psnr / 1000}
            metrics |= {"params_m": 0.3, "gmacs": 0.2, "train_s": 10.0, "train_it_per_s": 5.0}
            _log_trial(client, exp_id, pid, name, seed, tmp, metrics=metrics)
    client.set_terminated(pid)
    return uri


@needs_chromium
def test_factorial_dashboard_shows_effects_and_interactions(tmp_path: Path) -> None:
    """A factorial design's dashboard: the effects' forest plot, the interaction panels and
    the effects table, rendered by Chromium without a script error."""
    index = build_dashboard("factorial", write_factorial(tmp_path), tmp_path / "dash")
    n_plots = int(re.search(r'data-plots="(\d+)"', index.read_text()).group(1))
    dom = chromium(index, tmp_path, "--dump-dom")
    count, svgs, errors = rendered(dom)
    assert errors == "" and count == n_plots and svgs >= n_plots
    assert "PSNR: main effects and two-way interactions, 95% CI" in dom
    assert "PSNR: two-way interactions a:b" in dom and "irm:spectrum" in dom
    assert "Effects of 'factorial' (factorial design over irm, nas, spectrum, contrastive)" in dom
    assert "irm:contrastive: not estimated" in dom
