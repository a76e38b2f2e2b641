"""Row name -> method: validation, required batch keys and construction of a row's method.

Each method family lives in one module of ``ablate.methods`` that defines

- ``build(trial: TrialConfig, image_size: int) -> Method``,
- ``required_keys(row: RowConfig) -> frozenset[str]`` (batch keys, checked against the
  dataset before any training starts), and optionally
- ``validate_row(row: RowConfig) -> None`` raising :class:`UserError` for switch sets it
  cannot build (default: every coarse-to-fine switch must be off).

Modules are imported lazily, so a family's heavy imports cost nothing to rows that don't use it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ablate.config import MethodName, RowConfig, TrialConfig
from ablate.errors import UserError
from ablate.methods.base import Method

#: Method name (``RowConfig.method``) -> module implementing it.
MODULES: dict[str, str] = {
    "sr3": "ablate.methods.sr3",
    "coarse_to_fine": "ablate.methods.coarse_to_fine",
    "deeppet": "ablate.methods.deeppet",
    "pmdm": "ablate.methods.pmdm",
    "palette": "ablate.methods.pmdm",  # Palette = PMDM without the estimator
    "cgan": "ablate.methods.gan_baselines",
    "pix2pix": "ablate.methods.gan_baselines",
    "vqvae": "ablate.methods.vqvae",
}

_SWITCHES = ("irm", "nas", "spectrum", "contrastive")


def _module(method: MethodName | str, attr: str) -> ModuleType:
    if method not in MODULES:
        raise UserError(f"unknown method '{method}': use one of {', '.join(MODULES)}")
    try:
        module = importlib.import_module(MODULES[method])
    except ModuleNotFoundError as err:
        if err.name != MODULES[method]:
            raise
        raise UserError(
            f"method '{method}' is not available in this install ({MODULES[method]} is missing)"
        ) from None
    if attr and not hasattr(module, attr):
        raise UserError(f"method '{method}' is not available yet: {module.__name__} has no {attr}")
    return module


def validate_row(row: RowConfig, name: str | None = None) -> None:
    """Raise :class:`UserError` if ``row`` asks for a combination its method cannot build.

    The message names the row when ``name`` is given (callers looping over rows may add it).
    """
    try:
        module = _module(row.method, "")
        check = getattr(module, "validate_row", None)
        if check is not None:
            check(row)
        else:
            on = [s for s in _SWITCHES if getattr(row, s)]
            if on:
                raise UserError(
                    f"method '{row.method}' has no {'/'.join(on)} switch: those belong to "
                    "method 'coarse_to_fine'; remove them from the row"
                )
    except UserError as err:
        if name is None:
            raise
        raise UserError(f"row '{name}': {err}") from None


def required_keys(row: RowConfig) -> frozenset[str]:
    """Batch keys the row's method reads (see ``ablate.methods.base``)."""
    return frozenset(_module(row.method, "required_keys").required_keys(row))


def build_method(trial: TrialConfig, image_size: int) -> Method:
    """The method of ``trial``'s row, built for ``image_size`` x ``image_size`` slices."""
    validate_row(trial.row, trial.row_name)
    try:
        return _module(trial.row.method, "build").build(trial, image_size)
    except UserError as err:
        raise UserError(f"row '{trial.row_name}': {err}") from None
    except ValueError as err:
        raise UserError(
            f"row '{trial.row_name}': cannot build '{trial.row.method}' for "
            f"{image_size}x{image_size} images: {err}"
        ) from None
