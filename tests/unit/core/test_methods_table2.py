"""Every Table-2 row of paper 003 at tiny scale on CPU: a training step, a reconstruction,
a short run that lowers the training loss, and the switch combinations that must fail."""

from __future__ import annotations

import pytest
import torch

from ablate.config import (
    DataConfig,
    DiffusionConfig,
    LossConfig,
    ModelConfig,
    RowConfig,
    TrainConfig,
    TrialConfig,
    load_experiment,
    parse_row,
)
from ablate.errors import UserError
from ablate.methods.registry import build_method, required_keys
from ablate.training.ema import WeightEMA
from ablate.training.trial import fuse_adam

SIZE = 32
PAPER_ROWS = load_experiment("search_spaces/paper_table2.yaml").rows
BEYOND_PAPER = {
    "cpm_spec": parse_row({"method": "coarse_to_fine", "spectrum": True}),
    "irm_spec_no_nas": parse_row({"method": "coarse_to_fine", "irm": True, "spectrum": True}),
    "irm_contrastive_only": parse_row(
        {"method": "coarse_to_fine", "irm": True, "contrastive": True}
    ),
    "full_likelihood": parse_row(
        {
            "method": "coarse_to_fine",
            "irm": True,
            "nas": True,
            "spectrum": True,
            "contrastive": True,
            "contrastive_form": "likelihood",
        }
    ),
}
ROWS = {**PAPER_ROWS, **BEYOND_PAPER}


def tiny_trial(name: str, row: RowConfig, **loss: float) -> TrialConfig:
    return TrialConfig(
        experiment="tiny",
        row_name=name,
        row=row,
        seed=0,
        data=DataConfig(),
        model=ModelConfig.model_validate(
            {
                "sr3": {"width": 8, "mults": (1, 2, 2), "res_blocks": 1, "attn_res": (8,)},
                "coarse_to_fine": {
                    "cpm_width": 8,
                    "cpm_mults": (1, 2, 2),
                    "irm_width": 8,
                    "irm_mults": (1, 2, 2),
                    "res_blocks": 1,
                    "guide_channels": 16,
                    "guide_levels": 2,
                },
            }
        ),
        loss=LossConfig(negatives=3, **loss),
        diffusion=DiffusionConfig.model_validate(
            {"train_steps": 50, "sr3": {"sample_steps": 5}, "irm": {"sample_steps": 3}}
        ),
        train=TrainConfig(),
    )


def tiny_batch(keys: frozenset[str], batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A smooth blob phantom and a noisy low-dose copy, with neighbours and negatives."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")

    def phantom(n: int) -> torch.Tensor:
        c = torch.rand(n, 2, 1, 1, generator=g) * 0.6 - 0.3
        r = torch.rand(n, 1, 1, generator=g) * 0.3 + 0.3
        return torch.exp(-((xx - c[:, 0]) ** 2 + (yy - c[:, 1]) ** 2) / r**2)

    spet_nas = torch.stack([phantom(5) for _ in range(batch)])
    lpet_nas = (spet_nas + 0.2 * torch.randn(spet_nas.shape, generator=g)).clamp_min(0)
    out = {
        "spet": spet_nas[:, 2:3],
        "lpet": lpet_nas[:, 2:3],
        "spet_nas": spet_nas,
        "lpet_nas": lpet_nas,
        "negatives": torch.stack([phantom(3) for _ in range(batch)]),
    }
    return {k: v for k, v in out.items() if k in keys}


@pytest.mark.parametrize("name", list(ROWS))
def test_row_trains_one_step_and_reconstructs(name: str) -> None:
    torch.manual_seed(0)
    row = ROWS[name]
    method = build_method(tiny_trial(name, row), SIZE)
    batch = tiny_batch(required_keys(row))
    opts = method.configure_optimizers(1e-3, 0.0)
    terms = method.training_step(batch, opts)
    assert torch.isfinite(torch.stack(list(terms.values()))).all()
    expected = {"loss", "main"}
    switch = {name: getattr(row, name, False) for name in ("irm", "nas", "spectrum", "contrastive")}
    if switch["irm"]:
        expected.add("cpm")
    if switch["nas"]:
        expected.add("guide_nas")
    if switch["spectrum"]:
        expected.add("guide_spectrum")
    if switch["contrastive"]:
        expected.add("contrastive")
    assert set(terms) == expected
    method.eval()
    g = torch.Generator().manual_seed(1)
    out = method.reconstruct(batch, generator=g)
    assert out.shape == batch["lpet"].shape and torch.isfinite(out).all()
    assert method.stochastic == (row.method == "sr3" or switch["irm"])
    again = method.reconstruct(batch, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again), "same generator seed must give the same sample"


def test_weighted_total_matches_terms() -> None:
    row = PAPER_ROWS["full"]
    method = build_method(tiny_trial("full", row, m=0.5, n=2.0, k=0.1, cpm=0.3), SIZE)
    torch.manual_seed(0)
    terms = method.training_losses(tiny_batch(required_keys(row)))
    expected = (
        terms["main"]
        + 0.3 * terms["cpm"]
        + 0.5 * terms["guide_nas"]
        + 2.0 * terms["guide_spectrum"]
        + 0.1 * terms["contrastive"]
    )
    torch.testing.assert_close(terms["loss"], expected)


def _fixed_loss(method: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Training loss averaged over fixed noise draws, so before/after compare like with like."""
    torch.manual_seed(1234)
    with torch.no_grad():
        return sum(float(method.training_losses(batch)["loss"]) for _ in range(4)) / 4


@pytest.mark.parametrize("name", list(PAPER_ROWS))
def test_short_run_lowers_training_loss(name: str) -> None:
    torch.manual_seed(0)
    row = PAPER_ROWS[name]
    method = build_method(tiny_trial(name, row), SIZE)
    batch = tiny_batch(required_keys(row), batch=4)
    before = _fixed_loss(method, batch)
    opts = method.configure_optimizers(2e-3, 0.0)
    for _ in range(15):
        method.training_step(batch, opts)
    after = _fixed_loss(method, batch)
    assert after < 0.8 * before, f"{name}: loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"method": "sr3", "nas": True}, "unknown key 'nas' for method 'sr3'"),
        ({"method": "sr3", "irm": True, "contrastive": True}, "for method 'sr3'"),
        ({"method": "coarse_to_fine", "contrastive": True}, "needs irm"),
        ({"method": "coarse_to_fine", "nas": True, "contrastive": True}, "needs irm"),
    ],
)
def test_invalid_switches_are_rejected(row: dict, needle: str) -> None:
    with pytest.raises(UserError, match=f"row 'bad': .*{needle}"):
        parse_row(row, "row 'bad'")


def test_build_errors_name_the_row_and_the_fix() -> None:
    trial = tiny_trial("deep", PAPER_ROWS["cpm_irm_nas"])
    trial.model.coarse_to_fine.guide_levels = 3
    with pytest.raises(UserError, match="row 'deep'.*guide_levels"):
        build_method(trial, SIZE)
    with pytest.raises(UserError, match="row 'cpm'.*30x30"):
        build_method(tiny_trial("cpm", PAPER_ROWS["cpm"]), 30)
    trial = tiny_trial("sr3", PAPER_ROWS["sr3"])
    trial.diffusion.sr3.sample_steps = 100
    with pytest.raises(UserError, match=r"sr3\.sample_steps"):
        build_method(trial, SIZE)


def test_required_keys_follow_switches() -> None:
    assert required_keys(PAPER_ROWS["sr3"]) == {"lpet", "spet"}
    assert required_keys(PAPER_ROWS["cpm_irm_nas_spec"]) == {
        "lpet",
        "spet",
        "lpet_nas",
        "spet_nas",
    }
    assert "negatives" in required_keys(PAPER_ROWS["full"])
    assert required_keys(BEYOND_PAPER["cpm_spec"]) == {"lpet", "spet"}


def test_paper_yaml_rows_and_settings() -> None:
    exp = load_experiment("search_spaces/paper_table2.yaml")
    assert list(exp.rows) == ["sr3", "cpm", "cpm_irm", "cpm_irm_nas", "cpm_irm_nas_spec", "full"]
    assert exp.data.preset == "lowdose-128"
    assert (exp.loss.m, exp.loss.n, exp.loss.k, exp.loss.negatives) == (1.0, 1.0, 5e-5, 10)
    assert exp.diffusion.train_steps == 2000 and exp.diffusion.irm.sample_steps == 10


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["sr3", "full"])
def test_paper_scale_row_trains_and_samples_on_gpu(name: str) -> None:
    from ablate.trials import row_trials

    trial = row_trials(load_experiment("search_spaces/paper_table2.yaml"))[name]
    device = torch.device("cuda")
    method = build_method(trial, 128).to(device)
    g = torch.Generator().manual_seed(0)
    batch = {k: v.to(device) for k, v in tiny_batch(required_keys(trial.row), 4).items()}
    batch = {k: torch.nn.functional.interpolate(v, size=128) for k, v in batch.items()}
    opts = method.configure_optimizers(1e-4, 0.0)
    for _ in range(2):
        terms = method.training_step(batch, opts)
    assert all(torch.isfinite(v) for v in terms.values())
    method.eval()
    for gen in (torch.Generator(device=device).manual_seed(1), g):
        out = method.reconstruct(batch, generator=gen)
        assert out.shape == (4, 1, 128, 128) and out.device.type == "cuda"
        assert torch.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(PAPER_ROWS))
def test_training_step_never_waits_for_the_gpu(name: str) -> None:
    """Issue 9: no host-device sync inside a step (optimiser, EMA included), so the host
    queues step N+1 while the GPU runs step N; CUDA's sync debug mode raises on any."""
    device = torch.device("cuda")
    method = build_method(tiny_trial(name, PAPER_ROWS[name]), SIZE).to(device)
    batch = {k: v.to(device) for k, v in tiny_batch(required_keys(PAPER_ROWS[name])).items()}
    opts = fuse_adam(method.configure_optimizers(1e-4, 0.0))
    ema = WeightEMA(method, 0.999)
    method.training_step(batch, opts)  # first step: allocations, cuDNN autotuning
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            method.training_step(batch, opts)
            ema.update(method)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_residual_scale_shrinks_the_sampled_residual() -> None:
    """The IRM diffuses (y - x_cp) / s: with the same weights, the sampled residual of an
    untrained denoiser (pure noise, clipped to the data range) shrinks with s."""
    row = parse_row({"method": "coarse_to_fine", "irm": True})
    trial = tiny_trial("cpm_irm", row)
    spreads = {}
    state = None
    for scale in (1.0, 0.05):
        irm = trial.diffusion.irm.model_copy(update={"residual_scale": scale})
        diffusion = trial.diffusion.model_copy(update={"irm": irm})
        method = build_method(trial.model_copy(update={"diffusion": diffusion}), SIZE)
        if state is None:
            state = method.state_dict()
        method.load_state_dict(state)
        batch = tiny_batch(required_keys(row))
        out = method.reconstruct(batch, generator=torch.Generator().manual_seed(0))
        x_cp = method.cpm(batch["lpet"], None, [])
        spreads[scale] = float((out - x_cp).std())
    assert spreads[0.05] < 0.2 * spreads[1.0]
