"""Validate before launch: the networks' constraints fail as one line, exit 2, before the
dataset is built, Ray starts or any MLflow run exists."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest

from ablate.config import parse_experiment
from ablate.errors import UserError
from ablate.launch.preflight import check_networks, image_size
from ablate.trials import expand, search_trials
from tests.conftest import tiny_experiment
from tests.unit.cli.test_overrides import DEMO, LOSS_WEIGHTS, ablate, one_error_line

CPM_NAS = {"cpm_irm_nas": {"method": "coarse_to_fine", "irm": True, "nas": True}}


def guided_experiment(rows: dict, **extra: object) -> dict:
    """A tiny experiment whose UNets downsample twice, so guidance at levels 1-2 fits."""
    raw = copy.deepcopy(tiny_experiment("pf", rows, **extra))  # its model dict is shared
    raw["model"]["coarse_to_fine"] |= {"cpm_mults": [1, 2, 2], "irm_mults": [1, 2, 2]}
    return raw


def test_guide_levels_beyond_the_multipliers_name_the_row() -> None:
    raw = guided_experiment({"cpm": {"method": "coarse_to_fine"}, **CPM_NAS})
    raw["model"]["coarse_to_fine"]["guide_levels"] = 3  # mults (1, 2, 2): two downsamplings
    with pytest.raises(UserError, match=r"^row 'cpm_irm_nas': .*guide_levels \(3\) exceeds"):
        check_networks(expand(parse_experiment(raw)))


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"diffusion": {"train_steps": 100, "sr3": {"sample_steps": 500}}}, "sample_steps (500)"),
        ({"model": {"sr3": {"mults": [1, 2, 2, 2, 2, 2, 2]}}}, "32 is not divisible by 2^6"),
    ],
)
def test_other_network_constraints(settings: dict, needle: str) -> None:
    raw = copy.deepcopy(tiny_experiment("pf", {"sr3": {"method": "sr3"}}))
    for section, values in settings.items():
        raw[section] = {**raw[section], **values}
    with pytest.raises(UserError, match=r"^row 'sr3'") as err:
        check_networks(expand(parse_experiment(raw)))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_pmdm_schedule_that_never_reaches_noise_is_caught() -> None:
    raw = copy.deepcopy(tiny_experiment("pf", {"pmdm": {"method": "pmdm"}}))
    raw["data"] = {"preset": "sinogram-256"}
    raw["diffusion"]["pmdm"] = {"train_steps": 50, "beta_end": 0.001}
    with pytest.raises(UserError, match=r"^row 'pmdm': .*not at noise"):
        check_networks(expand(parse_experiment(raw)))


def test_a_search_is_checked_at_the_ends_of_each_range() -> None:
    raw = guided_experiment(CPM_NAS)
    raw["search"] = {
        "row": "cpm_irm_nas",
        "params": {"model.coarse_to_fine.guide_levels": {"type": "int", "low": 1, "high": 2}},
    }
    exp = parse_experiment(raw)
    assert check_networks(search_trials(exp)) == 2  # levels 1 and 2: two distinct networks
    raw["search"]["params"]["model.coarse_to_fine.guide_levels"]["high"] = 3
    with pytest.raises(UserError, match="guide_levels \\(3\\)"):
        check_networks(search_trials(parse_experiment(raw)))


def test_distinct_networks_are_built_once_and_fast() -> None:
    raw = guided_experiment({"cpm": {"method": "coarse_to_fine"}, **CPM_NAS})
    raw["seeds"] = list(range(10))
    raw["grid"] = {"loss.k": [1e-5, 1e-4]}
    trials = expand(parse_experiment(raw))
    started = time.perf_counter()
    assert len(trials) == 40 and check_networks(trials) == 4  # seeds share a network
    assert time.perf_counter() - started < 10


def test_image_size_without_building_data(tmp_path: Path) -> None:
    from ablate.config import DataConfig

    assert image_size(DataConfig(preset="tiny")) == 32
    assert image_size(DataConfig(preset="lowdose-128")) == 128
    assert image_size(DataConfig(preset="tiny", overrides={"image_size": 48})) == 48
    with pytest.raises(UserError, match="not an ablate dataset"):
        image_size(DataConfig(path=tmp_path))


def test_cli_bad_guide_levels_exit_2_before_any_run(tmp_path: Path) -> None:
    line = one_error_line(
        ablate("run", str(DEMO), "model.coarse_to_fine.guide_levels=3", cwd=tmp_path, timeout=120)
    )
    assert line.startswith("error: row 'cpm_irm_nas': model.coarse_to_fine.guide_levels (3)")
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    assert not (tmp_path / "runs" / "ray_results").exists()
    assert not (tmp_path / "runs" / "datasets").exists()  # no data simulated for nothing


def test_cli_search_over_bad_guide_levels_exit_2_before_any_run(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        LOSS_WEIGHTS.read_text().replace(
            "    loss.m: {type: loguniform, low: 0.1, high: 10.0}",
            "    model.coarse_to_fine.guide_levels: {type: int, low: 1, high: 3}",
        ),
        encoding="utf-8",
    )
    line = one_error_line(ablate("search", str(space), cwd=tmp_path, timeout=120))
    assert "row 'full': model.coarse_to_fine.guide_levels (3) exceeds" in line
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    assert not (tmp_path / "runs" / "datasets").exists()
