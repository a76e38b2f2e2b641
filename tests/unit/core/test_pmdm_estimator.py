"""PMDM's stage-1 DeepPET estimator: trained once per (data, split, seed, settings), cached,
loaded by later trials, frozen during stage 2, and refused when it does not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ablate.methods.loop as loop
import ablate.methods.pmdm as pmdm
from ablate.errors import UserError
from ablate.methods.loop import NonFiniteLoss
from ablate.methods.pmdm import ConditionalDDPM, EstimatorError, data_fingerprint
from ablate.methods.registry import build_method
from ablate.precision import autocast
from ablate.shared_cache import SharedCache
from tests.unit.core.test_pmdm_rows import SIZE, PairDataset, batch_of, tiny_trial


@pytest.fixture(scope="module")
def train_data() -> PairDataset:
    return PairDataset(6, seed=1, split="train")


def new_pmdm(precision: str = "fp32", **row: object) -> ConditionalDDPM:
    trial = tiny_trial("pmdm", {"method": "pmdm", **row}, estimator_steps=3, precision=precision)
    return build_method(trial, SIZE)


def estimator_state(method: ConditionalDDPM) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in method.estimator.state_dict().items()}


def test_second_trial_loads_the_cached_estimator_instead_of_training(
    train_data: PairDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = new_pmdm()
    first.prepare(train_data, SharedCache(tmp_path), seed=0)
    assert first.estimator_trained and first.estimator_path.is_file()
    assert first.estimator_path.parent == tmp_path

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached estimator should have been loaded, not retrained")

    monkeypatch.setattr(pmdm, "train_estimator", no_training)
    variant = new_pmdm(conditioning="r0+sinogram", sample_steps=5)  # another PMDM variant
    variant.prepare(train_data, SharedCache(tmp_path), seed=0)
    assert not variant.estimator_trained and variant.estimator_path == first.estimator_path
    for name, value in estimator_state(first).items():
        torch.testing.assert_close(variant.estimator.state_dict()[name], value)


def test_cache_key_follows_seed_split_and_settings(train_data: PairDataset, tmp_path: Path) -> None:
    paths = set()
    for seed, data, train in [
        (0, train_data, {}),
        (1, train_data, {}),  # another seed
        (0, PairDataset(6, seed=2, split="train"), {}),  # other data
        (0, PairDataset(6, seed=1, split="val"), {}),  # another split label
        (0, train_data, {"estimator_steps": 4}),  # other stage-1 budget
        (0, train_data, {"precision": "bf16"}),  # stage 1 trains under the trial's precision
    ]:
        trial = tiny_trial("pmdm", {"method": "pmdm"}, **{"estimator_steps": 3, **train})
        method = build_method(trial, SIZE)
        method.prepare(data, SharedCache(tmp_path), seed)
        assert method.estimator_trained
        paths.add(method.estimator_path)
    assert len(paths) == 6
    # where and how fast stage 1 runs does not change what it trains: the same estimator
    trial = tiny_trial("pmdm", {"method": "pmdm"}, estimator_steps=3, loader_workers=1)
    method = build_method(trial, SIZE)
    method.prepare(train_data, SharedCache(tmp_path), 0)
    assert not method.estimator_trained


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
    method.prepare(train_data, SharedCache(tmp_path), seed=0)
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
    method.prepare(train_data, SharedCache(tmp_path), seed=0)
    restored = new_pmdm(sample_steps=3)
    restored.load_state_dict(method.state_dict())
    restored.eval()
    gen = torch.Generator().manual_seed(0)
    assert restored.reconstruct(batch_of(train_data, 1), gen).shape == (1, 1, SIZE, SIZE)


def test_corrupt_cached_estimator_is_named(train_data: PairDataset, tmp_path: Path) -> None:
    method = new_pmdm()
    method.prepare(train_data, SharedCache(tmp_path), seed=0)
    method.estimator_path.write_bytes(b"not a checkpoint")
    with pytest.raises(EstimatorError, match=str(method.estimator_path)):
        new_pmdm().prepare(train_data, SharedCache(tmp_path), seed=0)


def test_explicit_checkpoint_is_checked(train_data: PairDataset, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    trained = new_pmdm()
    trained.prepare(train_data, SharedCache(cache), seed=0)
    ckpt = str(trained.estimator_path)

    ok = new_pmdm(estimator_checkpoint=ckpt)
    ok.prepare(train_data, SharedCache(tmp_path / "unused"), seed=0)
    assert not ok.estimator_trained and not (tmp_path / "unused").exists()

    missing = str(tmp_path / "nowhere" / "deeppet.pt")
    with pytest.raises(EstimatorError, match="nowhere/deeppet.pt"):
        new_pmdm(estimator_checkpoint=missing).prepare(train_data, SharedCache(cache), seed=0)

    other_split = PairDataset(6, seed=1, split="val")
    with pytest.raises(EstimatorError, match=f"{ckpt} was trained with data.split='train'"):
        new_pmdm(estimator_checkpoint=ckpt).prepare(other_split, SharedCache(cache), seed=0)

    with pytest.raises(EstimatorError, match="needs seed=1"):
        new_pmdm(estimator_checkpoint=ckpt).prepare(train_data, SharedCache(cache), seed=1)

    wrong = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, wrong)
    with pytest.raises(EstimatorError, match="weights.pt is unreadable"):
        new_pmdm(estimator_checkpoint=str(wrong)).prepare(train_data, SharedCache(cache), seed=0)


def test_diverging_estimator_names_the_step_and_the_fix(train_data: PairDataset) -> None:
    """Stage 1 runs in the trial loop: a NaN is that loop's one-line report."""
    training = pmdm.EstimatorTraining(width=4, steps=5, batch_size=2, lr=1e30, device="cpu")
    with pytest.raises(
        NonFiniteLoss,
        match=r"^stage-1 DeepPET estimator: loss term '\w+' is (nan|inf) at step \d+: "
        r"lower train.estimator.lr",
    ) as err:
        pmdm.train_estimator(train_data, 0, training, SIZE)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_stage_one_on_cuda_without_a_gpu_is_an_error(train_data: PairDataset) -> None:
    training = pmdm.EstimatorTraining(width=4, steps=1, device="cuda")
    with pytest.raises(UserError, match="train.device is 'cuda' but no CUDA GPU is visible"):
        pmdm.train_estimator(train_data, 0, training, SIZE)


def test_stage_one_leaves_the_trials_random_streams_alone(train_data: PairDataset) -> None:
    """Stage 2 draws the same noise whether the estimator was trained or loaded."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    training = pmdm.EstimatorTraining(width=4, steps=3, batch_size=2, device="cpu")
    first = pmdm.train_estimator(train_data, 0, training, SIZE)
    assert torch.equal(torch.get_rng_state(), before)
    again = pmdm.train_estimator(train_data, 0, training, SIZE)  # seeded: the same estimator
    for name, value in first.state_dict().items():
        assert torch.equal(again.state_dict()[name], value)


def test_stage_one_trains_in_the_trial_loop_under_the_trials_precision(
    train_data: PairDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def spy(precision: str, device: torch.device) -> torch.autocast:
        seen.append(precision)
        return autocast(precision, device)

    monkeypatch.setattr(loop, "autocast", spy)
    method = new_pmdm(precision="bf16")
    method.prepare(train_data, SharedCache(tmp_path), seed=0)
    assert seen == ["bf16"] * 3  # estimator_steps
    saved = torch.load(method.estimator_path, weights_only=True)
    assert saved["meta"]["training"]["precision"] == "bf16"
