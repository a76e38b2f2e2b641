"""Paper-000 rows (DeepPET, cGAN, pix2pix, VQ-VAE, Palette, PMDM) at tiny scale on CPU.

The data are small synthetic sinogram/image pairs: random ellipses projected with the
project's parallel-beam projector, so the sinogram really determines the image.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.utils.data

from ablate.config import (
    DataConfig,
    DiffusionConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    TrialConfig,
    load_experiment,
    parse_row,
)
from ablate.data.projector import ParallelBeamProjector
from ablate.errors import UserError
from ablate.methods.base import Method
from ablate.methods.registry import build_method
from ablate.models.deeppet import DeepPET, resample_sinogram
from ablate.paper import TABLE1
from ablate.shared_cache import SharedCache
from ablate.training.trial import optimiser_settings
from ablate.trials import row_trials
from tests.paths import REPO

SIZE = 32

ROWS: dict[str, dict] = {
    "deeppet": {"method": "deeppet", "weight_decay": 1e-5},
    "cgan": {"method": "cgan", "lr": 2e-4},
    "pix2pix": {"method": "pix2pix", "lr": 2e-4},
    "vqvae": {"method": "vqvae", "lr": 1e-3},
    "palette": {"method": "palette", "lr": 1e-3},
    "pmdm": {"method": "pmdm", "lr": 1e-3},
}


def ellipses(n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` images [n, size, size] of 2-3 random ellipses with intensities in (0.2, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = torch.zeros(n, size, size)
    for i in range(n):
        for _ in range(int(torch.randint(2, 4, (1,), generator=g))):
            cx, cy = (torch.rand(2, generator=g) - 0.5) * 0.8
            ax, ay = 0.15 + 0.35 * torch.rand(2, generator=g)
            phi = float(torch.rand(1, generator=g)) * math.pi
            u = (xx - cx) * math.cos(phi) + (yy - cy) * math.sin(phi)
            v = -(xx - cx) * math.sin(phi) + (yy - cy) * math.cos(phi)
            inside = (u / ax) ** 2 + (v / ay) ** 2 <= 1
            out[i][inside] = 0.2 + 0.8 * float(torch.rand(1, generator=g))
    return out


class PairDataset(torch.utils.data.Dataset):
    """Sinogram [1, A, D] / image [1, H, W] pairs in the batch-key layout of SliceDataset
    (index ``i + e * n`` is item ``i`` in epoch ``e``, as the training loop asks)."""

    def __init__(self, n: int, seed: int, split: str = "train") -> None:
        images = ellipses(n, SIZE, seed)
        proj = ParallelBeamProjector(SIZE, pixel_mm=2.0, angles=24, bins=48, bin_mm=2.0)
        sino = proj.forward(images)
        self.spet = images.unsqueeze(1)
        self.sinogram = (sino / sino.amax()).unsqueeze(1)
        self.split = split

    def __len__(self) -> int:
        return self.spet.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i %= len(self)
        return {"sinogram": self.sinogram[i], "spet": self.spet[i]}


def tiny_trial(
    name: str, row: dict, estimator_steps: int | None = None, **train: object
) -> TrialConfig:
    return TrialConfig(
        experiment="test-pmdm",
        row_name=name,
        row=parse_row(row),
        seed=0,
        data=DataConfig(),
        model=ModelConfig.model_validate(
            {
                "deeppet": {"width": 4},
                "gan": {"width": 8},
                "vqvae": {"width": 16, "code_dim": 8, "codes": 32},
                "pmdm": {"width": 16, "mults": (1, 2), "res_blocks": 1, "attn_res": ()},
            }
        ),
        loss=LossConfig(),
        diffusion=DiffusionConfig.model_validate(
            {"pmdm": {"train_steps": 50, "beta_start": 2e-3, "beta_end": 0.4}}
        ),
        train=TrainConfig.model_validate(
            {
                "steps": 20,
                "batch_size": 4,
                "device": "cpu",
                **train,
                "estimator": {"lr": 3e-3, "steps": estimator_steps},
            }
        ),
    )


def batch_of(data: PairDataset, n: int = 4) -> dict[str, torch.Tensor]:
    return {"sinogram": data.sinogram[:n], "spet": data.spet[:n]}


@pytest.fixture(scope="module")
def data() -> PairDataset:
    return PairDataset(8, seed=1)


def built(
    name: str, data: PairDataset, cache: Path, sample_steps: int | None = None, **train: object
) -> Method:
    row = ROWS[name] if sample_steps is None else {**ROWS[name], "sample_steps": sample_steps}
    trial = tiny_trial(name, row, **train)
    torch.manual_seed(0)
    method = build_method(trial, SIZE)
    method.prepare(data, SharedCache(cache), trial.seed)
    return method


def test_resample_sinogram_to_image_grid() -> None:
    sino = torch.rand(2, 1, 24, 48)
    out = resample_sinogram(sino, (32, 32))
    assert out.shape == (2, 1, 32, 32)
    assert resample_sinogram(out, (32, 32)) is out  # already on the grid: untouched
    const = resample_sinogram(torch.full((1, 1, 24, 48), 0.3), (32, 32))
    torch.testing.assert_close(const, torch.full((1, 1, 32, 32), 0.3))


def test_deeppet_matches_the_paper_layout() -> None:
    """22 convolutions; 7x7, 7x7, 5x5, 5x5 then 3x3; 512 maps at 32x32 for 256x256 input."""
    net = DeepPET(width=64)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 22
    assert [c.kernel_size[0] for c in convs[:5]] == [7, 7, 5, 5, 3]
    assert all(c.kernel_size[0] in (1, 3) for c in convs[4:])
    with torch.device("meta"):
        net = DeepPET(width=64)
        code = net.encoder(torch.empty(1, 1, 256, 256))
        out = net(torch.empty(1, 1, 256, 256))
    assert tuple(code.shape) == (1, 512, 32, 32)
    assert tuple(out.shape) == (1, 1, 256, 256)


@pytest.mark.parametrize("name", list(ROWS))
def test_row_trains_a_step_and_reconstructs(name: str, data: PairDataset, tmp_path: Path) -> None:
    method = built(name, data, tmp_path, estimator_steps=2)
    assert method.required_keys == {"sinogram", "spet"}
    optimizers = method.configure_optimizers(1e-4, 0.0)
    before = [p.detach().clone() for p in method.parameters() if p.requires_grad]
    method.train()
    losses = method.training_step(batch_of(data), optimizers)
    assert "loss" in losses and "main" in losses
    assert all(torch.isfinite(v) and not v.requires_grad for v in losses.values())
    after = [p for p in method.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    method.eval()
    out = method.reconstruct(batch_of(data, 2), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, SIZE, SIZE) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(ROWS))
def test_short_run_lowers_the_loss(name: str, data: PairDataset, tmp_path: Path) -> None:
    """40 steps on a fixed batch: the mean main loss of the last 10 beats the first 10."""
    method = built(name, data, tmp_path, estimator_steps=30)
    trial = tiny_trial(name, ROWS[name], lr=1e-3)
    optimizers = method.configure_optimizers(*optimiser_settings(trial))
    method.train()
    torch.manual_seed(1)
    mains = [float(method.training_step(batch_of(data), optimizers)["main"]) for _ in range(40)]
    first, last = sum(mains[:10]) / 10, sum(mains[-10:]) / 10
    assert last < 0.8 * first, (name, first, last)


def test_gan_uses_two_optimisers_and_alternates(data: PairDataset, tmp_path: Path) -> None:
    method = built("pix2pix", data, tmp_path)
    opt_g, opt_d = method.configure_optimizers(
        *optimiser_settings(tiny_trial("p", ROWS["pix2pix"]))
    )
    gen = {id(p) for p in method.generator.parameters()}
    disc = {id(p) for p in method.discriminator.parameters()}
    assert {id(p) for g in opt_g.param_groups for p in g["params"]} == gen
    assert {id(p) for g in opt_d.param_groups for p in g["params"]} == disc
    assert opt_g.param_groups[0]["lr"] == 2e-4  # the row's lr overrides train.lr
    d_before = [p.detach().clone() for p in method.discriminator.parameters()]
    losses = method.training_step(batch_of(data), [opt_g, opt_d])
    assert {"loss", "main", "adv", "disc"} <= set(losses)
    d_after = list(method.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(d_after, d_before, strict=True))
    assert all(p.requires_grad for p in method.discriminator.parameters())


def test_gan_reports_a_nan_honestly(data: PairDataset, tmp_path: Path) -> None:
    """A diverged GAN returns NaN terms (the training loop names row, step and term)."""
    method = built("cgan", data, tmp_path)
    batch = batch_of(data)
    batch["sinogram"] = torch.full_like(batch["sinogram"], float("nan"))
    losses = method.training_step(batch, method.configure_optimizers(1e-4, 0.0))
    assert not torch.isfinite(losses["loss"]) and not torch.isfinite(losses["main"])


def test_pmdm_variants_build_the_right_conditioning(data: PairDataset, tmp_path: Path) -> None:
    palette = built("palette", data, tmp_path)
    assert palette.estimator is None and palette.unet.stem.in_channels == 2
    pmdm_off = build_method(tiny_trial("off", {"method": "pmdm", "estimator": False}), SIZE)
    assert pmdm_off.estimator is None and pmdm_off.conditioning == "sinogram"
    both = build_method(tiny_trial("both", {"method": "pmdm", "conditioning": "r0+sinogram"}), SIZE)
    assert both.estimator is not None and both.unet.stem.in_channels == 3
    both.prepare(data, SharedCache(tmp_path), 0)
    cond = both.condition(batch_of(data, 2))
    assert cond.shape == (2, 2, SIZE, SIZE)
    torch.testing.assert_close(cond[:, 1:], resample_sinogram(data.sinogram[:2], (SIZE, SIZE)))


@pytest.mark.parametrize("steps", [None, 7])
def test_pmdm_sampler_steps(steps: int | None, data: PairDataset, tmp_path: Path) -> None:
    """Full T-step ancestral sampling by default, a respaced schedule when asked."""
    method = built("pmdm", data, tmp_path, estimator_steps=2, sample_steps=steps)
    calls = []
    method.unet.register_forward_hook(lambda *_: calls.append(1))
    method.eval()
    method.reconstruct(batch_of(data, 1))
    assert len(calls) == (steps or 50)


def test_pmdm_samples_are_stochastic_and_seedable(data: PairDataset, tmp_path: Path) -> None:
    method = built("pmdm", data, tmp_path, estimator_steps=2, sample_steps=5).eval()
    assert method.stochastic
    batch = batch_of(data, 1)
    a = method.reconstruct(batch, torch.Generator().manual_seed(3))
    b = method.reconstruct(batch, torch.Generator().manual_seed(3))
    c = method.reconstruct(batch, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_pmdm_refuses_to_run_without_its_estimator(data: PairDataset) -> None:
    method = build_method(tiny_trial("pmdm", ROWS["pmdm"]), SIZE)
    with pytest.raises(UserError, match="prepare"):
        method.training_losses(batch_of(data))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"method": "palette", "estimator": True}, "palette"),
        ({"method": "palette", "conditioning": "r0+sinogram"}, "needs the estimator"),
        ({"method": "deeppet", "nas": True}, "nas"),
        ({"method": "cgan", "estimator": True}, "estimator"),
        ({"method": "vqvae", "sample_steps": 10}, "sample_steps"),
    ],
)
def test_rows_reject_switches_they_cannot_honour(row: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_row(row, "row 'bad'")


def test_table1_yaml_has_every_paper_row_at_paper_scale() -> None:
    exp = load_experiment(REPO / "search_spaces" / "pmdm_table1.yaml")
    assert set(exp.rows) == set(TABLE1)
    assert exp.data.preset == "sinogram-256"
    trials = row_trials(exp)
    assert trials["deeppet"].row.method == "deeppet"
    for trial in trials.values():
        with torch.device("meta"):
            method = build_method(trial, 256)
        assert method.required_keys == {"sinogram", "spet"}
    pmdm = exp.rows["pmdm"]
    assert pmdm.lr == 3e-5 and pmdm.conditioning == "r0" and pmdm.sample_steps is None
    assert exp.model.deeppet.width * 8 == 512


def test_schedule_that_never_reaches_noise_is_refused() -> None:
    """DDPM's 1e-4..2e-2 betas with only 50 steps end at ~60% signal, not at N(0, I)."""
    trial = tiny_trial("pmdm", ROWS["pmdm"]).model_copy(
        update={"diffusion": DiffusionConfig.model_validate({"pmdm": {"train_steps": 50}})}
    )
    with pytest.raises(UserError, match="not at noise"):
        build_method(trial, SIZE)
