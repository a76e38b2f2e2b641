"""Parameter counts and multiply-accumulates, counted the way paper 003's table counts them.

Paper 003 reports "MParam" and "BFLOPs" as thop (pytorch-OpCounter) reports them: parameters
of convolution and linear layers (weights and biases; normalisation layers and free-standing
parameters excluded) and multiply-accumulates (MACs, which thop calls FLOPs) of convolutions
and linear layers only. We count the same things ourselves through forward hooks:

- convolution: ``output.numel() * in_channels / groups * prod(kernel_size)``;
- transposed convolution: ``input.numel() * out_channels / groups * prod(kernel_size)``;
- linear: ``output.numel() * in_features``;
- biases, normalisation, activations, element-wise ops and *self-attention matmuls*
  (``q @ k^T`` and ``attn @ v``, written as tensor ops, not modules) are not counted, as in
  thop; neither are convolutions called functionally (``F.conv2d``) rather than as modules.

MACs are counted while a callable runs, so a method's whole reconstruction (a coarse
prediction followed by 10 refinement steps, or 100 DDPM steps) is one number. Counting works
on the ``meta`` device, where tensors have shapes but no storage: a paper-scale model is
"run" in milliseconds without allocating or computing anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_COUNTED = (*_CONV, *_CONV_T, nn.Linear)


def count_params(model: nn.Module, convention: Literal["thop", "total"] = "thop") -> int:
    """Number of parameters of ``model``.

    ``thop``: trainable weights and biases of convolution (incl. transposed) and linear
    layers only, the paper's "MParam". ``total``: every parameter, trainable or not.
    Shared parameters are counted once.
    """
    if convention == "total":
        return sum(p.numel() for p in _unique(model.parameters()))
    if convention != "thop":
        raise ValueError(f"unknown convention '{convention}' (use 'thop' or 'total')")
    params = (
        p
        for m in model.modules()
        if isinstance(m, _COUNTED)
        for p in m.parameters(recurse=False)
        if p.requires_grad
    )
    return sum(p.numel() for p in _unique(params))


def _unique(params: Any) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for p in params:
        seen.setdefault(id(p), p)
    return list(seen.values())


def _macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    if isinstance(module, _CONV_T):
        per = module.out_channels // module.groups * math.prod(module.kernel_size)
        return inputs[0].numel() * per
    if isinstance(module, _CONV):
        per = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output.numel() * per
    return output.numel() * module.in_features


def count_macs(fn: Callable[[], Any], modules: nn.Module) -> int:
    """MACs of every convolution and linear layer inside ``modules`` while ``fn()`` runs.

    ``fn`` is typically ``lambda: method.reconstruct(batch)`` with a batch of one image; the
    count includes the batch size and every call (a layer used in 10 sampling steps counts
    10 times). Runs under ``torch.no_grad``; pass a model and inputs on the ``meta`` device to
    count a paper-scale model at no cost.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal total
        total += _macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in modules.modules() if isinstance(m, _COUNTED)]
    try:
        with torch.no_grad():
            fn()
    finally:
        for handle in handles:
            handle.remove()
    return total
