"""Export the best trial of a study, and run an exported model on a volume.

``export``: ranks completed trials by a metric, registers the best (alias ``champion``)
and the runner-up (``challenger``) in the MLflow model registry, and writes a standalone
folder: ``model.pt`` (``torch.load(weights_only=True)``), ``config.yaml`` (the trial's
full config), ``metrics.json`` and ``provenance.json`` (how its dataset was made).

``predict``: rebuilds the row's method from ``config.yaml`` and runs it slice by slice on
a NIfTI/.npy low-dose volume, so an exported model needs none of the training code paths.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from mlflow.artifacts import download_artifacts

from ablate import tracking
from ablate.config import TrialConfig
from ablate.data.guidance import nas_stack
from ablate.errors import UserError
from ablate.methods.registry import build_method
from ablate.volumes import as_slices, read_array

CHECKPOINT_ARTIFACT = "checkpoint"


@dataclass
class ExportResult:
    model_name: str
    versions: dict[str, str]
    run_ids: dict[str, str]
    folder: Path
    value: float


def _ranked_runs(tracking_uri: str, experiment: str, metric: str, mode: str) -> list:
    mlf = tracking.client(tracking_uri)
    exp = mlf.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"no MLflow experiment '{experiment}' in {tracking_uri}: check the name")
    order = "DESC" if mode == "max" else "ASC"
    runs = mlf.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{tracking.TAG_STATUS}` = 'completed' and metrics.`{metric}` > -1e300",
        order_by=[f"metrics.`{metric}` {order}"],
        max_results=2,
    )
    if not runs:
        raise UserError(
            f"experiment '{experiment}' has no completed trial with metric '{metric}': "
            "run it first or pick another --metric"
        )
    return list(runs)


def _search_objectives(tracking_uri: str, experiment: str) -> list[list[tuple[str, str]]]:
    """The objectives of each search launch of a study (``[[("val_psnr", "max")], ...]``)."""
    mlf = tracking.client(tracking_uri)
    exp = mlf.get_experiment_by_name(experiment)
    if exp is None:
        return []
    parents = mlf.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{tracking.TAG_KIND}` = 'search'",
        order_by=["start_time ASC"],
        max_results=1000,
    )
    found = [
        tracking.parse_objectives(r.data.tags.get(tracking.TAG_SEARCH_OBJECTIVES)) for r in parents
    ]
    return [objectives for objectives in found if objectives]


def ranking(
    tracking_uri: str, experiment: str, metric: str | None, mode: str | None
) -> tuple[str, str]:
    """The metric and direction that rank a study's trials for export.

    Without ``metric``: PSNR, unless the study holds a multi-objective search, which has no
    single best trial: then the user must say which objective ranks. Without ``mode``: the
    metric's direction in the study's search, else max (min for NMSE/NRMSE/SD)."""
    searches = _search_objectives(tracking_uri, experiment)
    if metric is None:
        multi = [objectives for objectives in searches if len(objectives) > 1]
        if multi:
            names = [m.removeprefix("val_") for m, _ in multi[-1]]
            listed = ", ".join(f"{n} ({d})" for n, (_, d) in zip(names, multi[-1], strict=True))
            raise UserError(
                f"experiment '{experiment}' holds a multi-objective search ({listed}): "
                f"pass --metric to say which objective ranks the trials, "
                f"e.g. --metric {names[0]} or --metric {names[1]}"
            )
        metric = "psnr"
    if mode is None:
        directions = {m.removeprefix("val_"): d for objs in searches for m, d in objs}
        lower = metric == "sd" or metric.endswith(("nmse", "nrmse")) or metric.startswith("train_s")
        mode = directions.get(metric, "min" if lower else "max")
    return metric, mode


def export_best(
    tracking_uri: str,
    experiment: str,
    metric: str,
    mode: str,
    model_name: str | None,
    out: Path,
) -> ExportResult:
    """Register the best (and second-best) trial's checkpoint and write a standalone folder."""
    runs = _ranked_runs(tracking_uri, experiment, metric, mode)
    model_name = model_name or f"{experiment}-best"
    mlf = tracking.client(tracking_uri)
    if mlf.search_registered_models(filter_string=f"name = '{model_name}'") == []:
        mlf.create_registered_model(model_name)
    versions, run_ids = {}, {}
    for alias, run in zip(("champion", "challenger"), runs, strict=False):
        source = f"{run.info.artifact_uri}/{CHECKPOINT_ARTIFACT}"
        version = mlf.create_model_version(
            model_name, source, run_id=run.info.run_id, tags={metric: str(run.data.metrics[metric])}
        )
        mlf.set_registered_model_alias(model_name, alias, version.version)
        versions[alias] = version.version
        run_ids[alias] = run.info.run_id
    best = runs[0]
    if out.exists():
        shutil.rmtree(out)
    local = Path(
        download_artifacts(
            run_id=best.info.run_id, artifact_path=CHECKPOINT_ARTIFACT, tracking_uri=tracking_uri
        )
    )
    shutil.copytree(local, out)
    (out / "metrics.json").write_text(json.dumps(best.data.metrics, indent=2, sort_keys=True))
    dataset = _parent_dataset(tracking_uri, best)
    provenance = Path(dataset) / "provenance.json" if dataset else None
    if provenance is not None and provenance.is_file():
        shutil.copy(provenance, out / "provenance.json")
    return ExportResult(model_name, versions, run_ids, out, float(best.data.metrics[metric]))


def _parent_dataset(tracking_uri: str, run) -> str | None:
    parent = run.data.tags.get(tracking.TAG_PARENT)
    if not parent:
        return None
    return tracking.client(tracking_uri).get_run(parent).data.params.get("dataset")


def resolve_model(model: str, tracking_uri: str) -> Path:
    """A local folder for ``model``: a folder path, or a ``models:/NAME@alias`` / ``runs:/`` URI."""
    path = Path(model)
    if path.is_dir():
        folder = path
    elif "://" in model or model.startswith(("models:/", "runs:/")):
        try:
            folder = Path(download_artifacts(artifact_uri=model, tracking_uri=tracking_uri))
        except Exception as err:  # noqa: BLE001 - any registry failure means "not found"
            raise UserError(f"cannot load model '{model}': {str(err).splitlines()[0]}") from None
    else:
        raise UserError(f"model '{model}' is neither a folder nor a models:/ or runs:/ URI")
    if not (folder / "model.pt").is_file() or not (folder / "config.yaml").is_file():
        raise UserError(f"{folder} has no model.pt + config.yaml: export the model again")
    return folder


def load_exported(folder: Path, image_size: int) -> tuple[torch.nn.Module, TrialConfig]:
    trial = TrialConfig.model_validate(yaml.safe_load((folder / "config.yaml").read_text()))
    method = build_method(trial, image_size)
    state = torch.load(folder / "model.pt", weights_only=True, map_location="cpu")
    method.load_state_dict(state["model"])
    return method.eval(), trial


@torch.no_grad()
def predict_volume(
    model: str,
    input_path: Path,
    output_path: Path,
    tracking_uri: str,
    samples: int = 1,
    scale: float | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """Reconstruct every slice of a low-dose volume; ``samples`` > 1 averages K samples (AMS).

    Intensities are divided by ``scale`` before the model and multiplied back after it;
    by default the 99.9th percentile of the input, the simulator's normalisation rule
    applied to the only volume available at inference.
    """
    array, kind = read_array(input_path)
    slices = as_slices(array, kind).float()
    if slices.shape[-1] != slices.shape[-2]:
        raise UserError(f"{input_path}: slices are {tuple(slices.shape[-2:])}, expected square")
    scale = scale or float(np.percentile(array, 99.9)) or 1.0
    method, _ = load_exported(resolve_model(model, tracking_uri), slices.shape[-1])
    volume = slices[:, 0] / scale
    keys = set(method.required_keys)
    k = samples if method.stochastic else 1
    generator = torch.Generator().manual_seed(0)
    out = []
    for start in range(0, volume.shape[0], batch_size):
        idx = range(start, min(start + batch_size, volume.shape[0]))
        batch = {"lpet": volume[list(idx)].unsqueeze(1)}
        if "lpet_nas" in keys:
            batch["lpet_nas"] = torch.stack([nas_stack(volume, i) for i in idx])
        batch = {key: v.repeat(k, *[1] * (v.dim() - 1)) for key, v in batch.items()}
        pred = method.reconstruct(batch, generator=generator)
        out.append(pred.reshape(k, len(idx), *pred.shape[1:]).mean(dim=0)[:, 0])
    result = (torch.cat(out) * scale).numpy()
    _write_like(result, kind, input_path, output_path)
    return {"slices": float(result.shape[0]), "scale": scale, "samples": float(k)}


def _write_like(volume: np.ndarray, kind: str, input_path: Path, output_path: Path) -> None:
    """Write in the input's layout: .npy slices-first, NIfTI slices-last with its affine."""
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if output_path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        affine = nib.load(input_path).affine if kind == "nifti" else np.eye(4)
        nib.save(
            nib.Nifti1Image(np.moveaxis(volume, 0, -1).astype(np.float32), affine), output_path
        )
    else:
        np.save(output_path, volume.astype(np.float32))
