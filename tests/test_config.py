"""Config validation: good YAML loads; bad YAML is one line naming the key or file."""

from pathlib import Path

import pytest

from ablate.config import (
    ConfigError,
    flatten,
    load_experiment,
    parse_experiment,
    trial_configs,
)

REPO = Path(__file__).resolve().parents[1]
CHOICE = {"type": "choice", "values": [1]}
MINIMAL = {"name": "t", "rows": {"cpm": {"method": "coarse_to_fine"}}}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "search_spaces").glob("*.yaml")))
def test_shipped_search_spaces_load(name: str) -> None:
    exp = load_experiment(REPO / "search_spaces" / name)
    assert exp.rows
    assert trial_configs(exp)


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
    trials = trial_configs(exp)
    assert len(trials) == 1 * 3 * 2
    assert {t.loss.k for t in trials} == {1e-5, 1e-4}
    assert {t.seed for t in trials} == {0, 1, 2}
    assert all(t.train.lr == 1e-3 for t in trials)


def test_grid_axis_must_name_a_section() -> None:
    exp = parse_experiment({**MINIMAL, "grid": {"nope.k": [1]}})
    with pytest.raises(ConfigError, match="nope"):
        trial_configs(exp)
    exp = parse_experiment({**MINIMAL, "grid": {"loss.kk": [1]}})
    with pytest.raises(ConfigError, match="kk"):
        trial_configs(exp)


def test_search_row_must_exist() -> None:
    with pytest.raises(ConfigError, match="search.row"):
        parse_experiment({**MINIMAL, "search": {"row": "zzz", "params": {"loss.k": CHOICE}}})


def test_flatten_gives_dotted_params() -> None:
    exp = parse_experiment(MINIMAL)
    flat = flatten(trial_configs(exp)[0].model_dump(mode="json"))
    assert flat["loss.k"] == 5e-5 and flat["row.method"] == "coarse_to_fine"
