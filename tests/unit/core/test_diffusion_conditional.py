"""The conditional diffusion wrapper reproduces, bit for bit, the formulas SR3, PMDM/Palette
and the IRM used to inline: the same random draws in the same order, the same arithmetic,
the same samples, and the same checkpoint keys."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ablate.diffusion.conditional import ConditionalDiffusion
from ablate.diffusion.losses import noise_l1
from ablate.diffusion.samplers import Sampling, sample
from ablate.diffusion.schedules import NoiseSchedule
from ablate.methods.registry import build_method
from ablate.models.unet import UNet
from tests.unit.core import test_methods_table2 as table2
from tests.unit.core import test_pmdm_rows as pmdm_rows

SIZE = 16
SCHEDULE = NoiseSchedule.linear(50, 2e-3, 0.4)


def unet() -> UNet:
    torch.manual_seed(0)
    return UNet(2, 1, base_width=8, channel_mults=(1, 2), res_blocks=1, attn_res=(),
                image_size=SIZE, noise_embedding=True)  # fmt: skip


def wrapper(net: UNet, sampling: Sampling = Sampling(5), **kwargs: object) -> ConditionalDiffusion:
    settings = {"noise_level": "continuous", "objective": "l1", "clip": (0.0, 1.0)}
    settings.update({"condition_first": True, **kwargs})
    return ConditionalDiffusion(net, SCHEDULE, sampling, **settings)  # type: ignore[arg-type]


def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 1, SIZE, SIZE, generator=g), torch.rand(3, 1, SIZE, SIZE, generator=g)


def test_add_noise_is_the_inlined_forward_process() -> None:
    x0, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    gamma = torch.rand(4)
    g = gamma.reshape(-1, 1, 1, 1)
    inlined = g.sqrt() * x0 + (1.0 - g).sqrt() * noise
    assert torch.equal(SCHEDULE.add_noise(x0, noise, gamma), inlined)


def test_continuous_l1_loss_is_sr3s_inlined_loss() -> None:
    net, (lpet, spet) = unet(), images()
    torch.manual_seed(7)
    got = wrapper(net).loss(spet, 2.0 * lpet - 1.0)
    torch.manual_seed(7)  # SR3's loss as it was written before the wrapper
    cond, x0 = 2.0 * lpet - 1.0, 2.0 * spet - 1.0
    _, gamma = SCHEDULE.sample_noise_level(x0.shape[0], device=x0.device)
    g = gamma.reshape(-1, 1, 1, 1)
    noise = torch.randn_like(x0)
    x_t = g.sqrt() * x0 + (1.0 - g).sqrt() * noise
    want = noise_l1(net(torch.cat([cond, x_t], dim=1), g.flatten().sqrt()), noise)
    assert torch.equal(got, want)


def test_discrete_mse_loss_is_pmdms_inlined_loss() -> None:
    net, (cond, spet) = unet(), images()
    diffusion = wrapper(net, noise_level="discrete", objective="mse", condition_first=False)
    torch.manual_seed(7)
    got = diffusion.loss(spet, cond)
    torch.manual_seed(7)  # PMDM's loss as it was written before the wrapper
    x0 = 2.0 * spet - 1.0
    b = x0.shape[0]
    t = torch.randint(0, SCHEDULE.steps, (b,))
    gamma = SCHEDULE.gammas[t].to(x0, non_blocking=True)
    g = gamma.view(b, 1, 1, 1)
    noise = torch.randn_like(x0)
    x_t = g.sqrt() * x0 + (1.0 - g).sqrt() * noise
    want = F.mse_loss(net(torch.cat([x_t, cond], dim=1), gamma.sqrt()), noise)
    assert torch.equal(got, want)


@pytest.mark.parametrize(("sampler", "eta"), [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5)])
@pytest.mark.parametrize("clip", [(0.0, 1.0), (0.0, 2.0)])
def test_sample_is_what_the_samplers_draw(
    sampler: str, eta: float, clip: tuple[float, float]
) -> None:
    net, (cond, _) = unet(), images()
    diffusion = wrapper(net, Sampling(5, sampler, eta), clip=clip)  # type: ignore[arg-type]
    with torch.no_grad():
        got = diffusion.sample(cond, torch.Generator().manual_seed(3))
        x = sample(
            sampler,  # type: ignore[arg-type]
            lambda x_t, level: net(torch.cat([cond, x_t], dim=1), level),
            tuple(cond.shape),
            SCHEDULE.respaced(5),
            eta=eta,
            generator=torch.Generator().manual_seed(3),
            clip=(2.0 * clip[0] - 1.0, 2.0 * clip[1] - 1.0),
        )
    assert torch.equal(got, (x + 1.0) / 2.0)


def test_all_steps_sample_with_the_training_schedule_itself() -> None:
    assert wrapper(unet(), Sampling(SCHEDULE.steps)).sample_schedule is SCHEDULE


def test_checkpoint_keys_stay_where_they_were() -> None:
    """The wrapper holds the network by reference: no ``diffusion.*`` keys appear."""
    sr3 = build_method(table2.tiny_trial("sr3", table2.PAPER_ROWS["sr3"]), table2.SIZE)
    assert {k.split(".")[0] for k in sr3.state_dict()} == {"net"}
    pmdm = build_method(pmdm_rows.tiny_trial("pmdm", pmdm_rows.ROWS["pmdm"]), pmdm_rows.SIZE)
    assert {k.split(".")[0] for k in pmdm.state_dict()} == {"unet", "estimator", "estimator_ready"}
    palette = build_method(
        pmdm_rows.tiny_trial("palette", pmdm_rows.ROWS["palette"]), pmdm_rows.SIZE
    )
    assert {k.split(".")[0] for k in palette.state_dict()} == {"unet", "estimator_ready"}


def test_a_copy_of_the_method_denoises_with_its_own_network() -> None:
    """An EMA copy (a deep copy of the method) must sample with the copied weights."""
    sr3 = build_method(table2.tiny_trial("sr3", table2.PAPER_ROWS["sr3"]), table2.SIZE)
    twin = copy.deepcopy(sr3)
    assert twin.diffusion.net is twin.net and twin.net is not sr3.net
