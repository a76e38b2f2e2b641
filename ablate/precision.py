"""``train.precision`` as an autocast context: the one place mixed precision is decided.

Training steps, evaluation's sampling and PMDM's stage-1 estimator all enter this context,
so ``bf16`` means the same thing everywhere: bf16 autocast over forward passes and losses,
fp32 master weights.
"""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]


def autocast(precision: Precision, device: torch.device) -> torch.autocast:
    """bf16 autocast on ``device`` when ``precision`` asks for it, else a disabled one."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
