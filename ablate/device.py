"""Turning a ``device`` setting (``auto``, ``cpu``, ``cuda``) into a torch device."""

from __future__ import annotations

import torch

from ablate.errors import UserError


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """``auto`` picks CUDA when visible; asking for CUDA without a GPU is a one-line error
    naming ``setting`` (the config key or CLI flag the user should change)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{setting} is 'cuda' but no CUDA GPU is visible: use 'auto' or 'cpu'")
    return torch.device(name)
