"""The step loop: trains a method on one dataset for N steps, without Ray or evaluation.

A trial (:class:`ablate.training.trial.TrainingRun`) and PMDM's stage-1 estimator both train
through :class:`TrainingLoop`, so batch order, precision, batch placement and the report of
a NaN loss are one code path. Loss values stay on the device between log points (no host
sync per step); at each log point the buffered values are checked, and a NaN/inf names the
run, the exact step and the term.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.utils.data
from torch.utils.data import DataLoader

from ablate.errors import UserError
from ablate.methods.base import Batch, Method
from ablate.precision import Precision, autocast


class NonFiniteLoss(UserError):
    """A loss term became NaN/inf: training stops, naming the run, step and term."""


def to_device(batch: Batch, device: torch.device, channels_last: bool = False) -> Batch:
    def fmt(v: torch.Tensor) -> torch.memory_format:
        return torch.channels_last if channels_last and v.dim() == 4 else torch.preserve_format

    return {k: v.to(device, non_blocking=True, memory_format=fmt(v)) for k, v in batch.items()}


class EpochShuffle(torch.utils.data.Sampler[int]):
    """Epoch ``e`` visits the items in ``randperm(n)`` seeded by ``(seed, e)``: the order
    depends on nothing else (not the loader's workers, not an interruption). ``seek(step)``
    starts mid-epoch where step ``step`` of an uninterrupted run would be. Indices are
    offset by ``e * n``: a :class:`~ablate.data.dataset.SliceDataset` then draws epoch
    ``e``'s negatives."""

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


@dataclass(kw_only=True)
class TrainingLoop:
    """A method, its optimisers and training data, and how far training has got.

    ``train_data[i + e * n]`` must be item ``i`` (``n = len(train_data)``) for any epoch
    ``e``: :class:`EpochShuffle` passes the epoch in the index.
    """

    method: Method
    optimizers: list[torch.optim.Optimizer]
    train_data: torch.utils.data.Dataset
    device: torch.device
    seed: int
    batch_size: int
    #: Who a NaN report names, e.g. ``row 'full' seed 0``.
    label: str
    #: The setting a NaN report tells the user to lower.
    lr_setting: str = "train.lr"
    precision: Precision = "fp32"
    loader_workers: int = 0
    channels_last: bool = False
    log_every: int = 25
    step: int = 0
    #: Steps trained by this process (``step`` also counts those restored from a checkpoint).
    trained_steps: int = 0
    _loader: DataLoader | None = field(default=None, init=False, repr=False)
    _batches: Iterator[Batch] | None = field(default=None, init=False, repr=False)

    def _next_batch(self) -> Batch:
        """The next training batch on the device. One loader serves the whole run (its
        workers persist across epochs); the order of batches is a function of the seed and
        the step alone, so a restored run sees the batches the uninterrupted one would."""
        if self._loader is None:
            drop_last = len(self.train_data) >= self.batch_size  # type: ignore[arg-type]
            sampler = EpochShuffle(
                len(self.train_data),  # type: ignore[arg-type]
                self.seed,
                self.batch_size,
                drop_last,
            )
            sampler.seek(self.step)
            self._loader = DataLoader(
                self.train_data,
                batch_size=self.batch_size,
                sampler=sampler,
                drop_last=drop_last,
                num_workers=self.loader_workers,
                persistent_workers=self.loader_workers > 0,
                pin_memory=self.device.type == "cuda",
            )
        while True:
            if self._batches is None:
                self._batches = iter(self._loader)
            try:
                return to_device(next(self._batches), self.device, self.channels_last)
            except StopIteration:
                self._batches = None

    def train_until(self, target_step: int) -> list[tuple[int, dict[str, float]]]:
        """Train up to ``target_step``; return the logged history ``[(step, {name: mean})]``."""
        self.method.train()
        history: list[tuple[int, dict[str, float]]] = []
        window: list[dict[str, torch.Tensor]] = []
        while self.step < target_step:
            window.append(self._training_step(self._next_batch()))
            self.step += 1
            self.trained_steps += 1
            if self.step % self.log_every == 0 or self.step == target_step:
                history.append((self.step, self._summarise(window)))
                window = []
        return history

    def _training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One optimisation step under the precision's autocast."""
        with autocast(self.precision, self.device):
            return self.method.training_step(batch, self.optimizers)

    def _summarise(self, window: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        names = list(window[0])
        values = torch.stack([torch.stack([w[n].float() for n in names]) for w in window]).cpu()
        bad = ~torch.isfinite(values)
        if bad.any():
            i, j = (int(x) for x in bad.nonzero()[0])
            step = self.step - len(window) + i + 1
            raise NonFiniteLoss(
                f"{self.label}: loss term '{names[j]}' is {values[i, j].item()} at step "
                f"{step}: lower {self.lr_setting} or check the data"
            )
        means = values.mean(dim=0)
        return {
            ("loss" if n == "loss" else f"loss/{n}"): float(means[k]) for k, n in enumerate(names)
        }
