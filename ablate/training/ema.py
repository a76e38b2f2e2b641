"""An exponential moving average of a model's weights (SR3/Palette evaluate with one).

``torch.optim.swa_utils.AveragedModel`` tests a device counter on every update (one host
sync per training step on a GPU); this one is a single fused ``lerp`` over all floating
tensors (swa_utils' public ``get_ema_multi_avg_fn``), queued on the device like the
optimiser step.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WeightEMA:
    """``ema = decay * ema + (1 - decay) * live`` for every floating parameter and buffer;
    other buffers (flags, counters) are copied. Starts as a copy of ``model``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1): {decay}")
        self.decay = decay
        self._lerp = get_ema_multi_avg_fn(decay)  # ema.lerp_(live, 1 - decay), fused
        self.module = copy.deepcopy(model).requires_grad_(False)

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        return [*model.parameters(), *model.buffers()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        pairs = list(zip(self._tensors(self.module), self._tensors(model), strict=True))
        floats = [(e, x) for e, x in pairs if e.is_floating_point()]
        if floats:
            averaged, live = (list(t) for t in zip(*floats, strict=True))
            self._lerp(averaged, live, None)
        for e, x in pairs:
            if not e.is_floating_point():
                e.copy_(x)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)
