"""GPU fast-path switches at tiny scale on CPU: same training, same checkpoints."""

from __future__ import annotations

import copy
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from ablate.config import DataConfig, parse_experiment
from ablate.data.store import build_dataset
from ablate.training.ema import WeightEMA
from ablate.training.evaluation import evaluate_method
from ablate.training.seeding import seed_everything
from ablate.training.trial import TrainingRun, compile_networks, networks, uncompile
from ablate.trials import expand
from tests.conftest import tiny_experiment

STEPS = 20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dataset(DataConfig(preset="tiny"), tmp_path_factory.mktemp("data"))


def _trial(**train):
    raw = tiny_experiment("fast", {"cpm_irm": {"method": "coarse_to_fine", "irm": True}})
    raw["train"].update({"steps": STEPS, "log_every": 1, **train})
    return expand(parse_experiment(raw))[0]


def _losses(dataset: Path, cache: Path, **train) -> list[float]:
    trial = _trial(**train)
    seed_everything(trial.seed)
    run = TrainingRun.build(trial, dataset, cache)
    return [metrics["loss"] for _, metrics in run.train_until(STEPS)]


@pytest.fixture(scope="module")
def fp32_losses(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    return _losses(dataset, tmp_path_factory.mktemp("cache"))


def test_bf16_loss_curve_tracks_fp32(dataset: Path, tmp_path: Path, fp32_losses) -> None:
    bf16 = _losses(dataset, tmp_path, precision="bf16")
    assert bf16 != fp32_losses  # autocast really ran in bf16
    tail_fp32, tail_bf16 = sum(fp32_losses[-5:]) / 5, sum(bf16[-5:]) / 5
    assert abs(tail_bf16 - tail_fp32) / tail_fp32 < 0.15


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_bf16_compiled_loss_curve_tracks_fp32(dataset: Path, tmp_path: Path, fp32_losses) -> None:
    """The full fast path (bf16 autocast + torch.compile, as on a GPU) trains the same model:
    every logged step stays within 2% of fp32 eager (measured here: under 0.5%). Compiling
    on CPU costs about a minute."""
    with warnings.catch_warnings():
        # an eager fallback would not test compile at all
        warnings.filterwarnings("error", message="torch.compile failed")
        fast = _losses(dataset, tmp_path, precision="bf16", compile=True)
    assert fast != fp32_losses
    assert fast == pytest.approx(fp32_losses, rel=0.02)


def test_channels_last_gives_the_same_losses(dataset: Path, tmp_path: Path, fp32_losses) -> None:
    nhwc = _losses(dataset, tmp_path, channels_last=True)
    assert nhwc == pytest.approx(fp32_losses, rel=1e-3, abs=1e-5)


def test_ema_weights_lag_and_survive_checkpoint(dataset: Path, tmp_path: Path) -> None:
    trial = _trial(ema_decay=0.9, fused_adam=True)  # fused Adam: ignored on CPU
    seed_everything(0)
    run = TrainingRun.build(trial, dataset, tmp_path)
    run.train_until(4)
    live, ema = run.method.state_dict(), run.eval_method.state_dict()
    assert live.keys() == ema.keys()
    assert any(not torch.equal(live[k], ema[k]) for k in live if live[k].is_floating_point())
    path = tmp_path / "state.pt"
    torch.save(run.state(), path)
    restored = TrainingRun.build(trial, dataset, tmp_path)
    restored.load_state(torch.load(path, weights_only=True))
    for k, v in restored.eval_method.state_dict().items():
        assert torch.equal(v, ema[k])
    assert evaluate_method(run.eval_method, run.data("test"), trial, samples=2).summary["psnr"]
    run.export_weights(tmp_path / "export")
    exported = torch.load(tmp_path / "export" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(v, ema[k]) for k, v in exported.items())


def test_weight_ema_is_a_lerp_of_floats_and_a_copy_of_flags() -> None:
    live = torch.nn.BatchNorm1d(3)
    ema = WeightEMA(live, decay=0.75)
    with torch.no_grad():
        live.weight.fill_(2.0)  # from 1.0
    live.train()(torch.randn(8, 3))  # moves the running stats and the batch counter
    ema.update(live)
    torch.testing.assert_close(ema.module.weight, torch.full((3,), 1.25))
    torch.testing.assert_close(ema.module.running_mean, 0.25 * live.running_mean)
    assert int(ema.module.num_batches_tracked) == 1
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(live, decay=1.0)


def test_compile_failure_warns_and_trains_eager(dataset: Path, tmp_path: Path) -> None:
    trial = _trial(compile=True, compile_mode="no-such-mode", steps=2)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        run = TrainingRun.build(trial, dataset, tmp_path)
    assert run.compiled == []
    assert run.train_until(2)[-1][1]["loss"] > 0


def test_bf16_sampling_under_inference_mode(dataset: Path, tmp_path: Path) -> None:
    trial = _trial(precision="bf16")
    run = TrainingRun.build(trial, dataset, tmp_path)
    result = evaluate_method(run.eval_method, run.data("test"), trial, samples=2)
    assert {"psnr", "ams_psnr", "sd"} <= set(result.summary)
    run.train_until(1)  # training goes on after evaluating under inference_mode


def test_compile_covers_the_ema_copy_that_evaluation_samples_with(
    dataset: Path, tmp_path: Path
) -> None:
    trial = _trial(compile=True, ema_decay=0.9)
    run = TrainingRun.build(trial, dataset, tmp_path)
    live, ema = networks(run.method), networks(run.eval_method)
    assert len(run.compiled) == len(live) + len(ema) == 4  # CPM + IRM, twice
    assert all("forward" in vars(net) for net in live + ema)  # a compiled forward is bound
    assert run.method.state_dict().keys() == run.eval_method.state_dict().keys()
    assert not any("_orig_mod" in key for key in run.method.state_dict())


def test_uncompile_and_deep_copy_of_compiled_networks() -> None:
    """The compiled forward is bound per network: a deep copy runs its own weights, and
    uncompile (the lazy-compile fallback) gives back the class's eager forward. Nothing here
    calls a compiled forward, so nothing is compiled."""
    holder = torch.nn.Module()
    holder.net = torch.nn.Linear(3, 2)
    (net,) = compile_networks(holder, "default")
    assert "forward" in vars(net)
    twin = copy.deepcopy(holder).net
    assert twin.forward.__self__ is twin
    uncompile([net])
    assert "forward" not in vars(net)
    x = torch.randn(4, 3)
    torch.testing.assert_close(net(x), torch.nn.functional.linear(x, net.weight, net.bias))
