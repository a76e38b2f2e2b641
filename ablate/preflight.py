"""Checks a launch passes before it starts: every trial's networks can be built.

Keys and types are checked when the trials are resolved (:mod:`ablate.trials`); what only
the networks know (guide levels against the UNet multipliers, an image size the UNet cannot
halve often enough, a sampler asking for more steps than the schedule has, a PMDM schedule
that never reaches noise) is checked here by building each distinct trial's method on
PyTorch's ``meta`` device: shapes and constructor checks, no weights, no data, milliseconds
per row. It runs on the driver before the dataset is built, Ray starts or any MLflow run
exists, and a problem is one :class:`UserError` line naming the row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import torch

from ablate.config import DataConfig, TrialConfig
from ablate.errors import UserError


def image_size(data: DataConfig) -> int:
    """The slice size a dataset config yields, without building the dataset: the simulator
    preset's (with its overrides), or the size recorded in an existing dataset's manifest."""
    if data.path is not None:
        from ablate.data.format import read_manifest

        manifest = read_manifest(data.path)
        if manifest.empty:
            raise UserError(f"dataset {data.path} has no slices: rebuild or re-import it")
        return int(manifest["height"].iloc[0])
    from ablate.data.simulate import resolve_config

    return resolve_config(data.preset, data.overrides).image_size


def _network_key(trial: TrialConfig) -> str:
    """What a trial's networks depend on: everything but its seed (and the names)."""
    dumped = trial.model_dump(mode="json", exclude={"seed", "row_name", "experiment"})
    dumped["row"].pop("label", None)
    return json.dumps(dumped, sort_keys=True, default=str)


def check_networks(trials: Iterable[TrialConfig]) -> int:
    """Build the method of every distinct trial on the meta device; return how many were
    built. Raises a one-line :class:`UserError` naming the row of the first that fails."""
    from ablate.methods.registry import build_method

    sizes: dict[str, int] = {}
    seen: set[str] = set()
    for trial in trials:
        key = _network_key(trial)
        if key in seen:
            continue
        seen.add(key)
        data_key = trial.data.model_dump_json()
        if data_key not in sizes:
            sizes[data_key] = image_size(trial.data)
        try:
            with torch.device("meta"):
                build_method(trial, sizes[data_key])
        except UserError as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            prefix = f"row '{trial.row_name}'"
            raise UserError(
                message if message.startswith(prefix) else f"{prefix}: {message}"
            ) from None
        except (ValueError, RuntimeError, NotImplementedError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(
                f"row '{trial.row_name}' cannot be built with these settings: {reason}"
            ) from None
    return len(seen)
