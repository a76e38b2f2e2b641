"""Row name -> method: validation, required batch keys and construction of a row's method.

Each method family lives in one module of ``ablate.methods`` that defines

- ``build(trial: TrialConfig, image_size: int) -> Method``, reading the trial's row and its
  own config sections (``model.<family>``, ...), and
- ``required_keys(row: RowConfig) -> frozenset[str]`` (batch keys, checked against the
  dataset before any training starts).

Which switches a row may set is not checked here: each method family has its own row type
(``ablate.config``), so a switch the method lacks is rejected when the config is read.

Modules are imported lazily, so a family's heavy imports cost nothing to rows that don't use it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
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
    if not hasattr(module, attr):
        raise UserError(f"method '{method}' is not available yet: {module.__name__} has no {attr}")
    return module


def required_keys(row: RowConfig) -> frozenset[str]:
    """Batch keys the row's method reads (see ``ablate.methods.base``)."""
    return frozenset(_module(row.method, "required_keys").required_keys(row))


def check_dataset(row_name: str, row: RowConfig, dataset_root: Path) -> None:
    """Raise :class:`UserError` unless the dataset at ``dataset_root`` has every key the
    row's method reads: the one check, run by the driver before a launch and by a trial."""
    from ablate.data.dataset import available_keys

    have = available_keys(dataset_root)
    missing = required_keys(row) - have
    if missing:
        raise UserError(
            f"row '{row_name}' needs dataset keys {sorted(missing)} but {dataset_root} has "
            f"only {sorted(have)}: use a dataset/preset that provides them"
        )


def build_method(trial: TrialConfig, image_size: int) -> Method:
    """The method of ``trial``'s row, built for ``image_size`` x ``image_size`` slices."""
    try:
        return _module(trial.row.method, "build").build(trial, image_size)
    except UserError as err:
        raise UserError(f"row '{trial.row_name}': {err}") from None
    except ValueError as err:
        raise UserError(
            f"row '{trial.row_name}': cannot build '{trial.row.method}' for "
            f"{image_size}x{image_size} images: {err}"
        ) from None
