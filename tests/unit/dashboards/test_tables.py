"""The ablation table against known MLflow runs: numbers, order, std, best marks, p-values."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats
from typer.testing import CliRunner

from ablate.cli import app
from ablate.errors import UserError
from dashboards.tables import AblationTable, Line, ablation_table, render, table_for
from tests.unit.dashboards.test_results import (
    NAS_PSNR,
    PSNR,
    ROWS,
    _log_trial,
    shared_store,
    slice_psnr,
    trial_metrics,
)


@pytest.fixture
def study_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return shared_store(tmp_path_factory)


def _line(table: AblationTable, name: str) -> Line:
    return next(ln for ln in table.lines if ln.name == name and ln.kind == "measured")


def test_rows_in_search_space_order_with_mean_std_over_seeds(study_uri: str) -> None:
    table = table_for("study", study_uri)
    assert [ln.name for ln in table.lines] == ROWS
    for row, seeds in PSNR.items():
        psnr = np.array(list(seeds.values()))
        line = _line(table, row)
        assert line.n == line.total == 3
        mean, std = line.values["psnr"]
        assert mean == pytest.approx(psnr.mean()) and std == pytest.approx(psnr.std(ddof=1))
        assert line.values["nmse"][0] == pytest.approx(np.mean(0.1 - psnr / 1000))
    assert "sd" not in _line(table, "cpm").values
    assert _line(table, "sr3").values["gmacs"] == (4.0, None)  # a cost has no spread
    assert [c.key for c in table.columns][:3] == ["psnr", "ssim", "nmse"]


def test_best_per_column_is_marked(study_uri: str) -> None:
    table = table_for("study", study_uri)
    best = {key: [ln.name for ln in table.lines if key in ln.best] for key in ("psnr", "nmse")}
    assert best == {"psnr": ["cpm_irm_nas"], "nmse": ["cpm_irm_nas"]}
    assert [ln.name for ln in table.lines if "gmacs" in ln.best] == ["cpm"]
    md = render(table, "md")
    assert f"**{NAS_PSNR:.2f}**" in md and "**0.05**" in md


def test_paired_test_over_seeds_matches_scipy(study_uri: str) -> None:
    table = table_for("study", study_uri)
    assert table.reference == "cpm" and _line(table, "cpm").test == "reference"
    ref = np.array(list(PSNR["cpm"].values()))
    for row in ("sr3", "cpm_irm"):
        line = _line(table, row)
        expected = stats.ttest_rel(np.array(list(PSNR[row].values())), ref).pvalue
        assert line.test == "3 seeds" and line.p_value == pytest.approx(expected, rel=1e-12)
    wilcoxon = table_for("study", study_uri, paired_test="wilcoxon", reference="sr3")
    cpm = np.array(list(PSNR["cpm"].values()))
    expected = stats.wilcoxon(cpm, np.array(list(PSNR["sr3"].values()))).pvalue
    assert _line(wilcoxon, "cpm").p_value == pytest.approx(expected)
    assert "Wilcoxon signed-rank test" in wilcoxon.caption and "'sr3'" in wilcoxon.caption


def test_paired_test_falls_back_to_test_slices(study_uri: str) -> None:
    table = table_for("study", study_uri)
    line = _line(table, "cpm_irm_nas")
    ref = np.mean([slice_psnr("cpm", s) for s in PSNR["cpm"]], axis=0)
    expected = stats.ttest_rel(slice_psnr("cpm_irm_nas", 0), ref).pvalue
    assert line.test == "12 slices" and line.p_value == pytest.approx(expected, rel=1e-12)
    assert "over matched seeds and test slices" in table.caption


def test_failed_trials_are_shown_with_their_reason(study_uri: str) -> None:
    table = table_for("study", study_uri)
    broken = _line(table, "broken")
    assert (broken.status, broken.reason, broken.n, broken.total) == ("failed", "NaN loss", 0, 2)
    nas = _line(table, "cpm_irm_nas")
    assert (nas.status, nas.n, nas.total) == ("partial", 1, 2)
    assert (
        "cpm_irm_nas seed 1: failed: no metric 'psnr' (a trial of an older ablate: rerun it)"
        in table.notes
    )
    md = render(table, "md")
    assert re.search(r"\| broken \| 0/2 \| failed: NaN loss \|", md)
    assert "broken seed 1: failed: NaN loss" in md
    assert 'class="failed">failed: NaN loss</td>' in render(table, "html")


def test_paper_convention_and_paper_numbers(study_uri: str) -> None:
    table = table_for("study", study_uri, convention="paper", paper=True)
    assert [c.key for c in table.columns][:3] == ["paper_psnr", "paper_ssim", "paper_nmse"]
    assert table.metric == "paper_psnr" and "paper-003 metric convention" in table.caption
    assert _line(table, "cpm").values["paper_psnr"][0] == pytest.approx(24.1 + 1.0)
    names = [ln.name for ln in table.lines]
    assert names[:2] == ["cpm", "cpm (paper)"] and "broken (paper)" not in names
    sr3 = next(ln for ln in table.lines if ln.name == "sr3 (paper)")
    assert sr3.values["paper_psnr"] == (23.302, None) and sr3.values["gmacs"] == (5973, None)
    assert sr3.label == "paper: (a) SR3 baseline" and not sr3.best


def test_csv_is_machine_readable(study_uri: str) -> None:
    rows = list(csv.DictReader(io.StringIO(render(table_for("study", study_uri), "csv"))))
    assert [r["line"] for r in rows] == ROWS
    sr3 = rows[1]
    assert float(sr3["psnr_mean"]) == pytest.approx(np.mean(list(PSNR["sr3"].values())))
    assert float(sr3["p_value"]) > 0 and sr3["test"] == "3 seeds"
    assert rows[3]["status"] == "failed" and rows[3]["reason"] == "NaN loss"


def test_latex_is_a_wellformed_booktabs_table(study_uri: str, tmp_path: Path) -> None:
    tex = render(table_for("study", study_uri, paper=True), "latex")
    body = tex[tex.index(r"\midrule") + len(r"\midrule") : tex.index(r"\bottomrule")]
    ncols = len(re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1))
    for row in body.strip().splitlines():
        assert row.endswith(r"\\")
        cells = re.split(r"(?<!\\)&", row)
        span = re.search(r"\\multicolumn\{(\d+)\}", row)
        assert len(cells) + (int(span.group(1)) - 1 if span else 0) == ncols, row
    for env in ("table", "tabular"):
        assert tex.count(rf"\begin{{{env}}}") == tex.count(rf"\end{{{env}}}") == 1
    for cmd in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(cmd) == 1
    unescaped = re.sub(r"\\[{}]", "", tex)
    assert unescaped.count("{") == unescaped.count("}")
    assert r"cpm\_irm\_nas" in tex and "±" not in tex and "_irm" not in tex.replace(r"\_", "")
    if shutil.which("pdflatex") is None:
        return  # compiled below only where TeX is installed
    doc = tmp_path / "t.tex"
    doc.write_text(
        "\\documentclass{article}\\usepackage{booktabs}\\usepackage{graphicx}"
        f"\\begin{{document}}\n{tex}\\end{{document}}\n"
    )
    subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_grid_variants_are_separate_lines(study_uri: str) -> None:
    table = table_for("search", study_uri)
    assert len(table.lines) == 8
    assert all(
        re.fullmatch(r"cpm_irm \[loss\.k=[\d.e+-]+, loss\.m=[\d.]+\]", ln.name)
        for ln in table.lines
    )
    assert all(ln.n == 1 and ln.values["psnr"][1] is None for ln in table.lines)


def test_rerun_supersedes_the_earlier_trial_and_says_so(study_uri: str, tmp_path: Path) -> None:
    uri = study_uri
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("rerun", artifact_location=(tmp_path / "art").as_uri())
    for launch, values in enumerate(([20.0, 21.0], [22.0, 23.0])):
        pid = client.create_run(exp, run_name=f"launch{launch}", tags={"ablate.kind": "launch"})
        client.log_param(pid.info.run_id, "rows", "cpm")
        for seed, psnr in enumerate(values):
            stage = tmp_path / f"stage{launch}{seed}"
            stage.mkdir()
            metrics = trial_metrics("cpm", psnr)
            _log_trial(client, exp, pid.info.run_id, "cpm", seed, stage, metrics=metrics)
    table = table_for("rerun", uri)
    assert len(table.lines) == 1 and table.lines[0].values["psnr"][0] == pytest.approx(22.5)
    runs = {  # (launch, seed) -> run id
        (r.data.tags["mlflow.parentRunId"], r.data.params["seed"]): r.info.run_id
        for r in client.search_runs([exp], "tags.`ablate.kind` = 'trial'")
    }
    parents = {
        r.info.run_name: r.info.run_id
        for r in client.search_runs([exp], "tags.`ablate.kind` = 'launch'")
    }
    for seed in ("0", "1"):
        old, new = runs[(parents["launch0"], seed)], runs[(parents["launch1"], seed)]
        expected = f"cpm seed {seed}: rerun run {new[:8]} (launch launch1) replaces run"
        assert f"{expected} {old[:8]} (launch launch0)" in table.notes


def test_bad_reference_and_bad_experiment(study_uri: str) -> None:
    with pytest.raises(UserError, match="--reference 'nope' is not a row.*cpm, sr3"):
        table_for("study", study_uri, reference="nope")
    result = CliRunner().invoke(app, ["table", "nope", "--tracking-uri", study_uri])
    assert result.exit_code == 2
    assert "no launch or experiment named 'nope'" in result.output
    listed = result.output.split("experiments: ", 1)[1].split(")")[0].split(", ")
    assert {"search", "study"} <= set(listed)


def test_cli_writes_each_format(study_uri: str, tmp_path: Path) -> None:
    for suffix, marker in ((".md", "| Row |"), (".tex", r"\toprule"), (".csv", "line,row")):
        out = tmp_path / f"table{suffix}"
        args = ["table", "study", "--tracking-uri", study_uri, "--out", str(out)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert marker in out.read_text()
    parquet = tmp_path / "results.parquet"
    args = ["results", "study", "--tracking-uri", study_uri, "--out", str(parquet)]
    assert CliRunner().invoke(app, args).exit_code == 0
    result = CliRunner().invoke(app, ["table", str(parquet), "--format", "md"])
    assert result.exit_code == 0 and "12 slices" in result.output


def test_library_table_prints_and_reads_local_slices_without_a_store(study_uri: str) -> None:
    """What ``ablate demo`` does: ablation_table(load_results(...)) printed by rich."""
    from rich.console import Console

    from dashboards.results import load_results

    table = ablation_table(load_results(study_uri, "study"))
    assert _line(table, "cpm_irm_nas").test == "12 slices"  # artifacts read in place
    console = Console(width=250, record=True)
    console.print(table)
    text = console.export_text()
    assert "failed: NaN loss" in text and "24.10 ± 0.36" in text


def test_one_launch_only_and_params_missing_from_older_runs(tmp_path: Path) -> None:
    """A second launch that logs a new param (newer code) is not split into variants by it,
    and ``parent_run_id`` restricts the table to one launch."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("two", artifact_location=(tmp_path / "a").as_uri())
    staging = tmp_path / "staging"
    staging.mkdir()
    parents = []
    for launch, extra in enumerate(({}, {"train.ema_decay": "0"})):
        pid = client.create_run(exp_id, tags={"ablate.kind": "launch"}).info.run_id
        client.log_param(pid, "rows", "cpm")
        for seed in (0, 1):
            metrics = trial_metrics("cpm", 20.0 + launch + seed)
            _log_trial(
                client,
                exp_id,
                pid,
                "cpm",
                seed + 2 * launch,
                staging,
                metrics=metrics,
                extra_params=extra,
            )
        parents.append(pid)
    both = table_for("two", uri)
    assert [line.name for line in both.lines if line.kind == "measured"] == ["cpm"]
    latest = table_for("two", uri, parent_run_id=parents[1])
    (line,) = [line for line in latest.lines if line.kind == "measured"]
    assert line.n == 2 and line.values["psnr"][0] == pytest.approx(21.5)


def test_declared_reference_and_one_dataset_per_table(study_uri: str) -> None:
    """The YAML's ``reference:`` (recorded per launch) is the default; a declared row this
    table lacks falls back to its first line, saying so; trials of two datasets are two
    tables, never one."""
    from dashboards.results import dataset_trials, read_results

    df = read_results("study", study_uri)
    assert ablation_table(df.assign(reference="sr3")).reference == "sr3"
    missing = ablation_table(df.assign(reference="gone"))
    assert missing.reference == "cpm"
    assert any("reference row 'gone' is not in this table" in n for n in missing.notes)
    assert ablation_table(df.assign(reference="sr3"), reference="cpm").reference == "cpm"

    two = df.assign(dataset="mine", dataset_sha256="a" * 64)
    other = two["row"] == "sr3"
    two.loc[other, ["dataset", "dataset_sha256"]] = ["theirs", "b" * 64]
    two.loc[other, "start_time"] += np.timedelta64(1, "D")  # launched later, on other data
    with pytest.raises(UserError, match="several datasets"):
        ablation_table(two)
    first = dataset_trials(two, None, "study")
    assert set(first.trials["dataset"]) == {"mine"} and first.others == ["theirs"]
    theirs = dataset_trials(two, "theirs", "study")
    table = ablation_table(theirs.trials)
    assert [ln.row for ln in table.lines] == ["sr3"]
    assert "on dataset 'theirs' (sha256 bbbbbbbb)" in table.caption
    with pytest.raises(UserError, match="--data 'nope' is not a dataset.*mine.*theirs"):
        dataset_trials(two, "nope", "study")

    commits = np.where(df["seed"] == 0, "a" * 40, "b" * 40)
    mixed = ablation_table(df.assign(code_version=commits))
    assert "cpm: its trials ran on 2 code versions (aaaaaaaa, bbbbbbbb)" in mixed.notes
    assert not any("code versions" in n for n in ablation_table(df).notes)
