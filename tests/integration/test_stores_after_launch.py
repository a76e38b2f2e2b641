"""Issue 24's smaller findings, each checked as a user meets it: the ``ablate`` CLI as a
subprocess in a fresh folder, on stores a launch leaves.

- the dashboard counts trials and draws training curves as the table does (a completed trial
  without the table's metric is failed in both, and its loss is drawn);
- an interrupted launch's summary says interrupted;
- a launch's dashboard is titled with the launch's name;
- ``ablate predict`` clamps activity at 0 unless ``--no-clamp``; a missing input is "not found";
- the dry run says whether the experiment exists in the store;
- run links open MLflow's classic run view;
- a YAML typo gets the command line's "did you mean";
- the dashboard's table and plot labels fit a 1400 px window (headless Chromium).

Marked slow: the Ray launch, the export + predict, the Chromium check. The stores are those
of ``tests.unit.dashboards.test_results`` (a grid with a failed row and a completed trial that
logged no metric, a search) and ``tests.integration.test_export_predict`` (launch 'mylaunch' of
experiment 'exp-it': two trained tiny CPM trials).
"""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from tests.conftest import tiny_experiment
from tests.integration.test_export_predict import store  # noqa: F401 - the module's fixture, reused
from tests.unit.dashboards.test_html import chromium, needs_chromium
from tests.unit.dashboards.test_results import shared_store

ML_VIEW = "workflowType=machine_learning"


def ablate(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ablate", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def ok(*args: str, cwd: Path) -> str:
    done = ablate(*args, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return " ".join(done.stdout.split())  # rich wraps at 80 columns


def error(*args: str, cwd: Path) -> str:
    done = ablate(*args, cwd=cwd)
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    return lines[0]


@pytest.fixture
def study_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return shared_store(tmp_path_factory)


def _figures(page: str) -> list[dict]:
    specs = re.findall(r'<script type="application/json" class="ablate-figure"[^>]*>(.*?)</script>',
                       page, re.S)  # fmt: skip
    return [json.loads(spec.replace("<\\/", "</")) for spec in specs]


def test_dashboard_counts_and_curves_are_the_tables(study_uri: str, tmp_path: Path) -> None:
    """'study' holds cpm_irm_nas seed 1: FINISHED in MLflow with a loss history but no
    metric. The table fails it; the dashboard must count it failed and draw its loss."""
    out = tmp_path / "dash"
    ok("dashboard", "study", "--tracking-uri", study_uri, "--out", str(out), cwd=tmp_path)
    page = (out / "index.html").read_text()
    text = ablate("table", "study", "--tracking-uri", study_uri, "--format", "csv", cwd=tmp_path)
    lines = list(csv.DictReader(io.StringIO(text.stdout)))
    completed = sum(int(ln["n"]) for ln in lines)
    trials = sum(int(ln["total"]) for ln in lines)
    meta = re.search(r'<p class="meta">(\d+) trials \(([^)]*)\)', page)
    assert meta, page[:2000]
    counts = {s: int(n) for n, s in re.findall(r"(\d+) (\w+)", meta.group(2))}
    assert int(meta.group(1)) == trials
    assert counts.get("completed") == completed and counts.get("failed") == trials - completed

    (curves,) = [f for f in _figures(page) if f["layout"].get("xaxis", {}).get("title", {})
                 .get("text") == "iteration"]  # fmt: skip
    hovers = [t.get("hovertext", "") for t in curves["data"]]
    assert any(h.endswith("seed 1, failed") and "cpm_irm_nas" in h for h in hovers), hovers
    assert any(t["line"].get("dash") == "dash" for t in curves["data"])
    assert "Dashed: trials that did not complete" in page


def test_a_launch_dashboard_is_titled_with_the_launch(store: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "dash"
    ok("dashboard", "mylaunch", "--workdir", str(store), "--out", str(out), cwd=tmp_path)
    page = (out / "index.html").read_text()
    assert "<h1>mylaunch (experiment exp-it): ablation dashboard</h1>" in page
    assert "Launch &#x27;mylaunch&#x27; of ablation study &#x27;exp-it&#x27;" in page
    ok("dashboard", "exp-it", "--workdir", str(store), "--out", str(out), cwd=tmp_path)
    assert "<h1>exp-it: ablation dashboard</h1>" in (out / "index.html").read_text()


@pytest.mark.slow
def test_predict_clamps_activity_at_zero_unless_told(store: Path, tmp_path: Path) -> None:  # noqa: F811
    ok("export", "exp-it", "--workdir", str(store), "--out", str(tmp_path / "exp"), cwd=tmp_path)
    rng = np.random.default_rng(0)
    volume = rng.uniform(0, 3, (40, 40, 4)).astype(np.float32)
    volume[:, :, 0] = 0  # an empty slice, as at a cut volume's end
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "lpet.nii.gz")
    model = ["--model", str(tmp_path / "exp")]
    ok("predict", *model, "lpet.nii.gz", "clamped.nii.gz", cwd=tmp_path)
    ok("predict", *model, "--no-clamp", "lpet.nii.gz", "raw.nii.gz", cwd=tmp_path)
    clamped = np.asarray(nib.load(tmp_path / "clamped.nii.gz").dataobj)
    raw = np.asarray(nib.load(tmp_path / "raw.nii.gz").dataobj)
    assert clamped.shape == raw.shape == volume.shape
    assert raw.min() < 0, "the 2-step model writes negative activity: nothing to clamp"
    assert clamped.min() >= 0
    np.testing.assert_array_equal(clamped, np.maximum(raw, 0))


def test_a_missing_predict_input_is_not_found(tmp_path: Path) -> None:
    for missing in ("scan.nii.gz", "scan.npy", "dicom_folder"):
        line = error("predict", "--model", "models:/x@champion", missing, "o.nii.gz", cwd=tmp_path)
        assert f"{missing}: not found" in line and "unsupported" not in line


def test_dry_run_says_whether_the_experiment_exists(store: Path, tmp_path: Path) -> None:  # noqa: F811
    uri = f"sqlite:///{store.resolve()}/mlflow.db"
    for name, expected in [
        ("exp-it", f"experiment 'exp-it' exists in {uri} (1 earlier launch(es)"),
        ("fresh", f"experiment 'fresh' would be created in {uri}"),
    ]:
        space = tmp_path / f"{name}.yaml"
        space.write_text(
            yaml.safe_dump(tiny_experiment(name, {"cpm": {"method": "coarse_to_fine"}}))
        )
        out = ok("run", str(space), "--workdir", str(store), "--dry-run", cwd=tmp_path)
        assert expected in out and "(exists)" not in out
    out = ok("run", str(space), "--workdir", "elsewhere", "--dry-run", cwd=tmp_path)
    assert "experiment 'fresh' would be created, in a new store" in out
    assert not (tmp_path / "elsewhere").exists()


def test_yaml_typos_get_the_command_lines_did_you_mean(tmp_path: Path) -> None:
    raw = tiny_experiment("typo", {"cpm": {"method": "coarse_to_fine"}})
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(raw))
    cases = [
        ({"train": {**raw["train"], "stpes": 5}}, "train.stpes=5", "did you mean 'train.steps'?"),
    ]
    for typo, assignment, hint in cases:
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**raw, **typo}))
        from_yaml = error("run", str(bad), "--dry-run", cwd=tmp_path)
        from_cli = error("run", str(good), assignment, "--dry-run", cwd=tmp_path)
        assert hint in from_yaml and hint in from_cli, (from_yaml, from_cli)
        assert from_yaml.split(": ", 2)[2] == from_cli.split(": ", 2)[2]  # one wording
    bad.write_text(
        yaml.safe_dump({**raw, "rows": {"cpm": {"method": "coarse_to_fine", "nass": 1}}})
    )
    line = error("run", str(bad), "--dry-run", cwd=tmp_path)
    assert (
        "unknown key 'rows.cpm.nass' for method 'coarse_to_fine': did you mean 'rows.cpm.nas'?"
        in line
    )


def test_run_links_open_the_classic_run_view(study_uri: str, tmp_path: Path) -> None:
    """MLflow 3.17's UI picks a run page's view from its URL (else the browser's storage,
    else GenAI): every run link of the dashboard carries the machine-learning view."""
    out = tmp_path / "dash"
    ok("dashboard", "search", "--tracking-uri", study_uri, "--out", str(out), cwd=tmp_path)
    links = re.findall(r'href="([^"]*/runs/[^"]*)"', (out / "index.html").read_text())
    assert links and all(link.endswith(f"?{ML_VIEW}") for link in links), links[:3]


_MEASURE = """<script>
window.addEventListener("load", function () {
  function inside(r, box) { return r.left >= box.left - 1 && r.right <= box.right + 1 &&
                                   r.top >= box.top - 1 && r.bottom <= box.bottom + 1; }
  function clipped(t) {  // a data label clipped by its plot area (plotly's cliponaxis)
    var point = t.closest(".textpoint");
    for (var n = t; point && n && n.getAttribute; n = n.parentNode) {
      if (n.getAttribute("clip-path")) return true;
      if (n.classList && n.classList.contains("plot")) return false;
    }
    return false;
  }
  function measure() {
    if (!document.documentElement.hasAttribute("data-plots-rendered")) {
      return setTimeout(measure, 200);
    }
    var de = document.documentElement, out = {page: [de.scrollWidth, de.clientWidth],
                                               tables: [], labels: []};
    document.querySelectorAll(".scroll").forEach(function (d) {
      out.tables.push([d.scrollWidth, d.clientWidth]);
    });
    document.querySelectorAll(".plot").forEach(function (p) {
      var svg = p.querySelector(".main-svg"), areas = [];
      p.querySelectorAll(".nsewdrag").forEach(function (a) {
        areas.push(a.getBoundingClientRect());
      });
      p.querySelectorAll("text").forEach(function (t) {
        var r = t.getBoundingClientRect();
        if (!t.textContent.trim() || r.width === 0) return;
        var ok = inside(r, svg.getBoundingClientRect()) &&
                 (!clipped(t) || areas.some(function (a) { return inside(r, a); }));
        if (!ok) out.labels.push(p.id + ": " + t.textContent);
      });
    });
    var pre = document.createElement("pre");
    pre.id = "measured"; pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  measure();
});
</script>"""


def _measure_at_1400(index: Path, tmp_path: Path) -> dict:
    page = index.with_name("measured.html")
    page.write_text(index.read_text().replace("</body>", _MEASURE + "</body>"))
    dom = chromium(page, tmp_path, "--window-size=1400,900", "--dump-dom")
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, dom[-3000:]
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.mark.slow
@needs_chromium
def test_the_dashboard_fits_1400_px(study_uri: str, store: Path, tmp_path: Path) -> None:  # noqa: F811
    """No horizontal scrolling (the page, the table's box) and no label cut at a plot's
    edge, in a 1400 px window: the synthetic study (five rows, a failed one, paper-scale
    costs) and a real launch's dashboard."""
    for name, where in [
        ("study", ["--tracking-uri", study_uri]),
        ("mylaunch", ["--workdir", str(store)]),
    ]:
        out = tmp_path / name
        ok("dashboard", name, *where, "--out", str(out), cwd=tmp_path)
        found = _measure_at_1400(out / "index.html", tmp_path)
        assert found["page"][0] <= found["page"][1], found
        assert found["tables"] and all(s <= c for s, c in found["tables"]), found
        assert found["labels"] == [], found


# --- an interrupted launch (Ray) -----------------------------------------------------------


@pytest.mark.slow
def test_an_interrupted_launch_says_interrupted_and_its_dashboard_shows_its_loss(
    tmp_path: Path,
) -> None:
    """Ctrl-C once the first trial checkpointed: the summary's first line says interrupted
    (not "2 trials, 0 failed"), and the launch's dashboard draws the interrupted trial's
    loss, which MLflow holds."""
    raw = tiny_experiment("stopped", {"cpm": {"method": "coarse_to_fine"}})
    # 400 steps: the signal lands while the first trial still trains (with 40, a loaded
    # machine finished it first, and the trial left interrupted had logged no loss yet)
    raw["train"] = {**raw["train"], "steps": 400, "eval_every": 10, "log_every": 10}
    raw["resources"] = {"cpu": 1, "max_concurrent": 1}
    space = tmp_path / "stopped.yaml"
    space.write_text(yaml.safe_dump(raw))
    log = (tmp_path / "run.log").open("w")
    driver = subprocess.Popen(
        ["ablate", "run", str(space), "--name", "noisy"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    trial_dirs = tmp_path / "runs" / "ray_results" / "noisy"
    try:
        deadline = time.monotonic() + 300
        while not any(trial_dirs.glob("*/checkpoint_*")):
            assert driver.poll() is None and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.3)
        driver.send_signal(signal.SIGINT)
        rc = driver.wait(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    text = " ".join((tmp_path / "run.log").read_text().split())
    assert rc == 130, text[-3000:]
    assert re.search(r"noisy: interrupted, [01] of 2 trials finished, \d+ s\.", text), text[-3000:]
    assert "2 trials, 0 failed" not in text

    out = tmp_path / "dash"
    ok("dashboard", "noisy", "--out", str(out), cwd=tmp_path)
    page = (out / "index.html").read_text()
    assert "<h1>noisy (experiment stopped): ablation dashboard</h1>" in page
    assert "interrupted" in re.search(r'<p class="meta">([^<]*)</p>', page).group(1)
    assert "No trial logged a &#x27;loss&#x27; history" not in page
    (curves,) = [f for f in _figures(page) if f["layout"].get("xaxis", {}).get("title", {})
                 .get("text") == "iteration"]  # fmt: skip
    assert any(t.get("hovertext", "").endswith("interrupted") for t in curves["data"])
