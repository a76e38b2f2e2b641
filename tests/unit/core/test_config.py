"""Config validation: good YAML loads; bad YAML is one line naming the key or file."""

from pathlib import Path

import pytest

from ablate.config import (
    ConfigError,
    ExperimentConfig,
    TrialConfig,
    flatten,
    load_experiment,
    parse_experiment,
    parse_row,
)
from ablate.overrides import apply_overrides, parse_assignments
from ablate.trials import check_search, expand, select_rows, trial_config
from tests.paths import REPO

CHOICE = {"type": "choice", "values": [1]}
MINIMAL = {"name": "t", "rows": {"cpm": {"method": "coarse_to_fine"}}}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "search_spaces").glob("*.yaml")))
def test_shipped_search_spaces_load(name: str) -> None:
    exp = load_experiment(REPO / "search_spaces" / name)
    assert exp.rows
    assert expand(exp)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nrows:\n  cpm: {method: coarse_to_fine, nass: true}\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    msg = str(err.value)
    assert "rows.cpm.nass" in msg and "unknown key" in msg and "\n" not in msg


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"train\.steps"):
        parse_experiment({**MINIMAL, "train": {"steps": "many"}})


def test_unknown_method_rejected() -> None:
    with pytest.raises(ConfigError, match=r"rows\.x\.method"):
        parse_experiment({"name": "t", "rows": {"x": {"method": "unet9000"}}})


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(bad)


def test_grid_expands_rows_seeds_and_axes() -> None:
    exp = parse_experiment(
        {**MINIMAL, "seeds": [0, 1, 2], "grid": {"loss.k": [1e-5, 1e-4], "train.lr": [1e-3]}}
    )
    trials = expand(exp)
    assert len(trials) == 1 * 3 * 2
    assert {t.loss.k for t in trials} == {1e-5, 1e-4}
    assert {t.seed for t in trials} == {0, 1, 2}
    assert all(t.train.lr == 1e-3 for t in trials)


def test_grid_axis_must_name_a_section() -> None:
    exp = parse_experiment({**MINIMAL, "grid": {"nope.k": [1]}})
    with pytest.raises(ConfigError, match="nope"):
        expand(exp)
    exp = parse_experiment({**MINIMAL, "grid": {"loss.kk": [1]}})
    with pytest.raises(ConfigError, match="did you mean 'loss.k'"):
        expand(exp)


def test_search_row_must_exist() -> None:
    with pytest.raises(ConfigError, match="search.row"):
        parse_experiment({**MINIMAL, "search": {"row": "zzz", "params": {"loss.k": CHOICE}}})


def test_flatten_gives_dotted_params() -> None:
    exp = parse_experiment(MINIMAL)
    flat = flatten(expand(exp)[0].model_dump(mode="json"))
    assert flat["loss.k"] == 5e-5 and flat["row.method"] == "coarse_to_fine"


# --- rows: one type per method family -------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"method": "sr3", "nas": True}, "unknown key 'nas' for method 'sr3'"),
        ({"method": "deeppet", "sample_steps": 3}, "unknown key 'sample_steps'"),
        ({"method": "coarse_to_fine", "contrastive": True}, "contrastive needs irm"),
        ({"method": "palette", "estimator": True}, "'palette' has no estimator"),
        ({"method": "pmdm", "estimator": False, "conditioning": "r0+sinogram"}, "needs the"),
        ({"method": "unet9000"}, "method': use one of sr3"),
    ],
)
def test_a_row_may_only_set_its_methods_switches(row: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_row(row, "x")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_pmdm_row_knows_whether_it_uses_the_estimator() -> None:
    assert parse_row({"method": "pmdm"}).uses_estimator
    assert not parse_row({"method": "pmdm", "estimator": False}).uses_estimator
    assert not parse_row({"method": "palette"}).uses_estimator


# --- dotted overrides: one path for grid, search, confirm, resume and the command line -----


def test_cli_assignments_are_typed_by_the_config_models() -> None:
    overrides = parse_assignments(
        ["train.steps=50", "loss.k=1e-4", "train.compile=true", "model.sr3.mults=[1,2]"]
    )
    exp = apply_overrides(ExperimentConfig, parse_experiment(MINIMAL), overrides, "cli")
    assert exp.train.steps == 50 and exp.loss.k == 1e-4 and exp.train.compile is True
    assert exp.model.sr3.mults == (1, 2)


def test_an_unknown_key_names_the_closest_valid_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'train.stepz': did you mean 'train.steps'"):
        apply_overrides(ExperimentConfig, parse_experiment(MINIMAL), {"train.stepz": 1}, "cli")
    with pytest.raises(ConfigError, match=r"did you mean 'model.sr3'"):
        apply_overrides(ExperimentConfig, parse_experiment(MINIMAL), {"model.sr4.width": 1}, "c")
    with pytest.raises(ConfigError, match=r"'train.steps' is a value"):
        apply_overrides(ExperimentConfig, parse_experiment(MINIMAL), {"train.steps.x": 1}, "c")


def test_a_bad_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"cli: invalid value for 'train.steps'"):
        apply_overrides(ExperimentConfig, parse_experiment(MINIMAL), {"train.steps": "many"}, "cli")
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignments(["train.steps"])


def test_a_trial_is_its_row_seed_and_dotted_settings() -> None:
    exp = parse_experiment(
        {"name": "t", "rows": {"full": {"method": "coarse_to_fine", "irm": True}}}
    )
    trial = trial_config(exp, {"row": "full", "seed": 3, "row.contrastive_form": "likelihood"})
    assert isinstance(trial, TrialConfig)
    assert trial.seed == 3 and trial.row_name == "full" and trial.row.irm
    assert trial.row.contrastive_form == "likelihood"
    with pytest.raises(ConfigError, match="row 'full' seed 0: unknown key 'row.nass'"):
        trial_config(exp, {"row": "full", "seed": 0, "row.nass": True})


def test_search_keys_are_checked_before_a_search_starts() -> None:
    space = {"row": "cpm", "params": {"loss.kk": {"type": "uniform", "low": 0, "high": 1}}}
    with pytest.raises(ConfigError, match="search parameter 'loss.kk'.*did you mean 'loss.k'"):
        check_search(parse_experiment({**MINIMAL, "search": space}))
    space["params"] = {"row.irm": {"type": "choice", "values": [True, "maybe"]}}
    with pytest.raises(ConfigError, match="row.irm"):
        check_search(parse_experiment({**MINIMAL, "search": space}))


def test_rows_subset_keeps_order_and_rejects_unknown_rows() -> None:
    exp = load_experiment(REPO / "search_spaces" / "demo.yaml")
    assert list(select_rows(exp, ["full", "cpm"]).rows) == ["full", "cpm"]
    with pytest.raises(ConfigError, match="no row 'fulll'.*its rows are sr3, cpm"):
        select_rows(exp, ["fulll"])


def test_an_undeclared_direction_is_the_metrics_own() -> None:
    """A search or a launch on a metric that improves downwards (NMSE, the sampling SD) goes
    the right way without a ``mode:`` (one owner of directions: ``ablate.metric_names``)."""
    choice = {"type": "choice", "values": [1e-4, 1e-3]}
    search = {"row": "cpm", "params": {"loss.k": choice}}
    one = parse_experiment({**MINIMAL, "search": {**search, "metric": "sd"}})
    assert one.search.objectives == [("sd", "min")]
    two = parse_experiment({**MINIMAL, "search": {**search, "metric": ["psnr", "nmse"]}})
    assert two.search.objectives == [("psnr", "max"), ("nmse", "min")]
    declared = {**search, "metric": ["psnr", "sd"], "mode": ["max", "max"]}
    assert parse_experiment({**MINIMAL, "search": declared}).search.objectives[1] == ("sd", "max")
    with pytest.raises(ConfigError, match="one direction per metric"):
        parse_experiment({**MINIMAL, "search": {**search, "metric": ["psnr"], "mode": []}})
    assert parse_experiment({**MINIMAL, "metric": "nmse"}).direction == "min"
    assert parse_experiment({**MINIMAL, "metric": "nmse", "mode": "max"}).direction == "max"
    assert parse_experiment(MINIMAL).direction == "max"
