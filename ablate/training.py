"""The training loop of one trial, independent of Ray: build, train N steps, save, restore.

Kept apart from the Ray trainable so it is testable (and benchmarkable) on its own. Loss
values stay on the device between log points (no host sync per step); at each log point
the buffered values are checked, and a NaN/inf names the row, the exact step and the term.

The GPU fast paths are ``train`` switches, all off by default: bf16 autocast over the
forward and losses (fp32 master weights), channels_last, ``torch.compile`` of the networks
(eager fallback with a warning), fused Adam, and an EMA of the weights (SR3/Palette) that
evaluation and export use in place of the live weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from ablate.complexity import count_macs, count_params
from ablate.config import TrialConfig
from ablate.data.dataset import SliceDataset, available_keys
from ablate.device import resolve_device
from ablate.ema import WeightEMA
from ablate.errors import UserError
from ablate.methods.base import Batch, Method
from ablate.methods.registry import build_method
from ablate.serving import write_spec

Split = str


class NonFiniteLoss(UserError):
    """A loss term became NaN/inf: the trial stops, naming row, step and term."""


def to_device(batch: Batch, device: torch.device, channels_last: bool = False) -> Batch:
    def fmt(v: torch.Tensor) -> torch.memory_format:
        return torch.channels_last if channels_last and v.dim() == 4 else torch.preserve_format

    return {k: v.to(device, non_blocking=True, memory_format=fmt(v)) for k, v in batch.items()}


def autocast(trial: TrialConfig, device: torch.device) -> torch.autocast:
    """bf16 autocast when ``train.precision`` asks for it, else a disabled one."""
    bf16 = trial.train.precision == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def networks(method: Method) -> list[nn.Module]:
    """The called networks of a method: its parameterised children, looking through
    ``ModuleDict``/``ModuleList`` containers (which are never called themselves)."""
    found = []
    for child in method.children():
        if isinstance(child, (nn.ModuleDict, nn.ModuleList)):
            found += [m for m in child.children() if any(True for _ in m.parameters())]
        elif any(True for _ in child.parameters()):
            found.append(child)
    return found


def compile_networks(method: Method, mode: str) -> list[nn.Module]:
    """``torch.compile`` each network in place (state_dict keys unchanged); returns the
    compiled ones, none with a warning when compilation is unavailable."""
    compiled = []
    try:
        for net in networks(method):
            net.compile(mode=mode)
            compiled.append(net)
    except Exception as error:  # noqa: BLE001 - any compile failure means: run eager
        uncompile(compiled)
        warnings.warn(f"torch.compile failed, training eager: {error}", stacklevel=2)
        return []
    return compiled


def uncompile(nets: list[nn.Module]) -> None:
    for net in nets:
        net._compiled_call_impl = None  # what nn.Module.compile sets; None = eager forward


def fuse_adam(optimizers: list[torch.optim.Optimizer]) -> list[torch.optim.Optimizer]:
    """The same Adam/AdamW optimisers rebuilt with ``fused=True`` (one CUDA kernel per step)."""
    fused = []
    for opt in optimizers:
        if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
            skip = ("fused", "foreach")
            groups = [{k: v for k, v in g.items() if k not in skip} for g in opt.param_groups]
            opt = type(opt)(groups, fused=True)
        fused.append(opt)
    return fused


def place_and_optimise(
    method: Method, trial: TrialConfig, device: torch.device
) -> list[torch.optim.Optimizer]:
    """Move ``method`` to ``device`` (NHWC when ``train.channels_last``) and build its
    optimisers: the row's lr / weight decay over ``train``'s, fused Adam on CUDA if asked."""
    train = trial.train
    method.to(device)
    if train.channels_last:
        method.to(memory_format=torch.channels_last)
    optimizers = method.configure_optimizers(
        trial.row.lr or train.lr,
        train.weight_decay if trial.row.weight_decay is None else trial.row.weight_decay,
    )
    if train.fused_adam and device.type == "cuda":
        optimizers = fuse_adam(optimizers)
    return optimizers


class EpochShuffle(torch.utils.data.Sampler[int]):
    """Epoch ``e`` visits the items in ``randperm(n)`` seeded by ``(seed, e)``: the order
    depends on nothing else (not the loader's workers, not an interruption). ``seek(step)``
    starts mid-epoch where step ``step`` of an uninterrupted run would be. Indices are
    offset by ``e * n``: a :class:`SliceDataset` then draws epoch ``e``'s negatives."""

    def __init__(self, n: int, seed: int, batch_size: int, drop_last: bool) -> None:
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.steps_per_epoch = n // batch_size if drop_last else -(-n // batch_size)
        self.epoch, self.skip = 0, 0

    def seek(self, step: int) -> None:
        self.epoch, offset = divmod(step, self.steps_per_epoch)
        self.skip = offset * self.batch_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator)[self.skip :] + self.epoch * self.n
        self.epoch, self.skip = self.epoch + 1, 0
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.n - self.skip


@dataclass
class TrainingRun:
    """A method, its optimisers and data, and how far training has got."""

    trial: TrialConfig
    method: Method
    optimizers: list[torch.optim.Optimizer]
    device: torch.device
    datasets: dict[Split, SliceDataset]
    ema: WeightEMA | None = None
    compiled: list[nn.Module] = field(default_factory=list)
    step: int = 0
    trained_steps: int = 0
    _loader: DataLoader | None = field(default=None, repr=False)
    _batches: Iterator[Batch] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, trial: TrialConfig, dataset_root: Path, cache_dir: Path) -> TrainingRun:
        device = resolve_device(trial.train.device)
        have = available_keys(dataset_root)
        probe = SliceDataset(dataset_root, "train", keys=["spet"])
        method = build_method(trial, probe.image_size)
        missing = set(method.required_keys) - set(have)
        if missing:
            raise UserError(
                f"row '{trial.row_name}' needs dataset keys {sorted(missing)} but "
                f"{dataset_root} has only {sorted(have)}: use a dataset/preset that provides them"
            )
        # Negatives feed the contrastive *training* loss only: evaluation splits never need them
        # (and a small val/test split may have too few subjects to draw them from).
        keys = set(method.required_keys)
        datasets = {
            split: SliceDataset(
                dataset_root,
                split,
                keys=sorted(keys if split == "train" else keys - {"negatives"}),
                negatives=trial.loss.negatives if split == "train" and "negatives" in keys else 0,
                seed=trial.seed,
            )
            for split in ("train", "val", "test")
        }
        method.prepare(datasets["train"], cache_dir, trial.seed)
        train = trial.train
        optimizers = place_and_optimise(method, trial, device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        ema = WeightEMA(method, train.ema_decay) if train.ema_decay > 0 else None
        compiled = []
        if train.compile:  # the EMA copy samples in evaluation: compile it too
            for model in (method, *([] if ema is None else [ema.module])):
                compiled += compile_networks(model, train.compile_mode)
        return cls(trial, method, optimizers, device, datasets, ema, compiled)

    @property
    def eval_method(self) -> Method:
        """What evaluation and export use: the EMA weights when kept, else the live ones."""
        return self.method if self.ema is None else self.ema.module

    def data(self, split: Split) -> SliceDataset:
        return self.datasets[split]

    def _next_batch(self) -> Batch:
        """The next training batch on the device. One loader serves the whole run (its
        workers persist across epochs); the order of batches is a function of the seed and
        the step alone, so a restored run sees the batches the uninterrupted one would."""
        if self._loader is None:
            train, data = self.trial.train, self.datasets["train"]
            drop_last = len(data) >= train.batch_size
            sampler = EpochShuffle(len(data), self.trial.seed, train.batch_size, drop_last)
            sampler.seek(self.step)
            self._loader = DataLoader(
                data,
                batch_size=train.batch_size,
                sampler=sampler,
                drop_last=drop_last,
                num_workers=train.loader_workers,
                persistent_workers=train.loader_workers > 0,
                pin_memory=self.device.type == "cuda",
            )
        while True:
            if self._batches is None:
                self._batches = iter(self._loader)
            try:
                batch = next(self._batches)
                return to_device(batch, self.device, self.trial.train.channels_last)
            except StopIteration:
                self._batches = None

    def train_until(self, target_step: int) -> list[tuple[int, dict[str, float]]]:
        """Train up to ``target_step``; return the logged history ``[(step, {name: mean})]``."""
        self.method.train()
        log_every = self.trial.train.log_every
        history: list[tuple[int, dict[str, float]]] = []
        window: list[dict[str, torch.Tensor]] = []
        while self.step < target_step:
            window.append(self._training_step(self._next_batch()))
            if self.ema is not None:
                self.ema.update(self.method)
            self.step += 1
            self.trained_steps += 1
            if self.step % log_every == 0 or self.step == target_step:
                history.append((self.step, self._summarise(window)))
                window = []
        return history

    def _training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One step under the precision's autocast; a compiled step that fails on its first
        call (compilation is lazy) warns and falls back to eager for the rest of the run."""
        try:
            with autocast(self.trial, self.device):
                return self.method.training_step(batch, self.optimizers)
        except Exception as error:  # noqa: BLE001 - compile errors have no common base
            if not self.compiled or self.trained_steps:
                raise
            warnings.warn(f"torch.compile failed, training eager: {error}", stacklevel=2)
            uncompile(self.compiled)
            self.compiled = []
            return self._training_step(batch)

    def _summarise(self, window: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        names = list(window[0])
        values = torch.stack([torch.stack([w[n].float() for n in names]) for w in window]).cpu()
        bad = ~torch.isfinite(values)
        if bad.any():
            i, j = (int(x) for x in bad.nonzero()[0])
            step = self.step - len(window) + i + 1
            raise NonFiniteLoss(
                f"row '{self.trial.row_name}' seed {self.trial.seed}: loss term '{names[j]}' "
                f"is {values[i, j].item()} at step {step}: lower train.lr or check the data"
            )
        means = values.mean(dim=0)
        return {
            ("loss" if n == "loss" else f"loss/{n}"): float(means[k]) for k, n in enumerate(names)
        }

    def state(self) -> dict[str, Any]:
        return {
            "model": self.method.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "step": self.step,
            **({} if self.ema is None else {"ema": self.ema.state_dict()}),
        }

    def load_state(self, saved: dict[str, Any]) -> None:
        self.method.load_state_dict(saved["model"])
        for opt, opt_state in zip(self.optimizers, saved["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        if self.ema is not None and "ema" in saved:
            self.ema.load_state_dict(saved["ema"])
        self.step = int(saved["step"])

    @torch.no_grad()
    def complexity(self) -> dict[str, float]:
        """Parameters (M, thop convention) and GMACs of one full inference of one image."""
        sample = self.datasets["test"][0]
        batch = to_device({k: v.unsqueeze(0) for k, v in sample.items()}, self.device)
        self.method.eval()
        with torch.compiler.set_stance("force_eager"):  # hooks count eager layers only
            macs = count_macs(lambda: self.method.reconstruct(batch), self.method)
        return {"params_m": count_params(self.method) / 1e6, "gmacs": macs / 1e9}

    def export_weights(self, folder: Path) -> None:
        """A standalone checkpoint: weights (``weights_only`` loadable; the EMA ones when
        kept), the trial config and the serving contract (:mod:`ablate.serving`)."""
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"model": self.eval_method.state_dict(), "step": self.step},
            folder / "model.pt",
        )
        (folder / "config.yaml").write_text(yaml.safe_dump(self.trial.model_dump(mode="json")))
        write_spec(folder, self.trial, self.eval_method, self.datasets["train"].root)
