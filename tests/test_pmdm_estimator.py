"""PMDM's stage-1 DeepPET estimator: trained once per (data, split, seed, settings), cached,
loaded by later trials, frozen during stage 2, and refused when it does not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ablate.methods.pmdm as pmdm
from ablate.errors import UserError
from ablate.methods.pmdm import ConditionalDDPM, EstimatorError, data_fingerprint
from ablate.methods.registry import build_method
from tests.test_pmdm_rows import SIZE, PairDataset, batch_of, tiny_trial


@pytest.fixture(scope="module")
def train_data() -> PairDataset:
    return PairDataset(6, seed=1, split="train")


def new_pmdm(**row: object) -> ConditionalDDPM:
    trial = tiny_trial("pmdm", {"method": "pmdm", **row}, estimator_steps=3)
    return build_method(trial, SIZE)


def estimator_state(method: ConditionalDDPM) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in method.estimator.state_dict().items()}


def test_second_trial_loads_the_cached_estimator_instead_of_training(
    train_data: PairDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = new_pmdm()
    first.prepare(train_data, tmp_path, seed=0)
    assert first.estimator_trained and first.estimator_path.is_file()
    assert first.estimator_path.parent == tmp_path

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached estimator should have been loaded, not retrained")

    monkeypatch.setattr(pmdm, "train_estimator", no_training)
    variant = new_pmdm(conditioning="r0+sinogram", sample_steps=5)  # another PMDM variant
    variant.prepare(train_data, tmp_path, seed=0)
    assert not variant.estimator_trained and variant.estimator_path == first.estimator_path
    for name, value in estimator_state(first).items():
        torch.testing.assert_close(variant.estimator.state_dict()[name], value)


def test_cache_key_follows_seed_split_and_settings(train_data: PairDataset, tmp_path: Path) -> None:
    paths = set()
    for seed, data, steps in [
        (0, train_data, 3),
        (1, train_data, 3),  # another seed
        (0, PairDataset(6, seed=2, split="train"), 3),  # other data
        (0, PairDataset(6, seed=1, split="val"), 3),  # another split label
        (0, train_data, 4),  # other stage-1 budget
    ]:
        trial = tiny_trial("pmdm", {"method": "pmdm"}, estimator_steps=steps)
        method = build_method(trial, SIZE)
        method.prepare(data, tmp_path, seed)
        assert method.estimator_trained
        paths.add(method.estimator_path)
    assert len(paths) == 5


def test_manifest_datasets_are_fingerprinted_by_path_manifest_and_split(tmp_path: Path) -> None:
    class OnDisk:
        def __init__(self, root: Path, split: str) -> None:
            self.root, self.split = root, split

    (tmp_path / "manifest.parquet").write_bytes(b"manifest v1")
    a = data_fingerprint(OnDisk(tmp_path, "train"))
    assert a["root"] == str(tmp_path.resolve()) and a["split"] == "train"
    assert data_fingerprint(OnDisk(tmp_path, "val")) != a
    (tmp_path / "manifest.parquet").write_bytes(b"manifest v2")
    assert data_fingerprint(OnDisk(tmp_path, "train"))["manifest_sha256"] != a["manifest_sha256"]


def test_estimator_is_frozen_during_stage_two(train_data: PairDataset, tmp_path: Path) -> None:
    method = new_pmdm()
    method.prepare(train_data, tmp_path, seed=0)
    before = estimator_state(method)
    optimizers = method.configure_optimizers(1e-3, 0.0)
    trained = {id(p) for opt in optimizers for g in opt.param_groups for p in g["params"]}
    assert trained.isdisjoint(id(p) for p in method.estimator.parameters())
    method.train()
    assert not method.estimator.training
    for _ in range(3):
        method.training_step(batch_of(train_data), optimizers)
    for name, value in method.estimator.state_dict().items():
        torch.testing.assert_close(value, before[name])  # weights and BN statistics


def test_restored_trial_needs_no_prepare(train_data: PairDataset, tmp_path: Path) -> None:
    method = new_pmdm()
    method.prepare(train_data, tmp_path, seed=0)
    restored = new_pmdm()
    restored.load_state_dict(method.state_dict())
    restored.eval()
    gen = torch.Generator().manual_seed(0)
    restored.sample_steps = 3
    assert restored.reconstruct(batch_of(train_data, 1), gen).shape == (1, 1, SIZE, SIZE)


def test_corrupt_cached_estimator_is_named(train_data: PairDataset, tmp_path: Path) -> None:
    method = new_pmdm()
    method.prepare(train_data, tmp_path, seed=0)
    method.estimator_path.write_bytes(b"not a checkpoint")
    with pytest.raises(EstimatorError, match=str(method.estimator_path)):
        new_pmdm().prepare(train_data, tmp_path, seed=0)


def test_explicit_checkpoint_is_checked(train_data: PairDataset, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    trained = new_pmdm()
    trained.prepare(train_data, cache, seed=0)
    ckpt = str(trained.estimator_path)

    ok = new_pmdm(estimator_checkpoint=ckpt)
    ok.prepare(train_data, tmp_path / "unused", seed=0)
    assert not ok.estimator_trained and not (tmp_path / "unused").exists()

    missing = str(tmp_path / "nowhere" / "deeppet.pt")
    with pytest.raises(EstimatorError, match="nowhere/deeppet.pt"):
        new_pmdm(estimator_checkpoint=missing).prepare(train_data, cache, seed=0)

    other_split = PairDataset(6, seed=1, split="val")
    with pytest.raises(EstimatorError, match=f"{ckpt} was trained with data.split='train'"):
        new_pmdm(estimator_checkpoint=ckpt).prepare(other_split, cache, seed=0)

    with pytest.raises(EstimatorError, match="needs seed=1"):
        new_pmdm(estimator_checkpoint=ckpt).prepare(train_data, cache, seed=1)

    wrong = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, wrong)
    with pytest.raises(EstimatorError, match="weights.pt is unreadable"):
        new_pmdm(estimator_checkpoint=str(wrong)).prepare(train_data, cache, seed=0)


def test_diverging_estimator_names_the_steps_and_the_fix(train_data: PairDataset) -> None:
    training = pmdm.EstimatorTraining(width=4, steps=5, batch_size=2, lr=1e30, device="cpu")
    with pytest.raises(UserError, match=r"between steps 1 and 5: lower train.estimator.lr"):
        pmdm.train_estimator(train_data, 0, training, SIZE)
