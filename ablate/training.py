"""The training loop of one trial, independent of Ray: build, train N steps, save, restore.

Kept apart from the Ray trainable so it is testable (and benchmarkable) on its own. Loss
values stay on the device between log points (no host sync per step); at each log point
the buffered values are checked, and a NaN/inf names the row, the exact step and the term.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from ablate.complexity import count_macs, count_params
from ablate.config import TrialConfig
from ablate.data.dataset import SliceDataset, available_keys
from ablate.device import resolve_device
from ablate.errors import UserError
from ablate.methods.base import Batch, Method
from ablate.methods.registry import build_method

Split = str


class NonFiniteLoss(UserError):
    """A loss term became NaN/inf: the trial stops, naming row, step and term."""


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class TrainingRun:
    """A method, its optimisers and data, and how far training has got."""

    trial: TrialConfig
    method: Method
    optimizers: list[torch.optim.Optimizer]
    device: torch.device
    datasets: dict[Split, SliceDataset]
    step: int = 0
    trained_steps: int = 0
    previous_train_s: float = 0.0
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
        method.to(device)
        optimizers = method.configure_optimizers(
            trial.row.lr or trial.train.lr,
            trial.train.weight_decay if trial.row.weight_decay is None else trial.row.weight_decay,
        )
        return cls(trial, method, optimizers, device, datasets)

    def data(self, split: Split) -> SliceDataset:
        return self.datasets[split]

    def _next_batch(self) -> Batch:
        while True:
            if self._batches is None:
                generator = torch.Generator().manual_seed(self.trial.seed * 100_003 + self.step)
                loader = DataLoader(
                    self.datasets["train"],
                    batch_size=self.trial.train.batch_size,
                    shuffle=True,
                    drop_last=len(self.datasets["train"]) >= self.trial.train.batch_size,
                    generator=generator,
                    num_workers=self.trial.train.loader_workers,
                    pin_memory=self.device.type == "cuda",
                )
                self._batches = iter(loader)
            try:
                return to_device(next(self._batches), self.device)
            except StopIteration:
                self._batches = None

    def train_until(self, target_step: int) -> list[tuple[int, dict[str, float]]]:
        """Train up to ``target_step``; return the logged history ``[(step, {name: mean})]``."""
        self.method.train()
        log_every = self.trial.train.log_every
        history: list[tuple[int, dict[str, float]]] = []
        window: list[dict[str, torch.Tensor]] = []
        while self.step < target_step:
            window.append(self.method.training_step(self._next_batch(), self.optimizers))
            self.step += 1
            self.trained_steps += 1
            if self.step % log_every == 0 or self.step == target_step:
                history.append((self.step, self._summarise(window)))
                window = []
        return history

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
        }

    def load_state(self, saved: dict[str, Any]) -> None:
        self.method.load_state_dict(saved["model"])
        for opt, opt_state in zip(self.optimizers, saved["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        self.step = int(saved["step"])

    @torch.no_grad()
    def complexity(self) -> dict[str, float]:
        """Parameters (M, thop convention) and GMACs of one full inference of one image."""
        sample = self.datasets["test"][0]
        batch = to_device({k: v.unsqueeze(0) for k, v in sample.items()}, self.device)
        self.method.eval()
        macs = count_macs(lambda: self.method.reconstruct(batch), self.method)
        return {"params_m": count_params(self.method) / 1e6, "gmacs": macs / 1e9}

    def export_weights(self, folder: Path) -> None:
        """A standalone checkpoint: weights (``weights_only`` loadable) and the trial config."""
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"model": self.method.state_dict(), "step": self.step},
            folder / "model.pt",
        )
        (folder / "config.yaml").write_text(yaml.safe_dump(self.trial.model_dump(mode="json")))
