"""The Ray-free training loop: seeded, restorable, loud about NaN losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ablate.config import DataConfig, parse_experiment
from ablate.data.store import build_dataset
from ablate.methods.loop import NonFiniteLoss
from ablate.training.evaluation import evaluate_method
from ablate.training.seeding import seed_everything
from ablate.training.trial import TrainingRun
from ablate.trials import expand
from tests.conftest import tiny_experiment


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dataset(DataConfig(preset="tiny"), tmp_path_factory.mktemp("data"))


def _trial(row: dict, **train):
    raw = tiny_experiment("loop", {"r": row})
    raw["train"].update(train)
    return expand(parse_experiment(raw))[0]


def test_same_seed_same_losses(dataset: Path, tmp_path: Path) -> None:
    trial = _trial({"method": "coarse_to_fine", "irm": True})
    histories = []
    for _ in range(2):
        seed_everything(trial.seed)
        run = TrainingRun.build(trial, dataset, tmp_path)
        histories.append(run.train_until(4))
    assert histories[0] == histories[1]
    assert [step for step, _ in histories[0]] == [2, 4]
    assert {"loss", "loss/main"} <= set(histories[0][0][1])


def test_restore_continues_from_checkpointed_state(dataset: Path, tmp_path: Path) -> None:
    trial = _trial({"method": "coarse_to_fine"})
    seed_everything(0)
    run = TrainingRun.build(trial, dataset, tmp_path)
    run.train_until(2)
    saved = run.state()
    path = tmp_path / "state.pt"
    torch.save(saved, path)
    restored = TrainingRun.build(trial, dataset, tmp_path)
    restored.load_state(torch.load(path, weights_only=True))
    assert restored.step == 2
    for a, b in zip(
        run.method.state_dict().values(), restored.method.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_nan_loss_names_row_step_and_term(dataset: Path, tmp_path: Path) -> None:
    trial = _trial({"method": "coarse_to_fine"}, lr=1e30)
    run = TrainingRun.build(trial, dataset, tmp_path)
    with pytest.raises(
        NonFiniteLoss, match=r"row 'r' seed 0: loss term '\w+' is (nan|inf) at step \d+"
    ):
        run.train_until(6)


def test_nan_in_pmdm_stage_one_names_row_step_and_setting(dataset: Path, tmp_path: Path) -> None:
    """PMDM's stage 1 runs in the same loop as a trial, with the same one-line report."""
    trial = _trial({"method": "pmdm"}, estimator={"lr": 1e30, "steps": 4})
    with pytest.raises(
        NonFiniteLoss,
        match=r"^row 'r' seed 0: stage-1 DeepPET estimator: loss term '\w+' is (nan|inf) at "
        r"step \d+: lower train.estimator.lr or check the data$",
    ):
        TrainingRun.build(trial, dataset, tmp_path)


def test_stochastic_row_reports_ams_and_sd(dataset: Path, tmp_path: Path) -> None:
    trial = _trial({"method": "coarse_to_fine", "irm": True})
    run = TrainingRun.build(trial, dataset, tmp_path)
    result = evaluate_method(run.method, run.data("test"), trial, samples=3)
    assert {"psnr", "paper_psnr", "ams_psnr", "sd"} <= set(result.summary)
    assert result.summary["sd"] > 0
    assert result.images["sd_map"].shape[0] == len(result.images["output"])
    deterministic = _trial({"method": "coarse_to_fine"})
    run = TrainingRun.build(deterministic, dataset, tmp_path)
    result = evaluate_method(run.method, run.data("test"), deterministic, samples=3)
    assert "sd" not in result.summary and "ams_psnr" not in result.summary


def test_row_needing_missing_keys_fails_at_build(tmp_path: Path, dataset: Path) -> None:
    """A sinogram row on a dataset without sinograms (e.g. imported LPET/SPET volumes)."""
    import json
    import shutil

    from ablate.errors import UserError

    no_sinograms = tmp_path / "no_sinograms"
    shutil.copytree(dataset, no_sinograms)
    provenance = json.loads((no_sinograms / "provenance.json").read_text())
    provenance["arrays"] = [a for a in provenance["arrays"] if a != "sinogram"]
    (no_sinograms / "provenance.json").write_text(json.dumps(provenance))
    with pytest.raises(UserError, match="sinogram"):
        TrainingRun.build(_trial({"method": "deeppet"}), no_sinograms, tmp_path)


def test_loader_workers_give_the_same_batches_and_persist_across_epochs(
    dataset: Path, tmp_path: Path
) -> None:
    histories, iterators = [], []
    for workers in (0, 1):
        trial = _trial({"method": "coarse_to_fine"}, loader_workers=workers, log_every=1)
        train_slices = len(TrainingRun.build(trial, dataset, tmp_path).data("train"))
        steps_per_epoch = train_slices // trial.train.batch_size
        seed_everything(0)
        run = TrainingRun.build(trial, dataset, tmp_path)
        run.train_until(steps_per_epoch)
        first = run._loader._iterator
        histories.append(run.train_until(steps_per_epoch + 2))  # into the second epoch
        iterators.append((first, run._loader._iterator))
    assert histories[0] == histories[1]
    first, second = iterators[1]
    assert first is not None and second is first  # the same worker processes, reused


def test_restored_run_trains_on_the_batches_of_the_uninterrupted_one(
    dataset: Path, tmp_path: Path
) -> None:
    """CPM training draws no noise, so equal losses after a restore mid-epoch mean equal
    batches (data order is a function of seed and step)."""
    trial = _trial({"method": "coarse_to_fine"}, log_every=1)
    steps = len(TrainingRun.build(trial, dataset, tmp_path).data("train")) // 2 + 3
    seed_everything(0)
    straight = TrainingRun.build(trial, dataset, tmp_path)
    expected = straight.train_until(steps)
    seed_everything(0)
    first = TrainingRun.build(trial, dataset, tmp_path)
    first.train_until(5)
    restored = TrainingRun.build(trial, dataset, tmp_path)
    restored.load_state(first.state())
    resumed = restored.train_until(steps)
    assert [s for s, _ in resumed] == list(range(6, steps + 1))
    for (_, want), (_, got) in zip(expected[5:], resumed, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_sinogram_row_shows_its_sinogram_as_the_input(dataset: Path, tmp_path: Path) -> None:
    from ablate.training.evaluation import write_evaluation_artifacts
    from dashboards.plots import sample_panels

    trial = _trial({"method": "deeppet"})
    run = TrainingRun.build(trial, dataset, tmp_path)
    result = evaluate_method(run.method, run.data("test"), trial, samples=1)
    assert "input" not in result.images
    sino, ref = result.images["sinogram"], result.images["reference"]
    assert sino.shape == ref.shape and not np.allclose(sino, ref)
    write_evaluation_artifacts(result, tmp_path)
    captions = [name for name, _ in sample_panels(tmp_path / "samples.npz")[0]]
    assert captions[:3] == ["sinogram", "reference", "output"]
