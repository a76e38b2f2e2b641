"""DDIM against DDPM, its determinism and noise budget, an analytic one-point case, and the
``diffusion.sampler`` knob as SR3, PMDM and Palette read it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ablate.config import ConfigError, TrialConfig, parse_experiment
from ablate.diffusion.samplers import ddim_sample, ddpm_sample, sample
from ablate.diffusion.schedules import NoiseSchedule
from ablate.methods.registry import build_method, required_keys
from ablate.planning.complexity import count_method
from ablate.shared_cache import SharedCache
from tests.conftest import tiny_experiment
from tests.unit.core import test_methods_table2 as table2
from tests.unit.core import test_pmdm_rows as pmdm_rows

SHAPE = (2, 1, 6, 6)
SCHEDULES = {
    "respaced": NoiseSchedule.linear(2000, 1e-6, 1e-2).respaced(20),
    "irm10": NoiseSchedule.linear(10, 1e-6, 0.5),
    "pmdm": NoiseSchedule.linear(50, 2e-3, 0.4),
}


def toy(x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """A smooth, level-dependent noise guess whose x0 estimates often leave [-1, 1]."""
    return 0.5 * x_t + 0.2 * level.reshape(-1, 1, 1, 1) * torch.sin(3.0 * x_t)


def one_point_oracle(x_star: torch.Tensor, seen: list[torch.Tensor]):
    """The exact noise when the data distribution is the single point ``x_star``; records
    every ``x_t`` it is called on in ``seen``."""

    def denoiser(x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        seen.append(x_t.clone())
        g = level.reshape(-1, 1, 1, 1) ** 2
        return (x_t - g.sqrt() * x_star) / (1 - g).sqrt()

    return denoiser


@pytest.mark.parametrize("clip", [(-1.0, 1.0), None], ids=["clip", "no-clip"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_ddim_with_eta_one_is_ddpm(name: str, clip: tuple[float, float] | None) -> None:
    schedule = SCHEDULES[name]
    ddpm = ddpm_sample(toy, SHAPE, schedule, generator=torch.Generator().manual_seed(0), clip=clip)
    ddim = ddim_sample(
        toy, SHAPE, schedule, eta=1.0, generator=torch.Generator().manual_seed(0), clip=clip
    )
    torch.testing.assert_close(ddim, ddpm, atol=1e-5, rtol=1e-5)
    if clip is not None:
        assert ddpm.abs().max() <= 1.0 + 1e-6, "the last step returns the clipped x0"


def _state_after_draws(draws: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    for _ in range(draws):
        torch.randn(SHAPE, generator=gen)
    return gen.get_state()


@pytest.mark.parametrize(("eta", "draws"), [(0.0, 1), (0.3, 10), (1.0, 10)])
def test_ddim_draws_noise_only_when_eta_is_positive(eta: float, draws: int) -> None:
    """eta = 0 draws x_T and nothing else; eta > 0 adds one draw per step but the last."""
    gen = torch.Generator().manual_seed(7)
    out = ddim_sample(toy, SHAPE, SCHEDULES["irm10"], eta=eta, generator=gen)
    assert torch.equal(gen.get_state(), _state_after_draws(draws))
    again = ddim_sample(toy, SHAPE, SCHEDULES["irm10"], eta=eta, generator=_seeded(7))
    assert torch.equal(out, again)
    assert not torch.equal(out, ddim_sample(toy, SHAPE, SCHEDULES["irm10"], generator=_seeded(8)))


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", ["respaced", "irm10"])
def test_deterministic_ddim_recovers_a_single_point_along_one_noise_direction(name: str) -> None:
    """For data = one point x*, eta = 0 returns x* from any x_T, and every intermediate x_t
    is sqrt(g) x* + sqrt(1 - g) z with the same z (DDIM keeps the noise direction of x_T;
    DDPM would mix in fresh noise at each step). Tolerances are float32's: the first x0
    estimate divides by sqrt(gamma_T) ~ 7e-3."""
    schedule = SCHEDULES[name]
    x_star = torch.rand(SHAPE, generator=_seeded(1)) * 1.6 - 0.8
    gammas = schedule.gammas.flip(0).tolist()  # the order the sampler visits them
    for seed in (0, 1, 2):
        seen: list[torch.Tensor] = []
        out = ddim_sample(one_point_oracle(x_star, seen), SHAPE, schedule, generator=_seeded(seed))
        torch.testing.assert_close(out, x_star, atol=1e-4, rtol=1e-4)
        assert len(seen) == schedule.steps
        torch.testing.assert_close(seen[0], torch.randn(SHAPE, generator=_seeded(seed)))
        z_T = (seen[0] - gammas[0] ** 0.5 * x_star) / (1 - gammas[0]) ** 0.5
        # where 1 - g is tiny, float32 rounding of x_t swamps sqrt(1 - g) z: skip those steps
        for x, g in zip(seen[1:], gammas[1:], strict=True):
            if 1 - g > 1e-2:
                z = (x - g**0.5 * x_star) / (1 - g) ** 0.5
                torch.testing.assert_close(z, z_T, atol=1e-4, rtol=1e-4)


def test_sample_dispatches_on_the_sampler_name() -> None:
    sched = SCHEDULES["irm10"]
    torch.testing.assert_close(
        sample("ddpm", toy, SHAPE, sched, eta=0.0, generator=_seeded(3)),
        ddpm_sample(toy, SHAPE, sched, generator=_seeded(3)),
        atol=0,
        rtol=0,
    )
    torch.testing.assert_close(
        sample("ddim", toy, SHAPE, sched, eta=0.5, generator=_seeded(3)),
        ddim_sample(toy, SHAPE, sched, eta=0.5, generator=_seeded(3)),
        atol=0,
        rtol=0,
    )
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        sample("dpm", toy, SHAPE, sched)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(toy, SHAPE, sched, eta=1.5)


def _with_sampler(trial: TrialConfig, sampler: str, eta: float = 0.0) -> TrialConfig:
    diffusion = trial.diffusion.model_copy(update={"sampler": sampler, "ddim_eta": eta})
    return trial.model_copy(update={"diffusion": diffusion})


def _sr3(sampler: str, eta: float = 0.0) -> torch.nn.Module:
    row = table2.PAPER_ROWS["sr3"]
    torch.manual_seed(0)
    trial = _with_sampler(table2.tiny_trial("sr3", row), sampler, eta)
    return build_method(trial, table2.SIZE).eval()


def test_sr3_reads_the_sampler_knob() -> None:
    batch = table2.tiny_batch(required_keys(table2.PAPER_ROWS["sr3"]))
    ddpm, ddim, ddim_eta1 = _sr3("ddpm"), _sr3("ddim"), _sr3("ddim", 1.0)
    assert "sampler='ddim'" in repr(ddim) and "eta=1.0" in repr(ddim_eta1)
    assert "sampler='ddpm'" in repr(ddpm)
    out = ddim.reconstruct(batch, _seeded(1))
    assert out.shape == batch["lpet"].shape and torch.isfinite(out).all()
    assert torch.equal(out, ddim.reconstruct(batch, _seeded(1)))
    reference = ddpm.reconstruct(batch, _seeded(1))
    assert not torch.allclose(out, reference, atol=1e-3)
    torch.testing.assert_close(ddim_eta1.reconstruct(batch, _seeded(1)), reference)
    # a few-step sampler costs the same per step: the GMAC count sees the same UNet calls
    assert count_method(_sr3("ddim"), table2.SIZE)[2] == count_method(_sr3("ddpm"), table2.SIZE)[2]


@pytest.mark.parametrize("name", ["pmdm", "palette"])
def test_pmdm_rows_sample_with_ddim(name: str, tmp_path: Path) -> None:
    data = pmdm_rows.PairDataset(8, seed=1)
    trial = pmdm_rows.tiny_trial(name, pmdm_rows.ROWS[name], estimator_steps=2)
    row = trial.row.model_copy(update={"sample_steps": 5})
    trial = _with_sampler(trial.model_copy(update={"row": row}), "ddim")
    torch.manual_seed(0)
    method = build_method(trial, pmdm_rows.SIZE)
    method.prepare(data, SharedCache(tmp_path), trial.seed)
    method.eval()
    assert "sampler='ddim'" in repr(method) and "sample_steps=5" in repr(method)
    calls: list[int] = []
    method.unet.register_forward_hook(lambda *_: calls.append(1))
    batch = pmdm_rows.batch_of(data, 2)
    out = method.reconstruct(batch, _seeded(3))
    assert out.shape == (2, 1, pmdm_rows.SIZE, pmdm_rows.SIZE) and torch.isfinite(out).all()
    assert len(calls) == 5
    torch.testing.assert_close(out, method.reconstruct(batch, _seeded(3)))
    assert not torch.allclose(out, method.reconstruct(batch, _seeded(4)))


@pytest.mark.parametrize(
    ("diffusion", "where"),
    [({"sampler": "dpm-solver"}, "diffusion.sampler"), ({"ddim_eta": 1.5}, "diffusion.ddim_eta")],
)
def test_bad_sampler_settings_are_one_line_config_errors(diffusion: dict, where: str) -> None:
    raw = tiny_experiment("bad-sampler", {"sr3": {"method": "sr3"}})
    raw["diffusion"] = {**raw["diffusion"], **diffusion}
    with pytest.raises(ConfigError, match=where) as err:
        parse_experiment(raw)
    assert "\n" not in str(err.value)


def test_default_sampler_is_ddpm_and_is_logged_as_a_param() -> None:
    from ablate.config import flatten

    exp = parse_experiment(tiny_experiment("default-sampler", {"sr3": {"method": "sr3"}}))
    params = flatten(exp.diffusion.model_dump(mode="json"), "diffusion.")
    assert params["diffusion.sampler"] == "ddpm" and params["diffusion.ddim_eta"] == 0.0
