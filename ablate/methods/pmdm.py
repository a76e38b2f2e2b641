"""PMDM-PET and Palette rows (paper 000): one conditional DDPM, with or without the estimator.

PMDM-PET is a two-stage method. Stage 1 trains DeepPET with MSE (Adam 1e-4, weight decay
1e-5) to estimate the posterior mean ``r0* = f(s)`` of the image given the sinogram ``s``;
stage 2 trains an epsilon-predicting DDPM (MSE, linear schedule) whose UNet sees the noisy
image concatenated with the frozen estimator's ``r0*`` (and, as a variant, the resampled
sinogram too), then samples with full T-step ancestral sampling or a respaced schedule, with
DDPM's update or DDIM's (``diffusion.sampler``).
Palette is the same DDPM conditioned on the resampled sinogram alone (``estimator=False``),
so the pair is also the paper's estimator ablation.

Stage 1 runs in :meth:`ConditionalDDPM.prepare`, once per (dataset, split, seed, estimator
settings): a DeepPET row's method trained by the trial's own loop
(:class:`~ablate.methods.loop.TrainingLoop`: the same batch order, precision, device resolution and
NaN report as any trial). The trained estimator is kept in the trial's
:class:`~ablate.shared_cache.SharedCache` as ``deeppet-<content hash>.pt``, and every later
PMDM trial with the same key (a grid of PMDM variants, a retried trial) loads it instead of
retraining; the cache, not the method, serialises trials and nodes that want the same one.
A given ``estimator_checkpoint`` replaces the cache; it must have been written by
:func:`save_estimator` for the same data and seed.

Stage 2 is :class:`~ablate.diffusion.conditional.ConditionalDiffusion` with a uniform discrete
step and MSE; this module says only how the condition is built. Images are diffused on the
``2 x - 1`` scale (data ``[0, 1]`` -> ``[-1, 1]``); ``r0*`` is put on the same scale, so the
sampler transports ``r0*`` to the data distribution on one scale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.utils.data

from ablate.config import PMDMRow, RowConfig, TrialConfig
from ablate.data.staging import HASH_FILE
from ablate.device import resolve_device
from ablate.diffusion.conditional import ConditionalDiffusion, to_model_scale
from ablate.diffusion.samplers import Prediction, Sampling
from ablate.diffusion.schedules import NoiseSchedule
from ablate.errors import UserError
from ablate.methods.base import Batch
from ablate.methods.deeppet import DeepPETMethod, SinogramMethod
from ablate.methods.loop import TrainingLoop
from ablate.models.deeppet import DeepPET
from ablate.models.unet import UNetShape
from ablate.precision import Precision
from ablate.shared_cache import SharedCache

log = logging.getLogger(__name__)

Conditioning = Literal["r0", "r0+sinogram", "sinogram"]
ESTIMATOR_FORMAT = "ablate-deeppet-estimator/1"
#: x0 clip window of the sampler, in data units (PET is non-negative; full-dose ~[0, 1]).
CLIP_DATA = (0.0, 2.0)
#: Largest signal fraction gamma_T accepted at t = T, where sampling starts from N(0, I).
MAX_GAMMA_T = 1e-2


class EstimatorError(UserError):
    """The stage-1 estimator checkpoint is missing, unreadable or from other data."""


@dataclass(frozen=True)
class EstimatorTraining:
    """How stage 1 trains DeepPET: the estimator's own settings, and the trial's precision,
    device, batch size, loader workers and log interval."""

    width: int = 64
    steps: int = 300
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-5
    precision: Precision = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    loader_workers: int = 0
    log_every: int = 25

    def key_fields(self) -> dict[str, Any]:
        """The fields that change the trained estimator: the cache key's. The device, the
        loader's workers and the log interval change where, how fast or how loudly it is
        trained, not what (the batch order is a function of the seed and step alone)."""
        where = ("device", "loader_workers", "log_every")
        return {k: v for k, v in asdict(self).items() if k not in where}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(dataset: torch.utils.data.Dataset) -> dict[str, Any]:
    """What identifies the training data of stage 1.

    An on-disk dataset (``SliceDataset``: ``root`` + ``split``) is identified by its resolved
    path, the hash of its Parquet manifest and the split; any other dataset by a hash of the
    contents of every sample (its tensors, in order).
    """
    root, split = getattr(dataset, "root", None), getattr(dataset, "split", None)
    manifest = Path(root) / "manifest.parquet" if root is not None else None
    content = Path(root) / HASH_FILE if root is not None else None
    # a cross-validation fold's split: its subjects, so no fold reuses another's estimator
    fold = {"subjects": sorted(dataset.subjects)} if getattr(dataset, "refolded", False) else {}
    if content is not None and content.is_file() and manifest is not None:
        # a dataset with a known content hash (rebuilt or fetched per node): the same key on
        # every node, wherever the node keeps its copy
        return {
            "dataset_sha256": content.read_text().strip(),
            "manifest_sha256": _sha256_file(manifest),
            "split": str(split),
            **fold,
        }
    if manifest is not None and manifest.is_file():
        return {
            "root": str(Path(root).resolve()),
            "manifest_sha256": _sha256_file(manifest),
            "split": str(split),
            **fold,
        }
    digest = hashlib.sha256()
    for i in range(len(dataset)):  # type: ignore[arg-type]
        for name, value in sorted(dataset[i].items()):
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return {"content_sha256": digest.hexdigest(), "split": str(split)}


def estimator_key(fingerprint: dict[str, Any], seed: int, training: EstimatorTraining) -> str:
    """Content hash naming the cached estimator of (data, split, seed, stage-1 settings)."""
    blob = json.dumps(
        {"data": fingerprint, "seed": seed, "training": training.key_fields()}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def train_estimator(
    dataset: torch.utils.data.Dataset, seed: int, training: EstimatorTraining, image_size: int
) -> DeepPET:
    """Stage 1: a DeepPET row (sinogram -> spet, MSE) trained by the trial loop, its init and
    batch order seeded by ``seed``. The global RNG is left as it was, so stage 2 draws the
    same noise whether the estimator is trained here or loaded from the cache."""
    device = resolve_device(training.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        method = DeepPETMethod(image_size, width=training.width).to(device)
        loop = TrainingLoop(
            method=method,
            optimizers=method.configure_optimizers(training.lr, training.weight_decay),
            train_data=dataset,
            device=device,
            seed=seed,
            batch_size=training.batch_size,
            label="stage-1 DeepPET estimator",
            lr_setting="train.estimator.lr",
            precision=training.precision,
            loader_workers=training.loader_workers,
            log_every=training.log_every,
        )
        for step, losses in loop.train_until(training.steps):
            log.info("stage-1 DeepPET step %d/%d: mse %.4g", step, training.steps, losses["loss"])
    return method.net.eval().cpu()


def save_estimator(path: Path, net: DeepPET, meta: dict[str, Any]) -> None:
    """Write a stage-1 checkpoint atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({"format": ESTIMATOR_FORMAT, "state_dict": state, "meta": meta}, tmp)
    os.replace(tmp, path)


def _flat(meta: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_estimator(path: Path, net: DeepPET, expected: dict[str, Any]) -> None:
    """Load a stage-1 checkpoint into ``net``, checking it was trained on the expected data,
    split and seed (``expected`` holds the ``meta`` fields that must match)."""
    fix = "delete it to retrain, or point row.estimator_checkpoint at the right one"
    if not path.is_file():
        raise EstimatorError(
            f"PMDM expected the stage-1 DeepPET checkpoint {path}, which does not exist: "
            "train the estimator for this dataset/seed or remove row.estimator_checkpoint"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != ESTIMATOR_FORMAT:
            raise ValueError("not a DeepPET estimator checkpoint")
        net.load_state_dict(saved["state_dict"])
    except Exception as exc:
        raise EstimatorError(
            f"stage-1 DeepPET checkpoint {path} is unreadable or not a matching estimator "
            f"({exc.__class__.__name__}): {fix}"
        ) from None
    meta, want_flat = _flat(saved.get("meta", {})), _flat(expected)
    # the split first: the most common mix-up, and the shortest message
    for name in sorted(want_flat, key=lambda n: (n != "data.split", n)):
        want = want_flat[name]
        if meta.get(name) != want:
            raise EstimatorError(
                f"stage-1 DeepPET checkpoint {path} was trained with {name}={meta.get(name)!r} "
                f"but this PMDM trial needs {name}={want!r} (the estimator must come from the "
                f"same dataset, split and seed): {fix}"
            )


class ConditionalDDPM(SinogramMethod):
    """PMDM-PET (``estimator=True``) or Palette (``estimator=False``).

    Args:
        image_size: square image size H = W.
        estimator: condition on the frozen DeepPET estimate ``r0*`` (PMDM) or not (Palette).
        conditioning: with the estimator, ``"r0"`` or ``"r0+sinogram"``; without it, always
            ``"sinogram"``.
        unet: the denoising UNet's shape.
        schedule: the training noise schedule (T steps, linear).
        sampling: the sampler, its eta and its steps (T = the training schedule itself).
        estimator_training: stage-1 settings (part of the cache key).
        estimator_checkpoint: a stage-1 checkpoint to load instead of the cache.
        prediction / min_snr: see :class:`ConditionalDiffusion`.
    """

    stochastic = True

    def __init__(
        self,
        image_size: int,
        estimator: bool,
        conditioning: Conditioning,
        unet: UNetShape,
        schedule: NoiseSchedule,
        sampling: Sampling,
        estimator_training: EstimatorTraining | None = None,
        estimator_checkpoint: Path | None = None,
        prediction: Prediction = "eps",
        min_snr: float | None = None,
    ) -> None:
        super().__init__(image_size)
        if estimator == (conditioning == "sinogram"):
            raise ValueError(
                f"conditioning {conditioning!r} does not fit estimator={estimator}: PMDM "
                "conditions on 'r0' or 'r0+sinogram', Palette (no estimator) on 'sinogram'"
            )
        self.conditioning = conditioning
        if float(schedule.gammas[-1]) > MAX_GAMMA_T:
            # sampling starts from pure noise: a schedule that never gets there mismatches it
            raise ValueError(
                f"the {schedule.steps}-step schedule ends at signal fraction "
                f"{float(schedule.gammas[-1]):.3g} (> {MAX_GAMMA_T}), not at noise: "
                "raise diffusion.pmdm.beta_end or diffusion.pmdm.train_steps"
            )
        cond_channels = 2 if conditioning == "r0+sinogram" else 1
        self.unet = unet.build(1 + cond_channels, image_size, noise_embedding=True)
        self.diffusion = ConditionalDiffusion(
            self.unet,
            schedule,
            sampling,
            noise_level="discrete",
            objective="mse",
            clip=CLIP_DATA,
            condition_first=False,
            prediction=prediction,
            min_snr=min_snr,
        )
        self.estimator_training = estimator_training or EstimatorTraining()
        self.estimator_checkpoint = estimator_checkpoint
        self.estimator: DeepPET | None = None
        if estimator:
            self.estimator = DeepPET(width=self.estimator_training.width).requires_grad_(False)
        # Set by prepare() or restored with the trial checkpoint: refuse to run without it.
        self.register_buffer("estimator_ready", torch.tensor(not estimator))
        self._estimator_seen_ready = False
        #: Where the estimator came from and whether prepare() had to train it (reporting).
        self.estimator_path: Path | None = None
        self.estimator_trained = False

    # -- stage 1 ---------------------------------------------------------------------------

    def prepare(self, train_data: torch.utils.data.Dataset, cache: SharedCache, seed: int) -> None:
        """Load (or train once, through ``cache``) the frozen DeepPET estimator of this data
        and seed; the cache decides whether another trial or node has trained it already."""
        if self.estimator is None:
            return
        fingerprint = data_fingerprint(train_data)
        expected = {"data": fingerprint, "seed": seed}
        if self.estimator_checkpoint is not None:
            load_estimator(Path(self.estimator_checkpoint), self.estimator, expected)
            self.estimator_path, self.estimator_trained = Path(self.estimator_checkpoint), False
        else:
            training = self.estimator_training

            def build(path: Path) -> None:
                log.info("training the stage-1 DeepPET estimator -> %s", path)
                net = train_estimator(train_data, seed, training, self.image_size)
                save_estimator(path, net, {**expected, "training": training.key_fields()})

            name = f"deeppet-{estimator_key(fingerprint, seed, training)}.pt"
            path, trained = cache.fetch_or_build(name, build)
            load_estimator(path, self.estimator, expected)
            self.estimator_path, self.estimator_trained = path, trained
        self.estimator.eval()
        self.estimator_ready.fill_(True)

    def train(self, mode: bool = True) -> ConditionalDDPM:
        """Train the denoiser; the frozen estimator stays in eval mode (fixed BN statistics)."""
        super().train(mode)
        if self.estimator is not None:
            self.estimator.eval()
        return self

    # -- stage 2 ---------------------------------------------------------------------------

    def condition(self, batch: Batch) -> torch.Tensor:
        """The UNet's condition channels: ``2 r0* - 1`` and/or the resampled sinogram."""
        sino = self.sinogram_image(batch)
        if self.estimator is None:
            return sino
        # Checked once (reading a GPU flag syncs the host); the meta device (parameter/GMAC
        # counting) has no values to check.
        if not self._estimator_seen_ready and not self.estimator_ready.is_meta:
            if not bool(self.estimator_ready):
                raise UserError(
                    "PMDM's stage-1 estimator is not loaded: the training loop must call "
                    "method.prepare(train_data, cache, seed) before training or sampling"
                )
            self._estimator_seen_ready = True
        with torch.no_grad():
            r0 = to_model_scale(self.estimator(sino))
        return torch.cat([r0, sino], dim=1) if self.conditioning == "r0+sinogram" else r0

    def training_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """DDPM's simple loss: MSE between the true and predicted noise at a uniform step."""
        mse = self.diffusion.loss(batch["spet"], self.condition(batch))
        return {"loss": mse, "main": mse}

    @torch.no_grad()
    def reconstruct(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.diffusion.sample(self.condition(batch), generator)

    @torch.no_grad()
    def noise_level_diagnostics(
        self, batch: Batch, generator: torch.Generator
    ) -> list[tuple[float, torch.Tensor]]:
        cond = self.condition(batch)
        return [
            (g, self.diffusion.one_step_x0(batch["spet"], cond, g, generator))
            for g in self.diffusion.diagnostic_levels()
        ]

    def extra_repr(self) -> str:
        return f"conditioning={self.conditioning!r}, {self.diffusion!r}"


def required_keys(row: RowConfig) -> frozenset[str]:
    return ConditionalDDPM.required_keys


def build(trial: TrialConfig, image_size: int) -> ConditionalDDPM:
    row, model, diff, train = trial.row, trial.model, trial.diffusion.pmdm, trial.train
    assert isinstance(row, PMDMRow)
    estimator = row.uses_estimator
    return ConditionalDDPM(
        image_size,
        estimator=estimator,
        conditioning=row.conditioning if estimator else "sinogram",
        unet=UNetShape(
            model.pmdm.width,
            model.pmdm.mults,
            model.pmdm.res_blocks,
            model.pmdm.attn_res,
            model.dropout,
        ),
        schedule=NoiseSchedule.named(
            diff.schedule, diff.train_steps, diff.beta_start, diff.beta_end
        ),
        # no sample_steps: full T-step sampling, as the paper does
        sampling=Sampling(
            row.sample_steps or diff.train_steps,
            trial.diffusion.sampler,
            trial.diffusion.ddim_eta,
        ),
        estimator_training=EstimatorTraining(
            width=model.deeppet.width,
            steps=train.estimator.steps or train.steps,
            batch_size=train.batch_size,
            lr=train.estimator.lr,
            weight_decay=train.estimator.weight_decay,
            precision=train.precision,
            device=train.device,
            loader_workers=train.loader_workers,
            log_every=train.log_every,
        ),
        estimator_checkpoint=(
            Path(row.estimator_checkpoint) if row.estimator_checkpoint is not None else None
        ),
        prediction=diff.prediction,
        min_snr=diff.min_snr,
    )
