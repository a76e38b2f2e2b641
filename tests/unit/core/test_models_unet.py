"""UNet family and guidance extractors: shapes, guided blocks, and paper-scale counts.

Paper 003, Table 2 reports thop-style counts (conv + linear weights and biases) and GMACs of
one full inference of a 128x128 slice; the paper-scale rows of ``paper_table2.yaml`` must
reproduce them within 1%. Counting runs on the meta device (no memory, no arithmetic).
"""

from __future__ import annotations

import pytest
import torch

from ablate.config import load_experiment
from ablate.methods.registry import build_method
from ablate.models.feature_extractor import GuidanceExtractor
from ablate.models.unet import UNet
from ablate.paper import TABLE2
from ablate.planning.complexity import count_macs, count_params
from ablate.trials import row_trials

#: (MParam, GMACs) measured from the reference settings (DESIGN.md sec. 3); the paper rounds
#: these to 128.740 / 5973, 24.740 / 38, 31.020 / 132, 33.040 / 140, 34.100 / 145.
PAPER = {
    "sr3": (128.737, 5972.0),
    "cpm": (24.739, 37.8),
    "cpm_irm": (31.019, 132.4),
    "cpm_irm_nas": (33.047, 139.0),
    "cpm_irm_nas_spec": (34.101, 143.5),
    "full": (34.101, 143.5),
}
TRIALS = row_trials(load_experiment("search_spaces/paper_table2.yaml"))


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_scale_params_and_gmacs_within_one_percent(name: str) -> None:
    with torch.device("meta"):
        method = build_method(TRIALS[name], 128).eval()
        batch = {k: torch.zeros(shape) for k, shape in method.input_shapes(128).items()}
    params_m = count_params(method) / 1e6
    gmacs = count_macs(lambda: method.reconstruct(batch), method) / 1e9
    want_params, want_gmacs = PAPER[name]
    assert params_m == pytest.approx(want_params, rel=0.01)
    assert gmacs == pytest.approx(want_gmacs, rel=0.01)
    # The paper's printed Table 2: parameters to 0.1%; GMACs are printed as integers and
    # +spec/+L_CL's 143.5 is printed as 145 (1.03% off), hence 1.1% there.
    printed = TABLE2[name]
    assert params_m == pytest.approx(printed.params_m, rel=0.001)
    assert gmacs == pytest.approx(printed.gflops, rel=0.011)


def tiny_unet(**kw: object) -> UNet:
    args = dict(
        in_channels=2,
        out_channels=1,
        base_width=8,
        channel_mults=(1, 2, 2),
        res_blocks=1,
        attn_res=(16,),
        image_size=32,
    )
    args.update(kw)
    return UNet(**args)


def test_unet_shapes_with_and_without_noise_embedding() -> None:
    x = torch.randn(3, 2, 32, 32)
    assert tiny_unet()(x).shape == (3, 1, 32, 32)
    net = tiny_unet(noise_embedding=True)
    out = net(x, torch.rand(3))
    assert out.shape == (3, 1, 32, 32)
    with pytest.raises(ValueError, match="noise_level"):
        net(x)


def test_noise_level_changes_the_output() -> None:
    torch.manual_seed(0)
    net = tiny_unet(noise_embedding=True)
    x = torch.randn(1, 2, 32, 32)
    assert not torch.allclose(net(x, torch.tensor([0.1])), net(x, torch.tensor([0.9])))


def test_attention_placed_by_feature_map_size() -> None:
    def n_attn(net: UNet) -> int:
        return sum(type(m).__name__ == "SelfAttention" for m in net.modules())

    assert n_attn(tiny_unet(attn_res=())) == 1  # the middle only
    # 16x16 is level 1: one encoder block + two decoder blocks (res_blocks + 1)
    assert n_attn(tiny_unet(attn_res=(16,))) == 4


def test_guided_blocks_use_guide_maps() -> None:
    torch.manual_seed(0)
    net = tiny_unet(guide_levels=(1,), guide_mid=True, guide_streams=2, guide_channels=16)
    x = torch.randn(2, 2, 32, 32)
    maps = [{1: torch.randn(2, 16, 16, 16), 2: torch.randn(2, 16, 8, 8)} for _ in range(2)]
    out = net(x, guides=maps)
    assert out.shape == (2, 1, 32, 32)
    other = [{k: torch.randn_like(v) for k, v in m.items()} for m in maps]
    assert not torch.allclose(out, net(x, guides=other))
    with pytest.raises(ValueError, match="guide maps"):
        net(x, guides=maps[:1])


def test_guided_unet_rejects_bad_levels() -> None:
    with pytest.raises(ValueError, match="guide levels"):
        tiny_unet(guide_levels=(2,), guide_streams=1)
    with pytest.raises(ValueError, match="guide_streams"):
        tiny_unet(guide_mid=True)
    with pytest.raises(ValueError, match="divisible"):
        tiny_unet(image_size=30)


def test_guidance_extractor_maps_and_eq5_loss() -> None:
    torch.manual_seed(0)
    ex = GuidanceExtractor(in_channels=5, levels=3, guide_channels=16)
    guide = torch.rand(2, 5, 32, 32)
    maps, loss = ex(guide, guide)
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        1: (2, 16, 16, 16),
        2: (2, 16, 8, 8),
        3: (2, 16, 4, 4),
    }
    assert loss is not None and loss.ndim == 0 and loss > 0
    loss.backward()
    assert all(p.grad is not None for p in ex.parameters())
    _, none = ex(guide)
    assert none is None
    with pytest.raises(ValueError, match="channels"):
        ex(torch.rand(2, 1, 32, 32))


def test_guidance_extractor_learns_its_target() -> None:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ex = GuidanceExtractor(in_channels=1, levels=2, guide_channels=16)
    x = torch.rand(4, 1, 32, 32)
    y = x.flip(-1)
    opt = torch.optim.Adam(ex.parameters(), lr=3e-3)
    first = ex(x, y)[1].item()
    for _ in range(40):
        opt.zero_grad()
        ex(x, y)[1].backward()
        opt.step()
    torch.set_num_threads(threads)
    assert ex(x, y)[1].item() < 0.5 * first
