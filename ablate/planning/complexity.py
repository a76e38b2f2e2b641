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
from dataclasses import dataclass
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
    10 times). Runs under ``torch.no_grad``.

    Pass a model and inputs on the ``meta`` device to count a paper-scale model at no cost.
    There, where outputs have shapes but no values, a submodule called again with inputs of
    the same shapes (a denoiser at each of 1000 sampling steps) is not run again: its cached
    output and MAC count are reused, which makes long samplers cheap to count.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal total
        total += _macs(module, inputs, output)

    def memoized(forward: Callable[..., Any]) -> Callable[..., Any]:
        cache: dict[Any, tuple[int, Any]] = {}

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal total
            key = _signature((args, kwargs))
            if key in cache:
                macs, out = cache[key]
                total += macs
                return out
            before = total
            out = forward(*args, **kwargs)
            cache[key] = (total - before, out)
            return out

        return wrapper

    on_meta = all(t.is_meta for t in (*modules.parameters(), *modules.buffers()))
    handles = [m.register_forward_hook(hook) for m in modules.modules() if isinstance(m, _COUNTED)]
    patched = [m for m in modules.modules() if on_meta and not isinstance(m, _COUNTED)]
    own_forward = {id(m): m.__dict__["forward"] for m in patched if "forward" in m.__dict__}
    for m in patched:
        m.forward = memoized(m.forward)
    try:
        with torch.no_grad():
            fn()
    finally:
        for handle in handles:
            handle.remove()
        for m in patched:
            if id(m) in own_forward:
                m.forward = own_forward[id(m)]
            else:
                del m.forward
    return total


def _signature(value: Any) -> Any:
    """A hashable key for a call's arguments on the meta device: tensor shapes, plain values,
    and the identity of anything else (a conservative key: it can only miss the cache)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device.type)
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_signature(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _signature(v)) for k, v in value.items()))
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return ("id", id(value))


#: Ablation files ``ablate count`` knows, each with the image size its paper counts at.
_TABLE_FILES = (("paper_table2.yaml", 128), ("pmdm_table1.yaml", 256))


def _known_rows() -> dict[str, tuple[Any, int, bool]]:
    """Row name -> (its TrialConfig, image size, counted by default), over the files present."""
    from ablate.config import load_experiment
    from ablate.shipped import search_spaces_dir
    from ablate.trials import row_trials

    known: dict[str, tuple[Any, int, bool]] = {}
    for index, (name, size) in enumerate(_TABLE_FILES):
        path = search_spaces_dir() / name
        if not path.is_file():
            continue
        exp = load_experiment(path)
        for name, trial in row_trials(exp).items():
            known.setdefault(name, (trial, size, index == 0))
    return known


def _rel(ours: float, paper: float | None) -> float | None:
    return None if paper is None else (ours - paper) / paper


def count_method(method: nn.Module, image_size: int) -> tuple[int, int, int]:
    """(thop parameters, total parameters, MACs of one full reconstruction of one image).

    The method is moved to the ``meta`` device (its noise schedules, plain tensors, stay on
    the CPU so samplers can read them), so even 100 SR3 steps cost no arithmetic.
    """
    params, total = count_params(method), count_params(method, "total")
    method = method.to("meta").eval()
    batch = {
        key: torch.zeros(shape, device="meta")
        for key, shape in method.input_shapes(image_size).items()
    }
    return params, total, count_macs(lambda: method.reconstruct(batch), method)


def count_rows(rows: list[str] | None = None) -> list[dict[str, Any]]:
    """Parameters and GMACs of ablation rows at paper scale, beside the papers' numbers.

    Rows come from ``search_spaces/paper_table2.yaml`` (at 128x128) and, when present,
    ``search_spaces/pmdm_table1.yaml`` (at 256x256), built with those files' settings (so
    SR3 is counted over ``diffusion.sr3.sample_steps`` steps and the IRM over
    ``diffusion.irm.sample_steps``). ``rows=None`` counts the Table-2 rows, the ones with
    paper numbers to compare against; PMDM rows are counted when named. Each entry has keys
    ``row, label, image_size, params_m, params_total_m, gmacs, paper_params_m,
    paper_gflops, params_rel_diff, gmacs_rel_diff`` (paper values and differences are None
    where a paper reports nothing). Paper 003's "BFLOPs" are GMACs.
    """
    from ablate.errors import UserError
    from ablate.methods.registry import build_method
    from ablate.paper import TABLE1, TABLE2

    known = _known_rows()
    wanted = [name for name, entry in known.items() if entry[2]] if rows is None else rows
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise UserError(
            f"unknown row(s) {', '.join(unknown)}: known rows are {', '.join(known) or 'none'}"
        )
    out = []
    for name in wanted:
        trial, size, _ = known[name]
        try:
            params, total, macs = count_method(build_method(trial, size), size)
        except (RuntimeError, NotImplementedError, UserError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(
                f"row '{name}' cannot be counted on the meta device: {reason}"
            ) from None
        paper = TABLE2.get(name) or TABLE1.get(name)
        paper_params = paper.params_m if paper else None
        paper_gflops = paper.gflops if paper else None
        out.append(
            {
                "row": name,
                "label": trial.row.label or (paper.label if paper else name),
                "image_size": size,
                "params_m": params / 1e6,
                "params_total_m": total / 1e6,
                "gmacs": macs / 1e9,
                "paper_params_m": paper_params,
                "paper_gflops": paper_gflops,
                "params_rel_diff": _rel(params / 1e6, paper_params),
                "gmacs_rel_diff": _rel(macs / 1e9, paper_gflops),
            }
        )
    return out


def training_batch(
    method: nn.Module, trial: Any, batch_size: int, image_size: int, device: str = "meta"
) -> dict[str, torch.Tensor]:
    """Zero tensors (``meta`` by default) for every key one training step of ``method`` reads,
    at ``batch_size`` images of ``image_size`` x ``image_size`` (see ``ablate.methods.base``;
    a sinogram is resampled to the image grid first, so its own size adds no MACs)."""
    channels = {
        "lpet": 1,
        "spet": 1,
        "sinogram": 1,
        "negatives": trial.loss.negatives,
        **{key: shape[1] for key, shape in method.input_shapes(image_size).items()},
    }
    if "lpet_nas" in channels:
        channels["spet_nas"] = channels["lpet_nas"]
    keys = set(method.required_keys) | set(method.input_shapes(image_size))
    missing = keys - channels.keys()
    if missing:
        raise ValueError(f"no stand-in shape for batch keys {sorted(missing)}")
    return {
        key: torch.zeros(batch_size, channels[key], image_size, image_size, device=device)
        for key in sorted(keys)
    }


@dataclass(frozen=True)
class TrainingCounts:
    """What one forward pass of a training step does (all networks, all loss terms).

    ``trainable_macs``: MACs of layers with trainable weights (their backward costs about
    twice the forward again); ``frozen_macs``: MACs of frozen layers (PMDM's stage-1
    estimator: forward only). ``activations`` / ``matmul_activations``: elements output by
    leaf modules / by convolution and linear layers, what autograd keeps for the backward
    (an upper bound: some outputs are freed or computed in place). ``calls``: leaf-module
    calls, a proxy for kernel launches."""

    trainable_macs: int
    frozen_macs: int
    activations: int
    matmul_activations: int
    calls: int

    @property
    def macs(self) -> int:
        return self.trainable_macs + self.frozen_macs

    def step_flops(self) -> int:
        """FLOPs of one training step: 2 FLOPs per MAC, forward + backward (2x the forward)
        for trainable layers, forward only for frozen ones."""
        return 2 * (3 * self.trainable_macs + self.frozen_macs)


def count_training(method: nn.Module, batch: dict[str, torch.Tensor]) -> TrainingCounts:
    """:class:`TrainingCounts` of ``method.training_losses(batch)``; on the ``meta`` device
    (model and batch) nothing is computed or allocated."""
    totals = {"trainable": 0, "frozen": 0, "activations": 0, "matmul": 0, "calls": 0}

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        totals["calls"] += 1
        if isinstance(output, torch.Tensor):
            totals["activations"] += output.numel()
        if isinstance(module, _COUNTED):
            trainable = any(p.requires_grad for p in module.parameters(recurse=False))
            totals["trainable" if trainable else "frozen"] += _macs(module, inputs, output)
            totals["matmul"] += output.numel()

    leaves = [m for m in method.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = method.training
    method.train()
    try:
        with torch.no_grad():
            method.training_losses(batch)
    finally:
        for handle in handles:
            handle.remove()
        method.train(was_training)
    return TrainingCounts(
        totals["trainable"],
        totals["frozen"],
        totals["activations"],
        totals["matmul"],
        totals["calls"],
    )
