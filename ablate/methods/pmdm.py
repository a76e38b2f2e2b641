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
settings): the trained estimator is cached under ``cache_dir`` as
``deeppet-<content hash>.pt`` and every later PMDM trial with the same key (a grid of PMDM
variants, a retried trial) loads it instead of retraining. A file lock serialises concurrent
trials that want the same estimator. A given ``estimator_checkpoint`` replaces the cache; it
must have been written by :func:`save_estimator` for the same data and seed.

Images are diffused on the ``2 x - 1`` scale (data ``[0, 1]`` -> ``[-1, 1]``); ``r0*`` is put
on the same scale, so the sampler transports ``r0*`` to the data distribution on one scale.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torch.utils.data

from ablate.config import PMDMRow, RowConfig, TrialConfig
from ablate.diffusion.samplers import Sampler, sample
from ablate.diffusion.schedules import NoiseSchedule
from ablate.errors import UserError
from ablate.methods.base import Batch
from ablate.methods.deeppet import SinogramMethod
from ablate.models.deeppet import DeepPET, resample_sinogram
from ablate.models.unet import UNet

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
    """How stage 1 trains DeepPET; every field is part of the cache key."""

    width: int = 64
    steps: int = 300
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-5
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def key_fields(self) -> dict[str, Any]:
        # The device changes where, not what, is trained: not part of the key.
        return {k: v for k, v in asdict(self).items() if k != "device"}


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
    if manifest is not None and manifest.is_file():
        return {
            "root": str(Path(root).resolve()),
            "manifest_sha256": _sha256_file(manifest),
            "split": str(split),
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


def _device(name: str) -> torch.device:
    use_cuda = name in ("auto", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if use_cuda else "cpu")


def train_estimator(
    dataset: torch.utils.data.Dataset, seed: int, training: EstimatorTraining, image_size: int
) -> DeepPET:
    """Stage 1: DeepPET on (sinogram -> spet) pairs with MSE; seeded init and batch order."""
    device = _device(training.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DeepPET(width=training.width).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=training.batch_size,
        shuffle=True,
        drop_last=len(dataset) >= training.batch_size,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(seed),
    )
    net.train()
    step = checked = 0
    finite = torch.ones((), dtype=torch.bool, device=device)  # read every 100 steps, not each
    while step < training.steps:
        for batch in loader:
            sino = batch["sinogram"].to(device, non_blocking=True)
            sino = resample_sinogram(sino, (image_size, image_size))
            loss = F.mse_loss(net(sino), batch["spet"].to(device, non_blocking=True))
            finite = finite & torch.isfinite(loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 100 == 0 or step == training.steps:
                if not bool(finite):
                    raise UserError(
                        "stage-1 DeepPET estimator: the loss became NaN/inf between steps "
                        f"{checked + 1} and {step}: lower train.estimator.lr or check the data"
                    )
                checked = step
                log.info("stage-1 DeepPET step %d/%d: mse %.4g", step, training.steps, loss.item())
            if step >= training.steps:
                break
    return net.eval().cpu()


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
        width / mults / res_blocks / attn_res / dropout: the denoising UNet.
        schedule: the training noise schedule (T steps, linear).
        sample_steps: None = full T-step ancestral sampling, else a respaced schedule.
        sampler / ddim_eta: the update rule over those steps (DDPM, or DDIM with its eta).
        estimator_training: stage-1 settings (part of the cache key).
        estimator_checkpoint: a stage-1 checkpoint to load instead of the cache.
    """

    stochastic = True

    def __init__(
        self,
        image_size: int,
        estimator: bool,
        conditioning: Conditioning,
        width: int = 64,
        mults: tuple[int, ...] = (1, 1, 2, 2, 4, 4),
        res_blocks: int = 2,
        attn_res: tuple[int, ...] = (16,),
        dropout: float = 0.0,
        schedule: NoiseSchedule | None = None,
        sample_steps: int | None = None,
        sampler: Sampler = "ddpm",
        ddim_eta: float = 0.0,
        estimator_training: EstimatorTraining | None = None,
        estimator_checkpoint: Path | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
    ) -> None:
        super().__init__(image_size, lr, weight_decay)
        if estimator == (conditioning == "sinogram"):
            raise ValueError(
                f"conditioning {conditioning!r} does not fit estimator={estimator}: PMDM "
                "conditions on 'r0' or 'r0+sinogram', Palette (no estimator) on 'sinogram'"
            )
        self.conditioning = conditioning
        self.schedule = schedule or NoiseSchedule.linear(1000, 1e-4, 2e-2)
        if float(self.schedule.gammas[-1]) > MAX_GAMMA_T:
            # sampling starts from pure noise: a schedule that never gets there mismatches it
            raise ValueError(
                f"the {self.schedule.steps}-step schedule ends at signal fraction "
                f"{float(self.schedule.gammas[-1]):.3g} (> {MAX_GAMMA_T}), not at noise: "
                "raise diffusion.pmdm.beta_end or diffusion.pmdm.train_steps"
            )
        if sample_steps is not None and not 1 <= sample_steps <= self.schedule.steps:
            raise ValueError(f"sample_steps must lie in 1..{self.schedule.steps}: {sample_steps}")
        self.sample_steps = sample_steps
        self.sampler = sampler
        self.ddim_eta = ddim_eta
        cond_channels = 2 if conditioning == "r0+sinogram" else 1
        self.unet = UNet(
            1 + cond_channels,
            1,
            base_width=width,
            channel_mults=mults,
            res_blocks=res_blocks,
            attn_res=attn_res,
            image_size=image_size,
            dropout=dropout,
            noise_embedding=True,
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

    def prepare(self, train_data: torch.utils.data.Dataset, cache_dir: Path, seed: int) -> None:
        """Load (or train once and cache) the frozen DeepPET estimator of this data and seed."""
        if self.estimator is None:
            return
        fingerprint = data_fingerprint(train_data)
        expected = {"data": fingerprint, "seed": seed}
        if self.estimator_checkpoint is not None:
            load_estimator(Path(self.estimator_checkpoint), self.estimator, expected)
            self.estimator_path, self.estimator_trained = Path(self.estimator_checkpoint), False
        else:
            training = self.estimator_training
            path = Path(cache_dir) / f"deeppet-{estimator_key(fingerprint, seed, training)}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # one trial trains, the others wait and load
                trained = not path.exists()
                if trained:
                    log.info("training the stage-1 DeepPET estimator -> %s", path)
                    net = train_estimator(train_data, seed, training, self.image_size)
                    meta = {**expected, "training": training.key_fields()}
                    save_estimator(path, net, meta)
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
                    "method.prepare(train_data, cache_dir, seed) before training or sampling"
                )
            self._estimator_seen_ready = True
        with torch.no_grad():
            r0 = 2.0 * self.estimator(sino) - 1.0
        return torch.cat([r0, sino], dim=1) if self.conditioning == "r0+sinogram" else r0

    def training_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """DDPM's simple loss: MSE between the true and predicted noise at a uniform step."""
        x0 = 2.0 * batch["spet"] - 1.0
        b = x0.shape[0]
        t = torch.randint(0, self.schedule.steps, (b,))
        gamma = self.schedule.gammas[t].to(x0, non_blocking=True)  # no host sync per step
        g = gamma.view(b, 1, 1, 1)
        noise = torch.randn_like(x0)
        x_t = g.sqrt() * x0 + (1.0 - g).sqrt() * noise
        pred = self.unet(torch.cat([x_t, self.condition(batch)], dim=1), gamma.sqrt())
        mse = F.mse_loss(pred, noise)
        return {"loss": mse, "main": mse}

    def sampling_schedule(self) -> NoiseSchedule:
        if self.sample_steps is None or self.sample_steps == self.schedule.steps:
            return self.schedule
        return self.schedule.respaced(self.sample_steps)

    @torch.no_grad()
    def reconstruct(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        cond = self.condition(batch)
        b = cond.shape[0]
        shape = (b, 1, self.image_size, self.image_size)
        lo, hi = CLIP_DATA

        def denoiser(x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
            return self.unet(torch.cat([x, cond], dim=1), level)

        x = sample(
            self.sampler,
            denoiser,
            shape,
            self.sampling_schedule(),
            eta=self.ddim_eta,
            device=cond.device,
            generator=generator,
            clip=(2.0 * lo - 1.0, 2.0 * hi - 1.0),
        )
        return (x + 1.0) / 2.0

    def extra_repr(self) -> str:
        eta = f", eta={self.ddim_eta}" if self.sampler == "ddim" else ""
        return (
            f"conditioning={self.conditioning!r}, T={self.schedule.steps}, "
            f"sampler={self.sampler!r}{eta}, "
            f"sample_steps={self.sample_steps or self.schedule.steps}"
        )


def required_keys(row: RowConfig) -> frozenset[str]:
    return ConditionalDDPM.required_keys


def build(trial: TrialConfig, image_size: int) -> ConditionalDDPM:
    row, model, diff, train = trial.row, trial.model, trial.diffusion, trial.train
    assert isinstance(row, PMDMRow)
    estimator = row.uses_estimator
    return ConditionalDDPM(
        image_size,
        estimator=estimator,
        conditioning=row.conditioning if estimator else "sinogram",
        width=model.pmdm.width,
        mults=model.pmdm.mults,
        res_blocks=model.pmdm.res_blocks,
        attn_res=model.pmdm.attn_res,
        dropout=model.dropout,
        schedule=NoiseSchedule.linear(
            diff.pmdm.train_steps, diff.pmdm.beta_start, diff.pmdm.beta_end
        ),
        sample_steps=row.sample_steps,
        sampler=diff.sampler,
        ddim_eta=diff.ddim_eta,
        estimator_training=EstimatorTraining(
            width=model.deeppet.width,
            steps=train.estimator.steps or train.steps,
            batch_size=train.batch_size,
            lr=train.estimator.lr,
            weight_decay=train.estimator.weight_decay,
            device=train.device,
        ),
        estimator_checkpoint=(
            Path(row.estimator_checkpoint) if row.estimator_checkpoint is not None else None
        ),
        lr=row.lr,
        weight_decay=row.weight_decay,
    )
