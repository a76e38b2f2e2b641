"""Designs generated from the full row's switches, and the effects of a factorial (issue 28).

Unit-level and fast: no Ray, no MLflow. The known-answer test plants a main effect and an
interaction in a synthetic tidy frame (a set function of the switches plus seed, subject and
noise terms) and checks the analysis recovers both and leaves the null terms' CIs over 0.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
import yaml

from ablate import designs
from ablate.analysis import analyse
from ablate.analysis.factorial import Layout, alias_lines, effects
from ablate.config import ConfigError, load_experiment
from dashboards import contrasts
from tests.paths import REPO

DEMO = REPO / "search_spaces" / "demo.yaml"
SWITCHES = ["irm", "nas", "spectrum", "contrastive"]


def _space(tmp_path: Path, kind: str, **design: Any) -> Path:
    """The demo with a design over its four switches (its own rows kept)."""
    raw = yaml.safe_load(DEMO.read_text())
    raw["design"] = {"full": "full", "factors": SWITCHES, "kind": kind, **design}
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _design(path: Path) -> designs.Design:
    exp = load_experiment(path)
    assert exp.design is not None
    return designs.generate(exp.design, exp.rows)


def test_factorial_of_the_demo_switches_drops_contrastive_without_irm(tmp_path: Path) -> None:
    design = _design(_space(tmp_path, "factorial"))
    # 16 combinations; the 4 with contrastive on and irm off repeat those with both off
    assert len(design.points) == 12 and len(design.dropped) == 4
    assert all("contrastive off (needs irm)" in line for line in design.dropped)
    assert all(not (p.levels["contrastive"] and not p.levels["irm"]) for p in design.points)
    # the demo's own rows are points of the design, under their names; the others are new
    assert {"cpm", "cpm_irm", "cpm_irm_nas", "cpm_irm_nas_spec", "full"} <= set(design.rows)
    assert {"nas", "irm_spectrum", "irm_nas_contrastive"} <= set(design.rows)
    exp = load_experiment(_space(tmp_path, "factorial"))
    assert exp.rows["irm_spectrum"].label == "+irm −nas +spectrum −contrastive"
    same = {"label", "irm", "spectrum"}  # every other setting is the full row's
    assert exp.rows["irm_spectrum"].model_dump(exclude=same) == exp.rows["full"].model_dump(
        exclude=same | {"nas", "contrastive"}
    ) | {"nas": False, "contrastive": False}
    assert len(exp.rows) == 6 + 7  # the demo's six rows, then the seven the design adds


def test_leave_one_out_lists_five_rows(tmp_path: Path) -> None:
    exp = load_experiment(_space(tmp_path, "leave_one_out"))
    design = designs.generate(exp.design, exp.rows)
    assert design.rows == ["full", "full-irm", "full-nas", "full-spectrum", "cpm_irm_nas_spec"]
    # leaving irm out leaves contrastive out too (it needs irm): the row says so
    assert design.points[1].note == "contrastive off (needs irm)"
    assert exp.rows["full-irm"].label == "full without irm (contrastive off (needs irm))"
    assert not exp.rows["full-irm"].irm and not exp.rows["full-irm"].contrastive
    # a YAML that names no contrasts tests each row against the full row
    raw = yaml.safe_load(_space(tmp_path, "leave_one_out").read_text())
    del raw["analysis"]
    (tmp_path / "loo.yaml").write_text(yaml.safe_dump(raw))
    exp = load_experiment(tmp_path / "loo.yaml")
    assert exp.analysis.contrasts == [("full", n) for n in design.rows[1:]]


def test_additive_design_adds_in_the_listed_order(tmp_path: Path) -> None:
    design = _design(_space(tmp_path, "additive"))
    assert design.rows == ["cpm", "cpm_irm", "cpm_irm_nas", "cpm_irm_nas_spec", "full"]


def test_fractional_resolution_four_has_eight_rows(tmp_path: Path) -> None:
    design = _design(_space(tmp_path, "fractional", resolution=4))
    assert len(design.points) == 8 and not design.dropped
    assert design.resolution == 4 and design.erased == 1
    assert "irm:nas = spectrum:contrastive" in design.aliases
    # two of the eight runs ask for contrastive without irm: built with contrastive off
    assert sum(bool(p.note) for p in design.points) == 2


def test_fractional_aliases_follow_pyDOE3() -> None:
    """Three independent switches at resolution III: 4 runs, each two-factor interaction
    aliased with the third main effect, as pyDOE3's alias map says."""
    design = designs.generate(_spec("fractional", resolution=3), _rows())
    assert len(design.points) == 4 and design.resolution == 3
    assert design.aliases == ["irm = nas:spectrum", "nas = irm:spectrum", "spectrum = irm:nas"]
    layout = _layout(design)
    lines = alias_lines(layout, list(layout.levels))
    assert lines == [
        "irm:nas is aliased with spectrum on these rows: the spectrum estimate is "
        "spectrum + 0.5·irm:nas",
        "irm:spectrum is aliased with nas on these rows: the nas estimate is "
        "nas + 0.5·irm:spectrum",
        "nas:spectrum is aliased with irm on these rows: the irm estimate is "
        "irm + 0.5·nas:spectrum",
    ]


@pytest.mark.parametrize(
    ("design", "message"),
    [
        ({"factors": ["irm", "lr"]}, "'lr' is not a switch of method 'coarse_to_fine'"),
        ({"factors": ["irm", "nass"]}, "'nass' is not a switch"),
        ({"full": "sr3"}, "'irm' is not a switch of method 'sr3'"),
        ({"full": "cpm_irm"}, "'nas' is off in the full row 'cpm_irm'"),
        ({"full": "nope"}, "design.full: no row 'nope'"),
        ({"kind": "fractional"}, "needs resolution"),
        ({"kind": "fractional", "resolution": 6}, "no fraction of 4 factors reaches"),
        ({"kind": "nested"}, "design.kind"),
    ],
)
def test_bad_design_is_one_line(tmp_path: Path, design: dict[str, Any], message: str) -> None:
    path = _space(tmp_path, "factorial")
    raw = yaml.safe_load(path.read_text())
    raw["design"].update(design)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message) as err:
        load_experiment(path)
    assert "\n" not in str(err.value)


def test_a_launch_record_keeps_its_rows(tmp_path: Path) -> None:
    """The design is expanded where the YAML is read, never again: a ``--rows`` launch's
    record (its dumped config) parses back with its own rows only."""
    from ablate.config import parse_experiment
    from ablate.trials import select_rows

    exp = select_rows(load_experiment(_space(tmp_path, "factorial")), ["nas", "full"])
    again = parse_experiment(exp.model_dump(mode="json"))
    assert list(again.rows) == ["nas", "full"] and again.design == exp.design


# --- effects: a known answer ------------------------------------------------------------------


def _spec(kind: str, **extra: Any) -> Any:
    from ablate.config import DesignConfig

    return DesignConfig(full="full", factors=["irm", "nas", "spectrum"], kind=kind, **extra)


def _rows() -> dict[str, Any]:
    from ablate.config import parse_row

    return {
        "full": parse_row({"method": "coarse_to_fine", "irm": True, "nas": True, "spectrum": True})
    }


def _layout(design: designs.Design) -> Layout:
    return Layout(design.factors, design.levels(), design.kind, design.aliases)


#: The planted truth: nas adds 1 dB; spectrum helps only with irm (interaction 1 dB); the
#: other terms are 0.
NAS, IRM_X_SPECTRUM = 1.0, 1.0


def _synthetic(
    levels: dict[str, dict[str, bool]], seeds: int, subjects: int, rng_seed: int
) -> pd.DataFrame:
    """A tidy frame: psnr = a set function of the switches + seed, subject, seed x row,
    subject x row and residual noise (the crossed model the analysis assumes)."""
    rng = np.random.default_rng(rng_seed)
    x = {r: {f: 0.5 if on else -0.5 for f, on in lv.items()} for r, lv in levels.items()}
    seed_fx, subj_fx = rng.normal(0, 1.0, seeds), rng.normal(0, 2.0, subjects)
    lines = []
    for i, row in enumerate(levels):
        truth = 25 + NAS * x[row]["nas"] + IRM_X_SPECTRUM * x[row]["irm"] * x[row]["spectrum"]
        row_seed, row_subj = rng.normal(0, 0.3, seeds), rng.normal(0, 0.2, subjects)
        for s, j in itertools.product(range(seeds), range(subjects)):
            value = truth + seed_fx[s] + subj_fx[j] + row_seed[s] + row_subj[j]
            lines.append(
                {"row": row, "row_index": i, "seed": s, "subject": f"sub-{j}", "level": "subject",
                 "status": "completed", "dataset": "synthetic", "start_time": 0,
                 "psnr": value + rng.normal(0, 0.2)}
            )  # fmt: skip
    return pd.DataFrame(lines)


def test_factorial_effects_recover_a_planted_main_effect_and_interaction() -> None:
    layout = _layout(designs.generate(_spec("factorial"), _rows()))
    assert len(layout.levels) == 8
    frame = _synthetic(layout.levels, seeds=5, subjects=6, rng_seed=1)
    found = {e.term: e for e in effects(frame, layout, ["psnr"]).effects}
    truth = {"nas": NAS, "irm:spectrum": IRM_X_SPECTRUM}
    assert set(found) == {"irm", "nas", "spectrum", "irm:nas", "irm:spectrum", "nas:spectrum"}
    for term, e in found.items():
        assert e.tested and e.n_seeds == 5 and e.n_subjects == 6
        assert e.low <= truth.get(term, 0.0) <= e.high, (term, e.low, e.high)
    # the planted terms resolve after Holm; the null ones do not
    assert found["nas"].p_adjusted < 0.05 and found["irm:spectrum"].p_adjusted < 0.05
    assert all(found[t].p_adjusted >= 0.05 for t in ("irm", "spectrum", "irm:nas", "nas:spectrum"))


def test_the_parent_runs_metrics_hold_the_factorial_terms() -> None:
    """What ``attach_report`` logs on a launch's parent run: each tested term with its CI."""
    from ablate.analysis import analyse
    from dashboards.contrasts import effect_metrics

    layout = _layout(designs.generate(_spec("factorial"), _rows()))
    frame = _synthetic(layout.levels, seeds=5, subjects=6, rng_seed=1)
    found = analyse(frame, metrics=["psnr"], layout=layout)
    metrics = effect_metrics(found)
    terms = {e.term: e for e in found.factorial.effects}
    for term in ("nas", "irm:spectrum"):
        assert metrics[f"factorial/{term}/psnr"] == terms[term].effect
        low, high = metrics[f"factorial/{term}/psnr.low"], metrics[f"factorial/{term}/psnr.high"]
        assert low <= 1.0 <= high  # the planted 1 dB
        assert metrics[f"factorial/{term}/psnr.p_adjusted"] < 0.05


def test_effects_equal_statsmodels_ols_with_seed_and_subject_blocks() -> None:
    layout = _layout(designs.generate(_spec("factorial"), _rows()))
    frame = _synthetic(layout.levels, seeds=3, subjects=4, rng_seed=2)
    coded = frame.assign(
        **{f: frame["row"].map(lambda r, f=f: 0.5 if layout.levels[r][f] else -0.5)
           for f in layout.factors}
    )  # fmt: skip
    fit = smf.ols("psnr ~ C(seed) + C(subject) + (irm + nas + spectrum) ** 2", data=coded).fit()
    for e in effects(frame, layout, ["psnr"]).effects:
        assert e.effect == pytest.approx(fit.params[e.term], abs=1e-9)


def test_the_analysis_and_its_table_show_the_effects(tmp_path: Path) -> None:
    """Through the table's path: the logged YAML's design regenerates the levels."""
    exp = load_experiment(_space(tmp_path, "factorial"))
    logged = exp.model_dump(mode="json")
    settings = contrasts.settings_from(logged, "test")
    layout = settings.layout()
    assert layout is not None and len(layout.levels) == 12
    frame = _synthetic(layout.levels, seeds=3, subjects=2, rng_seed=3)
    analysis = contrasts.study_analysis(frame, settings)
    assert analysis.factorial is not None
    (table, *_) = contrasts.tables("demo", analysis)
    assert table.part == "effects"
    text = contrasts.render(table, "md")
    assert "least-squares fit of main effects and two-way interactions" in text
    assert "Holm" in text and "| nas:spectrum | PSNR |" in text
    # contrastive exists only with irm: their interaction is not separable from it
    assert "irm:contrastive: not estimated" in text
    untested = [e.term for e in analysis.factorial.effects if e.effect is None]
    assert untested == ["irm:contrastive"]


def test_leave_one_out_shows_contrasts_not_effects(tmp_path: Path) -> None:
    raw = load_experiment(_space(tmp_path, "leave_one_out")).model_dump(mode="json")
    assert contrasts.settings_from(raw, "test").layout() is None
    levels = {r: {"irm": True, "nas": r == "full", "spectrum": True} for r in ["full", "full-nas"]}
    frame = _synthetic(levels, seeds=3, subjects=2, rng_seed=4)
    result = analyse(frame, contrasts=[("full", "full-nas")])
    assert result.factorial is None and result.effects[0].contrast.name == "full − full-nas"


def test_command_line_design_keys_change_the_generated_rows() -> None:
    """``design.kind=...`` on the command line applies before the rows are generated (and
    ``--rows`` keeps some of them, marked in the plan's design lines)."""
    from ablate.cli.settings import experiment_with_settings
    from ablate.planning.estimates import design_lines

    space = REPO / "search_spaces" / "demo_factorial.yaml"
    exp, overrides = experiment_with_settings(
        space, ["design.kind=leave_one_out", "train.steps=10"]
    )
    assert list(exp.rows) == ["full", "full-irm", "full-nas", "full-spectrum", "full-contrastive"]
    assert exp.train.steps == 10 and overrides["design.kind"] == "leave_one_out"
    exp, _ = experiment_with_settings(space, [], rows="irm,full")
    lines = design_lines(exp)
    assert lines[0].startswith("design: factorial") and "12 rows" in lines[0]
    assert sum("(not launched: --rows)" in line for line in lines) == 10
