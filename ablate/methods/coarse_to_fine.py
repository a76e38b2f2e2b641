"""Rows (b)-(f) of paper 003's Table 2: the coarse-to-fine framework and its switches.

- CPM (always): a deterministic UNet maps LPET to a coarse prediction ``x_cp``. Alone
  (``irm: false``) it is trained with L2 and *is* the reconstruction (row b).
- IRM (``irm``): a small diffusion denoiser samples the residual ``r_0 = y - x_cp``
  conditioned on LPET, with WaveGrad's continuous noise level and L1 on the noise (eq. 8);
  CPM and IRM are trained jointly through that one loss (the residual is not detached), and
  the reconstruction is ``x_cp`` plus a residual sampled with the few-step inference schedule
  (linear, ``diffusion.irm.sample_steps`` steps, ``1e-6 .. diffusion.irm.sample_beta_end``).
  ``diffusion.irm``'s ``prediction``, ``schedule`` and ``min_snr`` may depart from eq. 8 for
  small budgets, as SR3's do (the same helpers of ``ablate.diffusion.conditional``): the
  network then predicts ``x0`` or ``v`` of the residual, L1 against that target.
- NAS / spectrum guidance (``nas``, ``spectrum``): one feature extractor per type and level
  (eq. 5) feeds guided ResBlocks of the CPM and of the IRM; its L1 loss is weighted by
  ``loss.m`` / ``loss.n``. Guide maps are computed once per input and reused at every
  sampling step.
- Contrastive loss (``contrastive``, needs ``irm``): the one-step estimate ``x_cp + r0~``
  (eq. 6; for x0/v-prediction that parameterisation's x0 formula) against the positive and
  ``loss.negatives`` negatives, weight ``loss.k``, in the form ``row.contrastive_form`` (see
  ``ablate.diffusion.losses``). The estimate reuses the output the IRM already gave for
  eq. 8 at the sampled continuous level; the reference
  code runs the denoiser a second time at the discrete ``gamma_t``, which costs a forward
  pass and gives the same eq. 6 up to the level's jitter within one step.

Every switch is independent except that contrastive needs the IRM; guidance works with or
without the IRM (it then guides the CPM only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ablate.config import CoarseToFineRow, ContrastiveForm, TrialConfig
from ablate.data.guidance import spectrum
from ablate.diffusion.conditional import denoising_loss, prediction_target
from ablate.diffusion.losses import contrastive_likelihood, contrastive_reference_kl
from ablate.diffusion.samplers import Prediction, ddpm_sample, model_x0
from ablate.diffusion.schedules import NoiseSchedule
from ablate.errors import UserError
from ablate.methods.base import Batch, Method
from ablate.models.feature_extractor import GuidanceExtractor
from ablate.models.unet import GuideMaps, UNet, UNetShape

#: NAS stack depth: slices i-2..i+2 (the paper's "4 neighbouring slices" plus the centre).
NAS_SLICES = 5


@dataclass(frozen=True)
class LossWeights:
    """Eq. 9's weights ``m`` (NAS guidance), ``n`` (spectrum guidance), ``k`` (contrastive),
    and ``cpm``, the extra L2 on the CPM output in IRM rows."""

    m: float
    n: float
    k: float
    cpm: float


def guided_levels(mults: tuple[int, ...], guide_levels: int) -> tuple[tuple[int, ...], bool]:
    """Which UNet encoder levels and whether the middle receive guide maps ``k = 1..M``.

    Map ``k`` has the size of encoder level ``k``; the reference guides encoder levels below
    the last (64x64, 32x32 at 128x128) and the middle, which sits at the last level.
    """
    last = len(mults) - 1
    return tuple(k for k in range(1, guide_levels + 1) if k < last), guide_levels >= last


class CoarseToFine(Method):
    """CPM, optionally + IRM, + NAS/spectrum guidance, + contrastive loss.

    Args:
        image_size: square image size H = W.
        cpm / irm: the shapes of the CPM and of the IRM's denoiser (None: no IRM).
        nas / spectrum: the guidance switches.
        guide_levels / guide_channels: the guidance feature extractors (M levels).
        contrastive: the form of the contrastive loss; None: no contrastive loss.
        weights: the loss weights.
        train_schedule / sample_schedule: the IRM's training and few-step sampling schedules.
        residual_scale: the IRM diffuses ``(y - x_cp) / residual_scale``.
        prediction / min_snr: what the IRM predicts and its loss weighting (see
            :class:`~ablate.diffusion.conditional.ConditionalDiffusion`).
    """

    def __init__(
        self,
        image_size: int,
        *,
        cpm: UNetShape,
        irm: UNetShape | None,
        nas: bool,
        spectrum: bool,
        guide_levels: int,
        guide_channels: int,
        contrastive: ContrastiveForm | None,
        weights: LossWeights,
        train_schedule: NoiseSchedule,
        sample_schedule: NoiseSchedule,
        residual_scale: float,
        prediction: Prediction = "eps",
        min_snr: float | None = None,
    ) -> None:
        super().__init__()
        self.prediction: Prediction = prediction
        self.min_snr = min_snr
        self.nas = nas
        self.contrastive = contrastive
        self.weights = weights
        self.stochastic = irm is not None
        self.required_keys = _keys(nas, contrastive is not None)
        self.streams = [name for name, on in (("nas", nas), ("spectrum", spectrum)) if on]
        guiding = bool(self.streams)
        self.guides = nn.ModuleDict(
            {
                name: GuidanceExtractor(
                    NAS_SLICES if name == "nas" else 1, guide_levels, guide_channels
                )
                for name in self.streams
            }
        )

        def unet(shape: UNetShape, in_channels: int, noise: bool) -> UNet:
            levels, mid = guided_levels(shape.mults, guide_levels) if guiding else ((), False)
            return shape.build(
                in_channels,
                image_size,
                noise_embedding=noise,
                guide_levels=levels,
                guide_mid=mid,
                guide_streams=len(self.streams),
                guide_channels=guide_channels,
            )

        self.cpm = unet(cpm, 1, noise=False)
        self.irm = unet(irm, 2, noise=True) if irm is not None else None
        self.train_schedule = train_schedule
        self.residual_scale = residual_scale
        self.sample_schedule = sample_schedule

    def _guide_maps(
        self, batch: Batch, with_loss: bool
    ) -> tuple[list[GuideMaps], dict[str, torch.Tensor]]:
        maps: list[GuideMaps] = []
        losses: dict[str, torch.Tensor] = {}
        for name in self.streams:
            if name == "nas":
                guide, target = batch["lpet_nas"], batch.get("spet_nas")
            else:
                guide = spectrum(batch["lpet"])
                target = spectrum(batch["spet"]) if with_loss else None
            feats, loss = self.guides[name](guide, target if with_loss else None)
            maps.append(feats)
            if loss is not None:
                losses[f"guide_{name}"] = loss
        return maps, losses

    def training_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        lpet, spet = batch["lpet"], batch["spet"]
        maps, terms = self._guide_maps(batch, with_loss=True)
        x_cp = self.cpm(lpet, None, maps)
        cpm_l2 = F.mse_loss(x_cp, spet)
        if self.irm is None:
            terms["main"] = cpm_l2
            total = cpm_l2
        else:
            r0 = (spet - x_cp) / self.residual_scale
            t, g = self.train_schedule.sample_noise_level(r0.shape[0], device=r0.device)
            noise = torch.randn_like(r0)
            r_t = self.train_schedule.add_noise(r0, noise, g)
            out = self.irm(torch.cat([lpet, r_t], dim=1), g.sqrt(), maps)
            target = prediction_target(self.prediction, r0, noise, g)
            terms["main"] = denoising_loss(out, target, g, "l1", self.prediction, self.min_snr)
            terms["cpm"] = cpm_l2
            total = terms["main"] + self.weights.cpm * cpm_l2
            if self.contrastive is not None:
                estimate = x_cp + self.residual_scale * model_x0(out, r_t, g, self.prediction)
                negatives = batch["negatives"]
                if self.contrastive == "likelihood":
                    term = contrastive_likelihood(estimate, spet, negatives)
                else:
                    t_frac = t.float() / self.train_schedule.steps
                    term = contrastive_reference_kl(estimate, spet, negatives, t_frac)
                terms["contrastive"] = term
                total = total + self.weights.k * term
        if "guide_nas" in terms:
            total = total + self.weights.m * terms["guide_nas"]
        if "guide_spectrum" in terms:
            total = total + self.weights.n * terms["guide_spectrum"]
        return {"loss": total, **terms}

    @torch.no_grad()
    def reconstruct(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        lpet = batch["lpet"]
        maps, _ = self._guide_maps(batch, with_loss=False)
        x_cp = self.cpm(lpet, None, maps)
        if self.irm is None:
            return x_cp
        irm = self.irm
        residual = ddpm_sample(
            lambda r_t, level: irm(torch.cat([lpet, r_t], dim=1), level, maps),
            tuple(lpet.shape),
            self.sample_schedule,
            device=lpet.device,
            generator=generator,
            clip=(-1.0 / self.residual_scale, 1.0 / self.residual_scale),
            prediction=self.prediction,
        )
        return x_cp + self.residual_scale * residual

    @torch.no_grad()
    def noise_level_diagnostics(
        self, batch: Batch, generator: torch.Generator
    ) -> list[tuple[float, torch.Tensor]] | None:
        """IRM rows: the one-step estimate ``x_cp + residual_scale * r0~`` (eq. 6) of the true
        residual noised to each diagnostic level of the training schedule."""
        if self.irm is None:
            return None
        lpet, spet = batch["lpet"], batch["spet"]
        maps, _ = self._guide_maps(batch, with_loss=False)
        x_cp = self.cpm(lpet, None, maps)
        r0 = (spet - x_cp) / self.residual_scale
        out = []
        for gamma in self.train_schedule.diagnostic_levels():
            noise = torch.randn(r0.shape, generator=generator).to(r0)
            g = torch.full((r0.shape[0],), float(gamma), device=r0.device)
            r_t = self.train_schedule.add_noise(r0, noise, g)
            pred = self.irm(torch.cat([lpet, r_t], dim=1), g.sqrt(), maps)
            r0_hat = model_x0(pred, r_t, g, self.prediction)
            out.append((float(gamma), x_cp + self.residual_scale * r0_hat))
        return out

    def input_shapes(self, image_size: int) -> dict[str, tuple[int, ...]]:
        shapes = {"lpet": (1, 1, image_size, image_size)}
        if self.nas:
            shapes["lpet_nas"] = (1, NAS_SLICES, image_size, image_size)
        return shapes


def _keys(nas: bool, contrastive: bool) -> frozenset[str]:
    keys = {"lpet", "spet"}
    if nas:
        keys |= {"lpet_nas", "spet_nas"}
    if contrastive:
        keys.add("negatives")
    return frozenset(keys)


def required_keys(row: CoarseToFineRow) -> frozenset[str]:
    return _keys(row.nas, row.contrastive)


def build(trial: TrialConfig, image_size: int) -> CoarseToFine:
    row, model, loss, diffusion = trial.row, trial.model.coarse_to_fine, trial.loss, trial.diffusion
    irm = diffusion.irm
    assert isinstance(row, CoarseToFineRow)
    if row.nas or row.spectrum:
        for mults in (model.cpm_mults, *([model.irm_mults] if row.irm else [])):
            if model.guide_levels > len(mults) - 1:
                raise UserError(
                    f"model.coarse_to_fine.guide_levels ({model.guide_levels}) exceeds the "
                    f"{len(mults) - 1} downsamplings of a UNet with multipliers {mults}: lower it"
                )
    shared = (model.res_blocks, model.attn_res, trial.model.dropout)
    return CoarseToFine(
        image_size,
        cpm=UNetShape(model.cpm_width, model.cpm_mults, *shared),
        irm=UNetShape(model.irm_width, model.irm_mults, *shared) if row.irm else None,
        nas=row.nas,
        spectrum=row.spectrum,
        guide_levels=model.guide_levels,
        guide_channels=model.guide_channels,
        contrastive=row.contrastive_form if row.contrastive else None,
        weights=LossWeights(loss.m, loss.n, loss.k, loss.cpm),
        train_schedule=NoiseSchedule.named(
            irm.schedule, diffusion.train_steps, diffusion.beta_start, diffusion.beta_end
        ),
        sample_schedule=NoiseSchedule.named(
            irm.schedule, irm.sample_steps, diffusion.beta_start, irm.sample_beta_end
        ),
        residual_scale=irm.residual_scale,
        prediction=irm.prediction,
        min_snr=irm.min_snr,
    )
