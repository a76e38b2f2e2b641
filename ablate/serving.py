"""The exported champion as an MLflow pyfunc model: what ``pyfunc.load_model``,
``mlflow models serve`` and ``ablate predict`` all run.

A model is the trial's checkpoint folder (``model.pt``, ``config.yaml``) plus ``serving.json``,
the contract of its input, written when the trial ends:

- ``input``: ``lpet`` (a low-dose slice stack ``[slices, H, W]``) or ``sinogram``
  (``[slices, angles, bins]``), in the training layout of :mod:`ablate.volumes`;
- ``input_shape`` and ``image_size`` (the output is ``[slices, image_size, image_size]``);
- ``stochastic`` and ``samples``: whether the row samples, and K, its AMS sample count;
- ``intensity``: the calibration of :mod:`ablate.intensity`;
- ``units``: the units of the training dataset (its provenance ``units``): a model trained in
  SUV (:data:`ablate.suv.SUV_UNITS`) takes and gives SUV, so ``ablate predict`` converts a
  DICOM/NIfTI input to SUV first.

The pyfunc takes a whole volume's stack in the input's own units (the intensity scale is
estimated from the stack, as training normalised the volume) and returns the reconstruction
in the same units. Params: ``samples`` (K averaged: AMS), ``scale`` (a known full-dose scale;
0 = estimate it), ``seed`` (of the sampler). This module imports neither Ray nor the training
loop, so a serving process loads only the method's networks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
import yaml

from ablate import intensity
from ablate.config import TrialConfig
from ablate.data.dataset import SliceDataset
from ablate.data.format import read_provenance
from ablate.data.guidance import nas_stack
from ablate.device import resolve_device
from ablate.methods.base import Method
from ablate.methods.registry import build_method

SPEC_FILE = "serving.json"
EXAMPLE_FILE = "input_example.npy"
#: The key of the checkpoint folder among the pyfunc's artifacts.
CHECKPOINT = "checkpoint"
#: Slices reconstructed per batch (times K for AMS).
BATCH_SLICES = 8
#: Packages the model imports (the project itself must be installed where it is served).
_REQUIREMENTS = ("mlflow", "torch", "numpy", "pyyaml", "pydantic", "pandas", "pyarrow", "scipy")


@dataclass(frozen=True)
class ServingSpec:
    """What a model takes and gives; see the module docstring."""

    row: str
    input: str
    input_shape: tuple[int, int]
    image_size: int
    stochastic: bool
    samples: int
    intensity: dict[str, Any]
    units: str = "unknown"  # a model exported before units were recorded

    @classmethod
    def read(cls, folder: Path) -> ServingSpec:
        return cls.from_dict(json.loads((Path(folder) / SPEC_FILE).read_text()))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ServingSpec:
        return cls(**{**raw, "input_shape": tuple(raw["input_shape"])})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "input_shape": list(self.input_shape)}


def write_spec(
    folder: Path,
    trial: TrialConfig,
    method: Method,
    dataset_root: Path,
    train_subjects: list[str] | None = None,
) -> None:
    """Write ``serving.json`` and a small input example (two test slices). The intensity
    calibration is measured on ``train_subjects`` when given (a fold's), else on the
    dataset's training split."""
    model_input = intensity.SINOGRAM if "sinogram" in method.required_keys else intensity.LOW_DOSE
    test = SliceDataset(dataset_root, "test", keys=[model_input])
    first = test[0][model_input]
    spec = ServingSpec(
        row=trial.row_name,
        input=model_input,
        input_shape=(int(first.shape[-2]), int(first.shape[-1])),
        image_size=test.image_size,
        stochastic=method.stochastic,
        samples=trial.diffusion.ams_samples if method.stochastic else 1,
        intensity=intensity.calibrate(dataset_root, model_input, among=train_subjects),
        units=str(read_provenance(dataset_root).get("units") or "unknown"),
    )
    (folder / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2))
    middle = range(len(test) // 2, min(len(test) // 2 + 2, len(test)))
    example = np.stack([test[i][model_input][0].numpy() for i in middle])
    np.save(folder / EXAMPLE_FILE, example.astype(np.float32))


def load_method(folder: Path, spec: ServingSpec, device: torch.device) -> Method:
    """The row's method with the checkpoint's weights, in eval mode on ``device``."""
    trial = TrialConfig.model_validate(yaml.safe_load((folder / "config.yaml").read_text()))
    method = build_method(trial, spec.image_size)
    state = torch.load(folder / "model.pt", weights_only=True, map_location="cpu")
    method.load_state_dict(state["model"])
    return method.to(device).eval()


@torch.inference_mode()
def reconstruct_stack(
    method: Method, stack: torch.Tensor, model_input: str, samples: int, seed: int
) -> torch.Tensor:
    """Reconstruct a normalised ``[slices, h, w]`` stack, slice by slice in batches; NAS
    neighbours come from the stack itself; K = ``samples`` draws are averaged (AMS)."""
    device = next(method.parameters()).device
    stack = stack.to(device)
    keys = set(method.required_keys)
    k = samples if method.stochastic else 1
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for start in range(0, stack.shape[0], BATCH_SLICES):
        idx = list(range(start, min(start + BATCH_SLICES, stack.shape[0])))
        batch = {model_input: stack[idx].unsqueeze(1)}
        if "lpet_nas" in keys:
            batch["lpet_nas"] = torch.stack([nas_stack(stack, i) for i in idx])
        batch = {key: v.repeat(k, *[1] * (v.dim() - 1)) for key, v in batch.items()}
        pred = method.reconstruct(batch, generator=generator).float()
        out.append(pred.reshape(k, len(idx), *pred.shape[1:]).mean(dim=0)[:, 0])
    return torch.cat(out).cpu()


class Reconstructor(mlflow.pyfunc.PythonModel):
    """The pyfunc: a low-dose (or sinogram) stack in, a reconstruction out, both in the
    input's units. Pickled by reference: the serving environment must have ``ablate``."""

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts[CHECKPOINT])
        self.spec = ServingSpec.read(folder)
        self.method = load_method(folder, self.spec, resolve_device("auto"))

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        params = {**default_params(self.spec), **(params or {})}
        stack = np.asarray(model_input, dtype=np.float32)  # [slices, ...input_shape]: schema
        divisor, multiplier = intensity.scales(stack, self.spec.intensity, params["scale"])
        out = reconstruct_stack(
            self.method,
            torch.from_numpy(stack / divisor),
            self.spec.input,
            int(params["samples"]),
            int(params["seed"]),
        )
        return (out.numpy() * multiplier).astype(np.float32)


class Ensemble(Reconstructor):
    """The pyfunc of a cross-validated study's k fold models (``ablate export``'s default
    for a study with ``data.folds``): each fold's model reconstructs the stack as its own
    export would (its own intensity calibration, measured on its training subjects), and the
    prediction is the mean of their outputs (nnU-Net's fold ensemble). The folds share the
    row, so they share the input contract; artifacts ``checkpoint_<fold>``."""

    def load_context(self, context: Any) -> None:
        folders = [Path(context.artifacts[k]) for k in sorted(context.artifacts)]
        device = resolve_device("auto")
        self.folds = []
        for folder in folders:
            single = Reconstructor()
            single.spec = ServingSpec.read(folder)
            single.method = load_method(folder, single.spec, device)
            self.folds.append(single)
        self.spec = self.folds[0].spec

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        outs = [fold.predict(context, model_input, params) for fold in self.folds]
        return np.mean(outs, axis=0).astype(np.float32)


def default_params(spec: ServingSpec) -> dict[str, Any]:
    return {"samples": spec.samples, "scale": 0.0, "seed": 0}


def _signature(spec: ServingSpec) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    size = spec.image_size
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *spec.input_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size, size))]),
        params=ParamSchema(
            [
                ParamSpec("samples", "long", spec.samples),
                ParamSpec("scale", "double", 0.0),
                ParamSpec("seed", "long", 0),
            ]
        ),
    )


def _pinned(package: str) -> str:
    return f"{package}=={version(package).split('+')[0]}"


def pyfunc_arguments(checkpoint: Path, folds: dict[int, Path] | None = None) -> dict[str, Any]:
    """Keyword arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` for a checkpoint
    folder holding ``serving.json``: model, artifacts, signature, input example, metadata.
    ``folds`` (fold -> checkpoint folder): the :class:`Ensemble` of those folds instead."""
    spec = ServingSpec.read(checkpoint)
    if folds:
        return {
            **pyfunc_arguments(checkpoint),
            "python_model": Ensemble(),
            "artifacts": {f"{CHECKPOINT}_{f}": str(path) for f, path in sorted(folds.items())},
            "metadata": {"ablate": spec.to_dict(), "folds": sorted(folds)},
        }
    return {
        "python_model": Reconstructor(),
        "artifacts": {CHECKPOINT: str(checkpoint)},
        "signature": _signature(spec),
        "input_example": (np.load(checkpoint / EXAMPLE_FILE), default_params(spec)),
        "pip_requirements": [_pinned(p) for p in _REQUIREMENTS],
        "metadata": {"ablate": spec.to_dict()},
    }
