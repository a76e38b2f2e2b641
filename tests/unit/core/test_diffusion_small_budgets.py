"""Issue 19: the diffusion knobs for small budgets (prediction, schedule, min-SNR), the
per-noise-level diagnostic, and the memorisation check with a known answer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from ablate.config import DataConfig, DiffusionConfig, parse_experiment
from ablate.data.dataset import SliceDataset
from ablate.data.store import build_dataset
from ablate.diffusion.conditional import ConditionalDiffusion, min_snr_weight
from ablate.diffusion.samplers import Sampling, model_x0
from ablate.diffusion.schedules import NoiseSchedule
from ablate.methods.registry import build_method
from ablate.methods.sr3 import SR3
from ablate.metrics import psnr
from ablate.models.unet import UNetShape
from ablate.training.evaluation import X0_GAMMA, X0_PSNR, evaluate_method
from ablate.training.trial import TrainingRun
from ablate.trials import expand
from tests.conftest import tiny_experiment
from tests.paths import REPO


def test_cosine_schedule_runs_from_clean_to_noise() -> None:
    s = NoiseSchedule.cosine(1000)
    g = s.gammas
    assert s.steps == 1000 and bool((g[1:] < g[:-1]).all())
    assert float(g[0]) > 0.9999 and float(g[-1]) < 1e-4
    assert float(s.betas.max()) <= 0.999
    assert torch.equal(NoiseSchedule.named("linear", 10, 1e-4, 2e-2).betas,
                       NoiseSchedule.linear(10, 1e-4, 2e-2).betas)  # fmt: skip
    with pytest.raises(ValueError, match="unknown schedule"):
        NoiseSchedule.named("sigmoid", 10, 1e-4, 2e-2)


def test_diagnostic_levels_spread_over_the_schedule() -> None:
    s = NoiseSchedule.linear(2000, 1e-6, 1e-2)
    levels = s.diagnostic_levels()
    assert levels.shape == (8,) and bool((levels[1:] < levels[:-1]).all())
    assert float(levels[0]) > 0.9 and float(levels[-1]) < 1e-3
    assert torch.equal(levels[0], s.gammas[125])  # the midpoint of the first eighth


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_ideal_prediction_gives_back_x0(prediction: str) -> None:
    """Each parameterisation's target, turned back into an x0 estimate, is x0."""
    x0, noise = torch.rand(3, 1, 8, 8) * 2 - 1, torch.randn(3, 1, 8, 8)
    gamma = torch.tensor([0.999, 0.3, 1e-4])
    diffusion = ConditionalDiffusion(
        torch.nn.Identity(), NoiseSchedule.linear(10, 1e-4, 2e-2), Sampling(2),
        noise_level="discrete", objective="mse", clip=(0.0, 1.0), condition_first=True,
        prediction=prediction,  # type: ignore[arg-type]
    )  # fmt: skip
    x_t = NoiseSchedule.add_noise(x0, noise, gamma)
    target = diffusion.target(x0, noise, gamma)
    torch.testing.assert_close(model_x0(target, x_t, gamma, prediction), x0, atol=2e-4, rtol=0)  # type: ignore[arg-type]


def test_min_snr_weights() -> None:
    gamma = torch.tensor([0.5, 0.9, 0.99])  # snr 1, 9, 99
    torch.testing.assert_close(
        min_snr_weight(gamma, "eps", 5.0), torch.tensor([1.0, 5 / 9, 5 / 99])
    )
    torch.testing.assert_close(min_snr_weight(gamma, "x0", 5.0), torch.tensor([1.0, 5.0, 5.0]))
    torch.testing.assert_close(min_snr_weight(gamma, "v", 5.0), torch.tensor([0.5, 0.5, 5 / 100]))


def test_knobs_default_to_the_papers_and_families_differ() -> None:
    cfg = DiffusionConfig()
    for family in (cfg.sr3, cfg.irm, cfg.pmdm):
        assert (family.prediction, family.schedule, family.min_snr) == ("eps", "linear", None)
    cfg = DiffusionConfig.model_validate(
        {
            "sr3": {"prediction": "v", "schedule": "cosine", "min_snr": 5},
            "irm": {"prediction": "v", "schedule": "cosine"},
            "pmdm": {"prediction": "x0"},
        }
    )
    assert (cfg.sr3.prediction, cfg.pmdm.prediction, cfg.pmdm.schedule) == ("v", "x0", "linear")
    assert (cfg.irm.prediction, cfg.irm.schedule, cfg.irm.min_snr) == ("v", "cosine", None)
    for family in ("sr3", "irm"):
        with pytest.raises(ValueError):
            DiffusionConfig.model_validate({family: {"prediction": "w"}})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dataset(DataConfig(preset="tiny"), tmp_path_factory.mktemp("data"))


def _trial(row: dict, diffusion: dict | None = None):
    raw = tiny_experiment("diag", {"r": row})
    for section, values in (diffusion or {}).items():
        raw["diffusion"].setdefault(section, {}).update(values)
    return expand(parse_experiment(raw))[0]


@pytest.mark.parametrize(
    ("row", "diffusion", "logged"),
    [
        ({"method": "sr3"}, {"sr3": {"prediction": "v", "schedule": "cosine"}}, True),
        ({"method": "coarse_to_fine", "irm": True}, {}, True),
        (
            {"method": "coarse_to_fine", "irm": True, "contrastive": True},
            {"irm": {"prediction": "v", "schedule": "cosine", "min_snr": 5.0}},
            True,
        ),
        ({"method": "coarse_to_fine"}, {}, False),
    ],
)
def test_evaluation_logs_the_noise_level_diagnostic_of_diffusion_rows(
    dataset: Path, tmp_path: Path, row: dict, diffusion: dict, logged: bool
) -> None:
    trial = _trial(row, diffusion)
    run = TrainingRun.build(trial, dataset, tmp_path)
    result = evaluate_method(run.method, run.data("test"), trial, samples=2)
    names = {k for k in result.summary if k.startswith((X0_PSNR, X0_GAMMA))}
    if not logged:
        assert names == set()
        return
    assert names == {f"{p}/level_{i}" for p in (X0_PSNR, X0_GAMMA) for i in range(8)}
    gammas = [result.summary[f"{X0_GAMMA}/level_{i}"] for i in range(8)]
    assert gammas == sorted(gammas, reverse=True)
    assert all(math.isfinite(result.summary[f"{X0_PSNR}/level_{i}"]) for i in range(8))
    again = evaluate_method(run.method, run.data("test"), trial, samples=2)
    assert again.summary == result.summary  # fixed slices, fixed noise: rows and seeds compare


@pytest.mark.slow  # 1000 training steps of SR3 (about 20 s on 2 cores)
def test_memorising_one_slice_samples_it(dataset: Path) -> None:
    """The known answer beyond the exact denoiser: trained on one slice, SR3 must sample that
    slice (every sample >= 30 dB) with AMS >= the single sample, given the condition.

    With the papers' settings (eps prediction, linear 1e-6..1e-2 over T = 2000) the same run
    fails (samples at 9-36 dB with global intensity offsets, AMS 17 dB; see
    docs/diffusion-small-budgets.md); v-prediction on a cosine schedule (the demo's SR3
    settings) passes."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train = SliceDataset(dataset, "train", ["lpet", "spet"])
    item = train[len(train) // 2]
    batch = {k: v.unsqueeze(0).repeat(4, 1, 1, 1) for k, v in item.items()}
    method = SR3(
        32,
        unet=UNetShape(16, (1, 2, 2), 1, (8,), 0.0),
        schedule=NoiseSchedule.cosine(2000),
        sampling=Sampling(20),
        prediction="v",
    )
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    for _ in range(MEMORISE_STEPS):
        method.training_step(batch, [opt])
    method.eval()
    samples = method.reconstruct(batch, torch.Generator().manual_seed(7919))
    single = psnr(samples, batch["spet"])
    ams = psnr(samples.mean(0, keepdim=True), batch["spet"][:1])
    assert bool((single >= 30.0).all()), single
    assert float(ams) >= float(single.mean()), (float(ams), single)


@pytest.mark.slow  # 1000 training steps of CPM + IRM: about as long as SR3's memorisation
def test_memorising_one_slice_samples_it_through_the_irm(dataset: Path) -> None:
    """The same check for the IRM (row c at the demo's networks, the paper's
    ``residual_scale`` 1 and no CPM loss): trained on one slice with v-prediction on a cosine
    schedule, CPM + sampled residual give back that slice with every sample alike (each
    >= 23 dB, AMS >= their mean) and the one-step x0 holds at every noise level (>= 15 dB).

    Measured with this code and these seeds (2 loaded CPU cores): samples 25.9 / 24.5 / 26.1 /
    25.4 dB, AMS 26.7 dB, one-step x0 31.6 .. 18.5 dB from the cleanest level to the
    noisiest. The IRM does not reach SR3's 30 dB at 1000 steps: its CPM alone is at 11 dB, so
    the residual carries the whole image. With the paper's eps on the linear schedule the
    same run fails: samples 11.2 / 26.8 / 18.7 / 16.8 dB, AMS 17.6 dB, one-step x0 falling
    to 3.5, -2.5 and -10.7 dB at the three noisiest levels."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    raw = yaml.safe_load((REPO / "search_spaces" / "demo.yaml").read_text())
    raw["rows"] = {"c": {"method": "coarse_to_fine", "irm": True}}
    raw["diffusion"]["irm"] = {"sample_steps": 10, "prediction": "v", "schedule": "cosine"}
    raw["loss"]["cpm"] = 0.0
    trial = expand(parse_experiment(raw))[0]
    method = build_method(trial, 32)
    train = SliceDataset(dataset, "train", ["lpet", "spet"])
    item = train[len(train) // 2]
    batch = {k: v.unsqueeze(0).repeat(4, 1, 1, 1) for k, v in item.items()}
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    for _ in range(MEMORISE_STEPS):
        method.training_step(batch, [opt])
    method.eval()
    samples = method.reconstruct(batch, torch.Generator().manual_seed(7919))
    single = psnr(samples, batch["spet"])
    ams = psnr(samples.mean(0, keepdim=True), batch["spet"][:1])
    assert bool((single >= 23.0).all()), single
    assert float(ams) >= float(single.mean()), (float(ams), single)
    levels = method.noise_level_diagnostics(batch, torch.Generator().manual_seed(1))
    assert levels is not None and len(levels) == 8
    assert all(float(psnr(x0, batch["spet"]).mean()) >= 15.0 for _, x0 in levels)


#: benchmarks/diffusion_suspects.py --mode memorise --steps 1000 --variants v+cosine: the
#: same run, whose 4 samples score 40.2 / 31.8 / 36.0 / 38.7 dB, AMS 37.0 dB.
MEMORISE_STEPS = 1000
