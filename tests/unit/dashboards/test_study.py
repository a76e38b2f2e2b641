"""The study view of an Optuna search: trials table, confirm grid, plots, ``ablate table``.

``write_tuned`` / ``write_tuned_mo`` fake what ``ablate search`` leaves behind, with real MLflow
runs and a real Optuna study (journal storage): a one-objective search with completed, pruned
and failed trials and a ``--confirm-seeds`` pair of grids, and a two-objective search. They
live in the store the other dashboards tests share (``shared_store``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from scipy import stats
from typer.testing import CliRunner

from ablate import tracking
from ablate.cli import app
from ablate.config import ConfigError, parse_experiment
from ablate.errors import UserError
from ablate.export import ranking
from ablate.ui_links import ML_VIEW
from dashboards import plots
from dashboards.html import build_dashboard
from dashboards.results import load_results
from dashboards.study import (
    find_searches,
    pareto_ranks,
    render_tables,
    tables_for,
    trials_table,
)
from tests.unit.dashboards.test_results import shared_store

SEARCHED = ["loss.k", "loss.m", "row.contrastive_form"]
STEPS = [10, 20, 30]
PRUNED = {2: 10, 4: 20, 5: 10}  # trial number -> the step ASHA stopped it at
FAILED = {6}
BEST_PSNR = [25.1, 25.4, 25.0]  # the confirm grid: best values over seeds 0-2 ...
DEFAULT_PSNR = [24.6, 24.9, 24.7]  # ... and the row's defaults over the same seeds
MO_VALUES = [(24.0, 0.010), (25.0, 0.020), (24.5, 0.012), (23.0, 0.015), (25.0, 0.030)]
MO_FRONT = {0, 1, 2}  # (24, .010), (25, .020), (24.5, .012); 3 and 4 are dominated


def _metrics(psnr: float) -> dict[str, float]:
    return {
        "psnr": psnr,
        "ssim": 0.9 + psnr / 1000,
        "nmse": 0.1 - psnr / 1000,
        "ams_psnr": psnr + 0.3,
        "sd": 3e-3 + psnr / 1e4,
        "params_m": 0.35,
        "gmacs": 0.6,
        "train_s": 10.0 + psnr,
    }


def _psnr(params: dict) -> float:
    """The fake objective: best near loss.k = 3e-5, loss.m = 1."""
    k, m = params["loss.k"], params["loss.m"]
    bonus = 0.3 if params["row.contrastive_form"] == "likelihood" else 0.0
    return 25.0 - 0.5 * (math.log10(k) + 4.5) ** 2 - 0.3 * (m - 1.0) ** 2 + bonus


def _run(
    client: MlflowClient,
    exp_id: str,
    parent: str,
    row: str,
    seed: int,
    params: dict[str, str],
    status: str,
    metrics: dict[str, float],
    history: list[tuple[int, float]] = (),
    name: str | None = None,
    error: str = "",
) -> str:
    tags = {
        tracking.TAG_PARENT: parent,
        tracking.TAG_KIND: "trial",
        tracking.TAG_ROW: row,
        tracking.TAG_SEED: str(seed),
        tracking.TAG_STATUS: status,
    }
    if error:
        tags[tracking.TAG_ERROR] = error
    run_id = client.create_run(exp_id, run_name=name or f"{row}-s{seed}", tags=tags).info.run_id
    base = {"row": row, "seed": str(seed), "row.label": "None", "train.steps": "30"}
    client.log_batch(
        run_id,
        params=[Param(k, v) for k, v in {**base, **params}.items()],
        metrics=[Metric(k, v, 0, STEPS[-1]) for k, v in metrics.items()]
        + [Metric("val_psnr", v, 0, step) for step, v in history],
    )
    client.set_terminated(
        run_id, {"completed": "FINISHED", "pruned": "KILLED"}.get(status, "FAILED")
    )
    return run_id


def _journal(root: Path, name: str) -> tuple[str, optuna.storages.JournalStorage]:
    path = root / f"{name}.journal"
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return f"journal:{path}", optuna.storages.JournalStorage(backend)


DISTRIBUTIONS = {
    "loss.k": optuna.distributions.FloatDistribution(1e-6, 1e-3, log=True),
    "loss.m": optuna.distributions.FloatDistribution(0.1, 10.0, log=True),
    "row.contrastive_form": optuna.distributions.CategoricalDistribution(
        ["reference_kl", "likelihood"]
    ),
}


def write_tuned(uri: str, root: Path, name: str = "tuned") -> None:
    """A one-objective search (8 trials: 4 completed, 3 pruned, 1 failed) and its confirm
    grids (``full_best`` and ``full_defaults`` over seeds 0-2), as ``ablate search`` logs them."""
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri())
    storage_url, storage = _journal(root, name)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=3),
    )
    tags = {
        tracking.TAG_KIND: "search",
        tracking.TAG_OPTUNA_STORAGE: storage_url,
        tracking.TAG_OPTUNA_STUDY: name,
        tracking.TAG_SEARCH_OBJECTIVES: "val_psnr:max",
        tracking.TAG_SEARCH_PARAMS: ",".join(SEARCHED),
    }
    parent = client.create_run(exp_id, run_name=f"{name}-20260101", tags=tags).info.run_id
    client.log_param(parent, "rows", "full")
    best: tuple[float, dict[str, str]] = (-math.inf, {})
    for _ in range(8):
        trial = study.ask(DISTRIBUTIONS)
        final = _psnr(trial.params)
        params = {k: str(v) for k, v in trial.params.items()}
        stop = PRUNED.get(trial.number, STEPS[-1])
        history = [(s, final - 2.0 * (STEPS[-1] - s) / 10) for s in STEPS if s <= stop]
        for i, (_, value) in enumerate(history, start=1):
            trial.report(value, i)
        if trial.number in FAILED:
            study.tell(trial, state=TrialState.FAIL)
            status, metrics, history = "failed", {}, history[:1]
        elif trial.number in PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
            status, metrics = "pruned", {"val_psnr": history[-1][1]}
        else:
            study.tell(trial, final)
            status, metrics = "completed", {**_metrics(final - 0.5), "val_psnr": final}
            best = max(best, (final, params), key=lambda b: b[0])
        _run(
            client,
            exp_id,
            parent,
            "full",
            0,
            params,
            status,
            {k: v for k, v in metrics.items() if k != "val_psnr"},
            history,
            name=f"full-s0-{trial.number:05d}",
            error="NaN loss at step 10" if status == "failed" else "",
        )
    client.set_terminated(parent)
    for role, row, values in (
        ("best", "full_best", BEST_PSNR),
        ("defaults", "full_defaults", DEFAULT_PSNR),
    ):
        confirm_tags = {
            tracking.TAG_KIND: "launch",
            tracking.TAG_CONFIRMS: parent,
            tracking.TAG_CONFIRM_ROLE: role,
        }
        pid = client.create_run(exp_id, run_name=f"{name}-{role}", tags=confirm_tags).info.run_id
        client.log_param(pid, "rows", row)
        searched = best[1] if role == "best" else {"loss.k": "5e-05", "loss.m": "1.0"}
        for seed, psnr in enumerate(values):
            _run(client, exp_id, pid, row, seed, searched, "completed", _metrics(psnr))
        client.set_terminated(pid)


def write_tuned_mo(uri: str, root: Path, name: str = "tuned-mo") -> None:
    """A two-objective search (val PSNR up, val SD down), every trial completed."""
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri())
    storage_url, storage = _journal(root, name)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=1),
    )
    tags = {
        tracking.TAG_KIND: "search",
        tracking.TAG_OPTUNA_STORAGE: storage_url,
        tracking.TAG_OPTUNA_STUDY: name,
        tracking.TAG_SEARCH_OBJECTIVES: "val_psnr:max,val_sd:min",
        tracking.TAG_SEARCH_PARAMS: ",".join(SEARCHED),
    }
    parent = client.create_run(exp_id, run_name=f"{name}-20260101", tags=tags).info.run_id
    client.log_param(parent, "rows", "full")
    for psnr, sd in MO_VALUES:
        trial = study.ask(DISTRIBUTIONS)
        study.tell(trial, [psnr, sd])
        metrics = {**_metrics(psnr - 0.5), "val_sd": sd}
        history = [(10, psnr - 1.0), (30, psnr)]
        params = {k: str(v) for k, v in trial.params.items()}
        _run(client, exp_id, parent, "full", 0, params, "completed", metrics, history)
    client.set_terminated(parent)


_DONE: dict[str, bool] = {}


def tuned_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = shared_store(tmp_path_factory)
    if "tuned" not in _DONE:
        root = Path(uri.removeprefix("sqlite:///")).parent
        write_tuned(uri, root)
        write_tuned_mo(uri, root)
        _DONE["tuned"] = True
    return uri


@pytest.fixture
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tuned_store(tmp_path_factory)


def _search(uri: str, experiment: str = "tuned"):
    df = load_results(uri, experiment)
    (search,) = find_searches(uri, experiment, df)
    return search, df


# --- the trials table ------------------------------------------------------------------------


def test_trials_table_is_sorted_by_the_objective_with_a_column_per_param(uri: str) -> None:
    search, _ = _search(uri)
    assert search.params == SEARCHED and [o.key for o in search.objectives] == ["val_psnr"]
    table = trials_table(search)
    assert table.params == SEARCHED

    study = search.study
    done = sorted(
        (t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value
    )
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    pruned.sort(key=lambda t: -t.intermediate_values[max(t.intermediate_values)])
    expected = [t.number for t in done] + [t.number for t in pruned] + sorted(FAILED)
    assert [ln.number for ln in table.lines] == expected  # numbers are Optuna's
    assert table.lines[0].best and sum(ln.best for ln in table.lines) == 1

    by_number = {ln.number: ln for ln in table.lines}
    for t in study.trials:
        line = by_number[t.number]
        assert line.params == {k: str(t.params[k]) for k in SEARCHED}
        if t.state == TrialState.COMPLETE:
            assert line.state_text == "complete" and line.objectives == [pytest.approx(t.value)]
            assert line.values["psnr"] == pytest.approx(t.value - 0.5)
        elif t.state == TrialState.PRUNED:
            assert line.state_text == f"pruned at step {PRUNED[t.number]}"
            assert "psnr" not in line.values  # no test metrics for a pruned trial
        else:
            assert line.state_text == "failed"
    assert any("failed: NaN loss at step 10" in n for n in table.notes)
    # costs are the same for every trial: a note, not a column
    assert {c.key for c in table.columns} >= {"psnr", "ssim", "sd", "train_s"}
    assert not {"params_m", "gmacs"} & {c.key for c in table.columns}
    assert any("MParam 0.35, GMACs 0.6" in n for n in table.notes)
    assert all(ln.url.endswith(f"/runs/{ln.run_id}?{ML_VIEW}") for ln in table.lines)
    assert table.lines[0].url.startswith("http://127.0.0.1:5000/#/experiments/")


def test_trials_table_renders_in_every_format(uri: str) -> None:
    search, _ = _search(uri)
    table = trials_table(search)
    md = render_tables([table], "md")
    head = next(line for line in md.splitlines() if line.startswith("| #"))
    assert head.startswith("| # | loss.k | loss.m | row.contrastive_form | state | val PSNR ↑ |")
    assert md.count("pruned at step") == 3 and "None" not in md
    csv_text = render_tables([table], "csv")
    frame = pd.read_csv(__import__("io").StringIO(csv_text))
    assert list(frame.columns[:7]) == ["number", *SEARCHED, "state", "pruned_step", "val_psnr"]
    assert "pareto" not in frame.columns  # one objective
    assert sorted(frame["pruned_step"].dropna().astype(int)) == sorted(PRUNED.values())
    tex = render_tables([table], "latex")
    assert r"\toprule" in tex and r"loss.k & loss.m & row.contrastive\_form" in tex
    page = render_tables([table], "html")
    assert page.count('<th data-sort="') == len(_header_cells(page))
    assert 'class="ablation trials sortable"' in page


def _header_cells(page: str) -> list[str]:
    return re.findall(r"<th [^>]*>([^<]*)</th>", page.split("</thead>")[0])


def test_confirm_grid_pairs_the_best_with_the_defaults_over_seeds(uri: str) -> None:
    tables = tables_for("tuned", uri)
    assert [type(t).__name__ for t in tables] == ["TrialsTable", "AblationTable"]
    confirm = tables[1]
    assert [ln.label for ln in confirm.lines] == ["full_best", "full_defaults"]  # not "None"
    assert confirm.reference == "full_defaults"
    best, defaults = confirm.lines
    assert best.values["psnr"][0] == pytest.approx(np.mean(BEST_PSNR))
    assert best.values["psnr"][1] == pytest.approx(np.std(BEST_PSNR, ddof=1))
    assert best.test == "3 seeds"
    assert best.p_value == pytest.approx(stats.ttest_rel(BEST_PSNR, DEFAULT_PSNR).pvalue)
    assert confirm.caption.startswith("Confirm grid of search 'tuned'")
    search, _ = _search(uri)
    top = trials_table(search).lines[0]
    assert confirm.notes[0].startswith(f"full_best: the values of trial #{top.number} (loss.k=")


def test_table_parts_and_one_csv_per_table(uri: str) -> None:
    assert [type(t).__name__ for t in tables_for("tuned", uri, part="trials")] == ["TrialsTable"]
    assert len(tables_for("tuned", uri, part="confirm")) == 1
    with pytest.raises(UserError, match="has no grids"):
        tables_for("tuned", uri, part="grid")
    with pytest.raises(UserError, match="--part 'nope'"):
        tables_for("tuned", uri, part="nope")
    with pytest.raises(UserError, match="a CSV holds one: pick one with --part"):
        render_tables(tables_for("tuned", uri), "csv")
    grid = tables_for("study", uri)  # a grid study: the ablation table, as before
    assert [type(t).__name__ for t in grid] == ["AblationTable"]


def test_cli_table_prints_the_trials_of_a_search(uri: str) -> None:
    result = CliRunner().invoke(app, ["table", "tuned", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "Optuna search 'tuned'" in result.output and "pruned at step 20" in result.output
    assert "Confirm grid of search 'tuned'" in result.output
    assert "None" not in result.output
    args = ["table", "tuned", "--tracking-uri", uri, "--format", "csv", "--part", "trials"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and result.output.startswith("number,loss.k,loss.m,")
    result = CliRunner().invoke(app, ["table", "tuned", "--tracking-uri", uri, "--format", "csv"])
    assert result.exit_code == 2 and "--part" in result.output


def test_legacy_search_without_tags_falls_back_to_the_optuna_study(uri: str) -> None:
    """A search logged before the objective/param tags (``write_search``): the study's
    distributions give the columns, its direction the objective."""
    search, _ = _search(uri, "search")
    assert search.params == ["loss.k", "loss.m"]
    assert [(o.key, o.mode) for o in search.objectives] == [("val_psnr", "max")]
    assert sorted(ln.number for ln in trials_table(search).lines) == list(range(8))


# --- multi-objective -------------------------------------------------------------------------


def test_pareto_ranks() -> None:
    points = [[24.0, 0.010], [25.0, 0.020], [24.5, 0.012], [23.0, 0.015], [25.0, 0.030]]
    assert pareto_ranks(points, ["max", "min"]) == [0, 0, 0, 1, 1]
    assert pareto_ranks([[1.0, 1.0], [2.0, 2.0]], ["min", "min"]) == [0, 1]


def test_multi_objective_trials_table_marks_the_front(uri: str) -> None:
    search, _ = _search(uri, "tuned-mo")
    assert search.multi_objective and [o.mode for o in search.objectives] == ["max", "min"]
    table = trials_table(search)
    front = {ln.number for ln in table.lines if ln.pareto}
    assert front == MO_FRONT
    assert [ln.pareto for ln in table.lines] == [True] * 3 + [False] * 2  # front first
    assert table.lines[0].objectives == [25.0, 0.020]  # then by the first objective
    assert "Pareto" in render_tables([table], "md").splitlines()[2]
    fig = plots.pareto_plot(table)
    names = [trace.name for trace in fig.data]
    assert names == ["dominated", "Pareto front", "front"]
    assert sorted(fig.data[1].text) == sorted(f"#{n}" for n in MO_FRONT)


def test_multi_objective_dashboard_and_export_ranking(uri: str, tmp_path: Path) -> None:
    source = build_dashboard("tuned-mo", uri, tmp_path / "dash").read_text()
    assert "Pareto front of the completed trials (val PSNR ↑, val SD ↓)" in source
    assert "No optimisation history: with several objectives" in source
    assert "Intermediate values: val SD per validation" in source
    with pytest.raises(UserError, match=r"multi-objective search \(psnr \(max\), sd \(min\)\)"):
        ranking(uri, "tuned-mo", None, None)
    assert ranking(uri, "tuned-mo", "sd", None) == ("sd", "min")
    assert ranking(uri, "tuned", None, None) == ("psnr", "max")
    result = CliRunner().invoke(app, ["export", "tuned-mo", "--tracking-uri", uri])
    assert result.exit_code == 2 and "pass --metric" in result.output


def test_search_config_objectives() -> None:
    raw = {
        "name": "x",
        "rows": {"full": {"method": "coarse_to_fine", "irm": True}},
        "search": {
            "row": "full",
            "metric": ["psnr", "sd"],
            "mode": ["max", "min"],
            "params": {"loss.k": {"type": "loguniform", "low": 1e-6, "high": 1e-3}},
        },
    }
    search = parse_experiment(raw).search
    assert search.objectives == [("psnr", "max"), ("sd", "min")] and search.multi_objective
    raw["search"]["mode"] = "max"
    with pytest.raises(ConfigError, match="one direction per metric"):
        parse_experiment(raw)
    raw["search"].update(metric="psnr")
    assert not parse_experiment(raw).search.multi_objective


# --- importance and plots --------------------------------------------------------------------


def test_importance_is_labelled_with_optunas_default_evaluator(uri: str, tmp_path: Path) -> None:
    """The plot names the evaluator that computed it, and that is the one Optuna's
    ``get_param_importances`` uses when none is given (PED-ANOVA in Optuna 5)."""
    search, _ = _search(uri)
    evaluator = plots.importance_evaluator()
    assert plots.evaluator_name(evaluator) == "PED-ANOVA"
    ours = optuna.importance.get_param_importances(search.study, evaluator=evaluator)
    default = optuna.importance.get_param_importances(search.study)
    assert ours == pytest.approx(default)
    fig, name = plots.param_importances(search.study, search.objectives, SEARCHED)
    assert name == "PED-ANOVA" and "PED-ANOVA" in fig.layout.title.text
    source = build_dashboard("tuned", uri, tmp_path / "dash").read_text()
    assert "Parameter importance (PED-ANOVA)" in source and "fANOVA" not in source


def test_intermediate_values_mark_the_pruning_points(uri: str) -> None:
    search, _ = _search(uri)
    table = trials_table(search)
    fig = plots.intermediate_values(table, search.histories["val_psnr"], search.objectives[0])
    cuts = next(t for t in fig.data if t.name == "pruned here (ASHA)")
    assert sorted(cuts.x) == sorted(PRUNED.values())
    assert all(re.fullmatch(r"trial #\d pruned at step \d+", text) for text in cuts.hovertext)
    dashed = [t for t in fig.data if t.line.dash == "dash"]
    assert len(dashed) == len(PRUNED)


def test_grid_dashboard_leaves_out_constant_cost_plots(uri: str, tmp_path: Path) -> None:
    """The confirm lines share their cost: the dashboard says why there is no such plot, and
    a grid whose rows all cost the same gets no quality-vs-cost plot either."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("samecost", artifact_location=(tmp_path / "art").as_uri())
    pid = client.create_run(exp, tags={tracking.TAG_KIND: "launch"}).info.run_id
    client.log_param(pid, "rows", "a,b")
    for row, psnr in (("a", 24.0), ("b", 25.0)):
        _run(client, exp, pid, row, 0, {}, "completed", _metrics(psnr))
    source = build_dashboard("samecost", uri, tmp_path / "dash").read_text()
    assert "Left out: quality against GMACs (0.6) and MParam (0.35)" in source
    assert "PSNR vs GMACs" not in source


def test_untagged_search_reads_its_yaml_and_finds_its_confirm_grid(
    uri: str, tmp_path: Path
) -> None:
    """Searches launched before the objective and confirm tags: the experiment YAML logged on
    the search's parent run gives objectives and searched keys, and a later ``<row>_best``
    grid is its confirm grid."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("untagged", artifact_location=(tmp_path / "art").as_uri())
    tags = {tracking.TAG_KIND: "search"}
    parent = client.create_run(exp, run_name="untagged-1", tags=tags).info.run_id
    client.log_param(parent, "rows", "full")
    spec = tmp_path / "untagged.experiment.yaml"
    spec.write_text(
        "name: untagged\nsearch:\n  row: full\n  metric: [psnr, sd]\n  mode: [max, min]\n"
        "  params:\n    loss.m: {type: uniform, low: 0.1, high: 2}\n"
    )
    client.log_artifact(parent, str(spec))
    for m in ("0.5", "1.5"):
        _run(client, exp, parent, "full", 0, {"loss.m": m}, "completed", _metrics(24.0))
    confirm = client.create_run(exp, tags={tracking.TAG_KIND: "launch"}).info.run_id
    client.log_param(confirm, "rows", "full_best")
    _run(client, exp, confirm, "full_best", 0, {"loss.m": "0.5"}, "completed", _metrics(24.5))

    search, df = _search(uri, "untagged")
    assert [(o.key, o.mode) for o in search.objectives] == [("val_psnr", "max"), ("val_sd", "min")]
    assert search.params == ["loss.m"] and search.study is None
    assert [la.run_id for la in search.confirms] == [confirm]
    table = trials_table(search)
    assert [ln.number for ln in table.lines] == [0, 1]  # no study: numbered in launch order
    assert any("recorded no Optuna storage/study tags" in n for n in table.notes)
    assert [type(t).__name__ for t in tables_for("untagged", uri)] == [
        "TrialsTable",
        "AblationTable",
    ]
    page = build_dashboard("untagged", uri, tmp_path / "dash").read_text()
    assert "No Optuna study: no history" in page and "Confirm grid of search" in page
