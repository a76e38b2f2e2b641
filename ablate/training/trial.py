"""One trial, independent of Ray: build its method and data, train N steps, save, restore.

Kept apart from the Ray trainable so it is testable (and benchmarkable) on its own. The
steps themselves run in :class:`ablate.methods.loop.TrainingLoop` (the loop PMDM's stage 1 uses
too); a :class:`TrainingRun` adds what only a trial has: its splits, the settings it
resolves from the trial config, checkpoint state, complexity and export.

The GPU fast paths are ``train`` switches, all off by default: bf16 autocast over the
forward and losses (fp32 master weights), channels_last, ``torch.compile`` of the networks
(eager fallback with a warning), fused Adam, and an EMA of the weights (SR3/Palette) that
evaluation and export use in place of the live weights.
"""

from __future__ import annotations

import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ablate.config import TrialConfig
from ablate.data.dataset import SliceDataset
from ablate.data.folds import trial_splits
from ablate.device import resolve_device
from ablate.errors import UserError
from ablate.methods.base import Batch, Method
from ablate.methods.loop import TrainingLoop, to_device
from ablate.methods.registry import build_method, check_dataset
from ablate.planning.complexity import count_macs, count_params
from ablate.serving import write_spec
from ablate.shared_cache import SharedCache
from ablate.training.ema import WeightEMA

Split = str


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
    """``torch.compile`` each network's forward; returns the compiled networks, none (with a
    warning) when compilation is unavailable.

    The compiled forward is bound to the network as an instance attribute over its class's
    ``forward``: the module tree and the state_dict keys stay unchanged (a ``torch.compile``
    wrapper module would prefix them), a deep copy rebinds to the copy, and :func:`uncompile`
    only has to remove the attribute. All of it is public torch; ``nn.Module.compile`` has no
    public way back to eager.
    """
    nets = networks(method)
    try:
        forwards = [torch.compile(type(net).forward, mode=mode) for net in nets]
    except Exception as error:  # noqa: BLE001 - any compile failure means: run eager
        warnings.warn(f"torch.compile failed, training eager: {error}", stacklevel=2)
        return []
    for net, forward in zip(nets, forwards, strict=True):
        net.forward = types.MethodType(forward, net)
    return nets


def uncompile(nets: list[nn.Module]) -> None:
    """Back to the eager forward of each network's class."""
    for net in nets:
        del net.forward


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


def optimiser_settings(trial: TrialConfig) -> tuple[float, float]:
    """The (lr, weight decay) a trial trains with: the row's where it sets them, else
    ``train``'s (Table 1's rows train with different settings: DeepPET weight decay 1e-5,
    PMDM lr 3e-5, pix2pix lr 2e-4). Methods use what they are given."""
    row, train = trial.row, trial.train
    return (
        train.lr if row.lr is None else row.lr,
        train.weight_decay if row.weight_decay is None else row.weight_decay,
    )


def place_and_optimise(
    method: Method, trial: TrialConfig, device: torch.device
) -> list[torch.optim.Optimizer]:
    """Move ``method`` to ``device`` (NHWC when ``train.channels_last``) and build its
    optimisers with :func:`optimiser_settings`, fused Adam on CUDA if asked."""
    train = trial.train
    method.to(device)
    if train.channels_last:
        method.to(memory_format=torch.channels_last)
    optimizers = method.configure_optimizers(*optimiser_settings(trial))
    if train.fused_adam and device.type == "cuda":
        optimizers = fuse_adam(optimizers)
    return optimizers


@dataclass(kw_only=True)
class TrainingRun(TrainingLoop):
    """A trial's training loop, with its splits, EMA and compiled networks."""

    trial: TrialConfig
    datasets: dict[Split, SliceDataset]
    ema: WeightEMA | None = None
    compiled: list[nn.Module] = field(default_factory=list)

    @classmethod
    def build(
        cls, trial: TrialConfig, dataset_root: Path, cache_dir: Path, fold_hash: str = ""
    ) -> TrainingRun:
        """The trial's run on ``dataset_root``: with ``data.folds`` its splits are its fold's
        (test: the fold's subjects; train and val: the other folds'), checked against the
        launch's ``fold_hash``."""
        device = resolve_device(trial.train.device)
        check_dataset(trial.row_name, trial.row, dataset_root)
        splits = trial_splits(trial.data, trial.fold, dataset_root, fold_hash)
        probe = SliceDataset(dataset_root, "train", keys=["spet"], splits=splits)
        method = build_method(trial, probe.image_size)
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
                splits=splits,
            )
            for split in ("train", "val", "test")
        }
        try:
            method.prepare(datasets["train"], SharedCache(cache_dir), trial.seed)
        except UserError as err:  # e.g. PMDM's stage 1: say which trial it was for
            raise type(err)(f"row '{trial.row_name}' seed {trial.seed}: {err}") from None
        train = trial.train
        optimizers = place_and_optimise(method, trial, device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        ema = WeightEMA(method, train.ema_decay) if train.ema_decay > 0 else None
        compiled = []
        if train.compile:  # the EMA copy samples in evaluation: compile it too
            for model in (method, *([] if ema is None else [ema.module])):
                compiled += compile_networks(model, train.compile_mode)
        return cls(
            method=method,
            optimizers=optimizers,
            train_data=datasets["train"],
            device=device,
            seed=trial.seed,
            batch_size=train.batch_size,
            label=f"row '{trial.row_name}' seed {trial.seed}",
            precision=train.precision,
            loader_workers=train.loader_workers,
            channels_last=train.channels_last,
            log_every=train.log_every,
            trial=trial,
            datasets=datasets,
            ema=ema,
            compiled=compiled,
        )

    @property
    def eval_method(self) -> Method:
        """What evaluation and export use: the EMA weights when kept, else the live ones."""
        return self.method if self.ema is None else self.ema.module

    def data(self, split: Split) -> SliceDataset:
        return self.datasets[split]

    def _training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The loop's step, then the EMA update; a compiled step that fails on its first
        call (compilation is lazy) warns and falls back to eager for the rest of the run."""
        try:
            losses = super()._training_step(batch)
        except Exception as error:  # noqa: BLE001 - compile errors have no common base
            if not self.compiled or self.trained_steps:
                raise
            warnings.warn(f"torch.compile failed, training eager: {error}", stacklevel=2)
            uncompile(self.compiled)
            self.compiled = []
            losses = super()._training_step(batch)
        if self.ema is not None:
            self.ema.update(self.method)
        return losses

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
        train = self.datasets["train"]
        # a fold's own training subjects calibrate its serving (never its test subjects)
        write_spec(folder, self.trial, self.eval_method, train.root, train.subjects)
