"""Adaptive replication's decisions on synthetic tidy frames with planted answers (issue 28
part 4): fast, no Ray, no MLflow. The wave loop here is the driver's (``ablate.launch.replicate``)
with the trials replaced by draws from the crossed model the analysis assumes."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ablate.analysis import analyse
from ablate.analysis.replication import decide, planned_looks
from ablate.config import ConfigError, budget_hours, load_experiment

#: The planted truth: ``strong`` is 1.5 dB better than ``ref``, ``null`` the same as ``ref``.
TRUTH = {"ref": 25.0, "strong": 26.5, "null": 25.0}
SUBJECTS = 4


class Study:
    """Draws each (row, seed)'s subject values: seed, subject, seed x row and residual noise."""

    def __init__(self, rng_seed: int) -> None:
        self.rng = np.random.default_rng(rng_seed)
        self.subject_fx = self.rng.normal(0, 1.0, SUBJECTS)
        self.seed_fx: dict[int, float] = {}
        self.lines: list[dict] = []

    def run(self, rows: list[str], seeds: list[int]) -> None:
        for row, s in itertools.product(rows, seeds):
            seed_fx = self.seed_fx.setdefault(s, self.rng.normal(0, 1.0))
            row_seed = self.rng.normal(0, 0.3)
            for j in range(SUBJECTS):
                value = TRUTH[row] + seed_fx + self.subject_fx[j] + row_seed
                self.lines.append(
                    {"row": row, "row_index": list(TRUTH).index(row), "seed": s,
                     "subject": f"sub-{j}", "level": "subject", "status": "completed",
                     "dataset": "synthetic", "start_time": 0,
                     "psnr": value + self.rng.normal(0, 0.1)}
                )  # fmt: skip

    def seeds_by_row(self) -> dict[str, list[int]]:
        frame = pd.DataFrame(self.lines)
        return {r: sorted(frame.loc[frame["row"] == r, "seed"].unique()) for r in TRUTH}


def _replicate(rng_seed: int, max_seeds: int, budget: float | None = None) -> list:
    """Waves of 2 seeds until the decision stops them; each trial costs 0.1 trial-hours."""
    study, rows, seeds = Study(rng_seed), list(TRUTH), [0, 1]
    decisions = []
    while True:
        study.run(rows, seeds)
        analysis = analyse(pd.DataFrame(study.lines), reference="ref", metrics=["psnr"])
        by_row = study.seeds_by_row()
        spent = 0.1 * sum(len(s) for s in by_row.values())
        decision = decide(
            analysis, wave=len(decisions) + 1, metric="psnr", seeds_by_row=by_row,
            max_seeds=max_seeds, wave_size=2, spent_hours=spent, budget_hours=budget,
            hours_per_trial=dict.fromkeys(TRUTH, 0.1),
        )  # fmt: skip
        decisions.append(decision)
        if decision.stop:
            return decisions
        rows, seeds = decision.next_rows, decision.next_seeds


@pytest.mark.parametrize("rng_seed", [0, 1, 2])
def test_a_strong_contrast_resolves_before_the_cap_a_null_one_stops_with_its_reason(
    rng_seed: int,
) -> None:
    decisions = _replicate(rng_seed, max_seeds=10)
    states = [{t.name: t.state for t in d.targets} for d in decisions]
    # the planted 1.5 dB resolves in fewer waves than the cap's 5
    resolved_at = next(i for i, s in enumerate(states) if s["strong − ref"] == "resolved")
    assert resolved_at + 1 < 5
    # from then on only the null contrast's rows get seeds, never the strong row
    for d in decisions[resolved_at:-1]:
        assert d.next_rows == ["ref", "null"]
    last = decisions[-1]
    assert last.stop in ("seed_cap", "mde") and states[-1]["null − ref"] in ("capped", "futile")
    assert "after wave" in last.reason
    # seeds are never above the cap, and the new ones are always unused numbers
    seeds = [s for d in decisions[:-1] for s in d.next_seeds]
    assert len(seeds) == len(set(seeds)) and min(seeds) == 2
    assert len(decisions) <= 5


def test_a_null_contrast_stops_at_the_cap_without_enough_seeds_to_project() -> None:
    """At a cap of 3, the MDE rule never has 3 seeds before the cap: the cap stops it."""
    last = _replicate(0, max_seeds=3)[-1]
    assert last.stop == "seed_cap"
    assert last.reason.startswith("after wave 2, unresolved at the seed cap (3): ")
    assert "null − ref" in last.reason


def test_the_budget_stops_a_wave_it_cannot_pay() -> None:
    """Wave 1 costs 6 x 0.1 = 0.6 trial-hours of a 0.75 budget; one more seed of the two or
    three unresolved rows costs 0.2 or 0.3: more than the 0.15 left."""
    decisions = _replicate(0, max_seeds=10, budget=0.75)
    assert len(decisions) == 1 and decisions[0].stop == "budget"
    spent = r"0.6 of 0.75 trial-hours spent, .* costs 0\.[23] \(resolved: "
    assert re.search(spent, decisions[0].reason)


def test_the_mde_rule_names_the_seeds_a_null_contrast_needs() -> None:
    decisions = _replicate(1, max_seeds=40)
    futile = [t for t in decisions[-1].targets if t.state == "futile"]
    assert decisions[-1].stop == "mde", decisions[-1].reason
    assert futile and futile[0].name == "null − ref"
    assert futile[0].seeds_needed is None or futile[0].seeds_needed > 40
    assert len(decisions) < 19  # it stopped long before the cap's 40 seeds


def test_the_budget_needs_its_units_and_a_wrong_key_is_one_line(tmp_path: Path) -> None:
    assert budget_hours("200h") == 200 and budget_hours("90m") == 1.5
    space = tmp_path / "space.yaml"
    rows = {"a": {"method": "sr3"}, "b": {"method": "sr3", "label": "B"}}
    for replicate, message in (
        ({"max_seeds": 4, "budgt": "2h"}, "unknown key 'analysis.replicate.budgt': did you mean "
         "'analysis.replicate.budget'?"),
        ({"max_seeds": 4, "budget": 200}, "invalid value for 'analysis.replicate.budget': budget "
         "'200': write trial-hours as a number and its unit, e.g. 200h, 90m or 600s"),
    ):  # fmt: skip
        space.write_text(
            yaml.safe_dump({"name": "x", "rows": rows, "analysis": {"replicate": replicate}})
        )
        with pytest.raises(ConfigError) as err:
            load_experiment(space)
        assert str(err.value) == f"{space}: {message}"


def test_a_target_resolves_only_below_alpha_over_the_planned_looks() -> None:
    """Waves of 2 seeds up to 10 are 5 looks: resolved means a corrected p below 0.05 / 5
    (Bonferroni over the looks; benchmarks/optional_stopping.py shows why)."""
    assert planned_looks(10, 2) == 5 and planned_looks(9, 3) == 3 and planned_looks(4, 4) == 1
    decisions = _replicate(1, max_seeds=10)
    checked = 0
    for decision in decisions:
        assert decision.level == pytest.approx(0.01)
        for target in decision.targets:
            if target.p_adjusted is not None:
                checked += 1
                assert (target.state == "resolved") == (target.p_adjusted < 0.01), target
    assert checked and "over 5 planned looks" in decisions[-1].reason
