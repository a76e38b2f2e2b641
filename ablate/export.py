"""Export the best trial of a study: a registered MLflow pyfunc model and a standalone folder.

1. **Rank** the completed trials of one dataset of an experiment (or of one launch, or one
   row) by a metric: a study holding trials on several datasets needs ``--data`` to say
   which, and the registered model and its versions are tagged with that dataset's name and
   content hash (a model name never holds two datasets' models).
2. **Log** each of the best two trials' checkpoints as an MLflow pyfunc model
   (:mod:`ablate.serving`) linked to its run, once: a run that already holds one reuses it.
3. **Register** them as versions of ``model_name`` with aliases ``champion`` (best) and
   ``challenger`` (runner-up). A version is created only for a logged model not yet
   registered under that name, and an alias moves only when the ranking changed: exporting
   the same best run again adds no version and moves no alias.
4. **Write** the standalone folder: the champion's MLflow model (``MLmodel``,
   ``python_model.pkl``, ``artifacts/``; ``mlflow.pyfunc.load_model(folder)`` works on it)
   plus ``model.pt`` (``torch.load(weights_only=True)``), ``config.yaml``, ``serving.json``,
   ``metrics.json``, ``provenance.json`` (how its dataset was made) and :data:`EXPORT_FILE`,
   which says what the folder is and lists every file in it.

Nothing the user made is ever removed. The folder must be new, empty, or a previous export
of the same model holding only the files it listed; it is replaced atomically (written next
to it, then renamed into place), and the old copy is removed only after the new one is in
place. Every check runs before anything is registered or written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import yaml
from mlflow.artifacts import download_artifacts
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException

from ablate import metric_names, run_queries, tracking
from ablate.config import TrialConfig
from ablate.data.dataset import SliceDataset
from ablate.errors import UserError
from ablate.launches import Study, dataset_labels, pick_dataset
from ablate.methods.registry import build_method
from ablate.metric_names import TEST_SUBJECTS
from ablate.serving import SPEC_FILE, ServingSpec, pyfunc_arguments, write_spec

CHECKPOINT_ARTIFACT = "checkpoint"
EXPORT_FILE = "ablate-export.json"
#: Name of the logged model in each exported run, and its model type.
LOGGED_MODEL = "reconstruction"
#: Name of the logged ensemble of a cross-validated study's fold models.
ENSEMBLE_MODEL = "fold-ensemble"
MODEL_TYPE = "pet-reconstruction"
ALIASES = ("champion", "challenger")
#: Files of the checkpoint also placed at the top of the standalone folder.
_TOP_FILES = ("model.pt", "config.yaml", SPEC_FILE)


@dataclass
class ExportResult:
    model_name: str
    metric: str
    value: float
    folder: Path
    versions: dict[str, str] = field(default_factory=dict)
    run_ids: dict[str, str] = field(default_factory=dict)
    #: alias -> True when this export created its version or moved it
    changed: dict[str, bool] = field(default_factory=dict)
    #: A cross-validated study's ensemble: what it averages ("" for one trial's model)
    ensemble: str = ""


@dataclass(frozen=True)
class ExportDataset:
    """The dataset whose trials compete for an export: a model stands for one dataset."""

    sha256: str  # "": trials made before trials recorded their dataset
    label: str
    first: bool  # the study's first dataset (the one its oldest trial trained on)
    several: bool  # the study holds trials on other datasets too


def _experiment_id(study: Study) -> str:
    exp = tracking.client(study.tracking_uri).get_experiment_by_name(study.experiment)
    if exp is None:
        raise UserError(f"no MLflow experiment '{study.experiment}' in {study.tracking_uri}")
    return exp.experiment_id


def study_dataset(study: Study, data: str | None) -> ExportDataset:
    """The dataset ``--data`` names, or the study's only one; with several and no
    ``--data``, a one-line error listing them (:func:`ablate.launches.pick_dataset`)."""
    tags = {tracking.TAG_KIND: "trial"}
    if study.parent_run_id:
        tags[tracking.TAG_PARENT] = study.parent_run_id
    trials = run_queries.find_runs(
        study.tracking_uri, _experiment_id(study), tags, order_by=["start_time ASC"]
    )
    found = [
        (r.data.tags.get(tracking.TAG_DATASET_SHA256, ""), r.data.tags.get(tracking.TAG_DATASET))
        for r in trials
    ]
    labels = dataset_labels([(sha, name or "") for sha, name in found])
    sha = pick_dataset(labels, data, study.name) if labels else ""
    if not sha and len(labels) > 1:
        raise UserError(
            f"'{study.name}' holds trials made before trials recorded their dataset, beside "
            "trials on other data: they cannot be told apart; pass --data with another dataset"
        )
    first = next(iter(labels), "")
    return ExportDataset(sha, labels.get(sha, ""), sha == first, len(labels) > 1)


def default_model_name(name: str, dataset: ExportDataset) -> str:
    """``NAME-best`` for the study's first dataset, ``NAME-DATASET-best`` for another: a
    later launch on other data never takes over the name of the model trained first."""
    return f"{name}-best" if dataset.first else f"{name}-{dataset.label}-best"


def _completed(study: Study, row: str | None, dataset: ExportDataset) -> dict[str, str]:
    """The tags of the study's completed trials (of ``row``, on ``dataset``)."""
    tags = {tracking.TAG_STATUS: "completed"}
    if study.parent_run_id:
        tags[tracking.TAG_PARENT] = study.parent_run_id
    if row:
        tags[tracking.TAG_ROW] = row
    if dataset.sha256:
        tags[tracking.TAG_DATASET_SHA256] = dataset.sha256
    return tags


def _ranked_runs(
    study: Study, metric: str, mode: str, row: str | None, dataset: ExportDataset
) -> list[Any]:
    runs = run_queries.find_runs(
        study.tracking_uri,
        _experiment_id(study),
        _completed(study, row, dataset),
        has_metric=metric,
        order_by=[f"metrics.`{metric}` {'DESC' if mode == 'max' else 'ASC'}"],
        max_results=len(ALIASES),
    )
    if not runs:
        which = f" of row '{row}'" if row else ""
        which += f" on dataset '{dataset.label}'" if dataset.several else ""
        raise UserError(
            f"'{study.name}' has no completed trial{which} with metric '{metric}': "
            "run it first, or pick another --metric/--row"
        )
    return list(runs)


def _search_objectives(tracking_uri: str, experiment: str) -> list[list[tuple[str, str]]]:
    """The objectives of each search launch of a study (``[[("val_psnr", "max")], ...]``)."""
    mlf = tracking.client(tracking_uri)
    exp = mlf.get_experiment_by_name(experiment)
    if exp is None:
        return []
    parents = run_queries.find_runs(
        tracking_uri,
        exp.experiment_id,
        {tracking.TAG_KIND: "search"},
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
        mode = directions.get(metric, metric_names.better(metric))
    return metric, mode


def check_out(out: Path, model_name: str) -> None:
    """Refuse an ``out`` this export may not replace; see the module docstring."""
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist; create it first")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        previous = json.loads((out / EXPORT_FILE).read_text())
    except (OSError, ValueError):
        raise UserError(
            f"--out {out} is not empty and is no ablate export; nothing was written or "
            "deleted: choose a new or empty folder"
        ) from None
    if previous.get("model_name") != model_name:
        raise UserError(
            f"--out {out} holds the export of model '{previous.get('model_name')}', not "
            f"'{model_name}'; nothing was written or deleted: choose another --out"
        )
    extra = sorted(set(_files(out)) - set(previous.get("files", [])) - {EXPORT_FILE})
    if extra:
        raise UserError(
            f"--out {out} holds files the export did not write ({', '.join(extra[:3])}); "
            "nothing was written or deleted: move them out or choose another --out"
        )


def _files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()
    )


def export_best(
    study: Study,
    metric: str,
    mode: str,
    model_name: str,
    out: Path,
    row: str | None = None,
    dataset: ExportDataset | None = None,
    fold: int | None = None,
) -> ExportResult:
    """Register the best (and second-best) trial of one dataset (default: the study's only
    one, see :func:`study_dataset`) and write the standalone folder ``out``.

    A cross-validated study (``data.folds``) is ranked by row, never by trial: see
    :func:`cross_validated`; its champion is the ensemble of the best row's k fold models,
    or with ``fold`` that one fold's model."""
    dataset = dataset or study_dataset(study, None)
    runs = _ranked_runs(study, metric, mode, row, dataset)
    if runs[0].data.tags.get(tracking.TAG_FOLD) is not None:
        picked = cross_validated(study, metric, mode, row, dataset)
        if fold is None:
            return _export_ensemble(study, picked, model_name, out, dataset)
        if fold not in picked.folds:
            raise UserError(
                f"--fold {fold}: the study's folds are {', '.join(map(str, picked.folds))}"
            )
        runs = [picked.folds[fold]]
    elif fold is not None:
        raise UserError(f"--fold {fold}: '{study.name}' is not cross-validated (no data.folds)")
    mlf = tracking.client(study.tracking_uri)
    _check_model_dataset(mlf, model_name, dataset)
    check_out(out, model_name)
    best = runs[0]
    result = ExportResult(model_name, metric, float(best.data.metrics[metric]), out)
    with tracking.global_store(study.tracking_uri):
        _ensure_registered(mlf, study, model_name, best, metric)
        model_ids = {}
        for alias, run in zip(ALIASES, runs, strict=False):
            model_ids[alias] = _logged_model(study, run)
            version, created = _version(mlf, model_name, model_ids[alias], run, metric)
            moved = _point_alias(mlf, model_name, alias, version)
            result.versions[alias] = version
            result.run_ids[alias] = run.info.run_id
            result.changed[alias] = created or moved
        _write_folder(study, best, model_ids["champion"], result)
    return result


def _ensure_registered(mlf: Any, study: Study, model_name: str, best: Any, metric: str) -> None:
    if not mlf.search_registered_models(filter_string=f"name = '{model_name}'"):
        mlf.create_registered_model(
            model_name, tags=_dataset_tags(best), description=_description(study, metric)
        )
    else:  # a model registered before models recorded their dataset gets it now
        for key, value in _dataset_tags(best).items():
            mlf.set_registered_model_tag(model_name, key, value)


@dataclass(frozen=True)
class CrossValidated:
    """The best row of a cross-validated study and the k fold trials that stand for it."""

    metric: str
    row: str
    seed: int
    score: float  # the row's cross-validated score: mean over its test subjects and seeds
    folds: dict[int, Any]  # fold -> its completed trial run (of ``seed``)
    fold_hash: str


def cross_validated(
    study: Study, metric: str, mode: str, row: str | None, dataset: ExportDataset
) -> CrossValidated:
    """Rank a cross-validated study's rows by their cross-validated score: per seed, the
    metric over the test subjects pooled across all k folds (each fold weighted by its
    ``test_subjects``), averaged over the seeds whose k folds all completed. Trials are
    never ranked one by one: a fold's score is of its own subjects, so picking the best
    fold's trial would pick on the test data. The exported seed is the row's first complete
    one (not the best scoring: that too would choose on the test folds)."""
    runs = run_queries.find_runs(
        study.tracking_uri,
        _experiment_id(study),
        _completed(study, row, dataset),
        has_metric=metric,
        order_by=["start_time ASC"],  # a rerun of a (row, seed, fold) supersedes
    )
    groups: dict[tuple[str, int], dict[int, Any]] = {}
    hashes, k = set(), 0
    for run in runs:
        tags = run.data.tags
        if tags.get(tracking.TAG_FOLD) is None:
            continue
        key = (tags[tracking.TAG_ROW], int(tags[tracking.TAG_SEED]))
        groups.setdefault(key, {})[int(tags[tracking.TAG_FOLD])] = run
        hashes.add(tags.get(tracking.TAG_FOLD_HASH, ""))
        k = max(k, int(run.data.params.get("data.folds", 0)))
    if len(hashes) > 1:
        raise UserError(
            f"'{study.name}' holds trials on differently dealt folds: export one launch "
            "(ablate export LAUNCH_NAME)"
        )
    complete = {key: folds for key, folds in groups.items() if len(folds) == k}
    if not complete:
        raise UserError(
            f"'{study.name}': no (row, seed) has all {k} folds completed with metric "
            f"'{metric}': run the missing folds first (ablate resume, or run --folds)"
        )
    scores: dict[str, list[float]] = {}
    for (name, _), folds in sorted(complete.items()):
        values = [
            (r.data.metrics[metric], r.data.metrics.get(TEST_SUBJECTS, 1.0)) for r in folds.values()
        ]
        pooled = sum(v * n for v, n in values) / sum(n for _, n in values)
        scores.setdefault(name, []).append(pooled)
    pick = max if mode == "max" else min
    best = pick(scores, key=lambda name: sum(scores[name]) / len(scores[name]))
    seed = min(s for name, s in complete if name == best)
    score = sum(scores[best]) / len(scores[best])
    return CrossValidated(metric, best, seed, score, complete[(best, seed)], next(iter(hashes)))


def _export_ensemble(
    study: Study, picked: CrossValidated, model_name: str, out: Path, dataset: ExportDataset
) -> ExportResult:
    """Register the ensemble of ``picked``'s k fold models as ``champion`` (its version
    records the folds, their runs and the fold hash) and write the standalone folder."""
    mlf = tracking.client(study.tracking_uri)
    _check_model_dataset(mlf, model_name, dataset)
    check_out(out, model_name)
    first = picked.folds[min(picked.folds)]
    result = ExportResult(model_name, f"cv_{picked.metric}", picked.score, out)
    result.ensemble = (
        f"ensemble of folds {', '.join(map(str, sorted(picked.folds)))} of row "
        f"'{picked.row}' seed {picked.seed}"
    )
    record = {
        "folds": ",".join(map(str, sorted(picked.folds))),
        "fold_runs": ",".join(picked.folds[f].info.run_id for f in sorted(picked.folds)),
        "fold_hash": picked.fold_hash,
        "row": picked.row,
        "seed": str(picked.seed),
    }
    with tracking.global_store(study.tracking_uri):
        _ensure_registered(mlf, study, model_name, first, picked.metric)
        model_id = _ensemble_model(study, picked, first, record)
        source = f"models:/{model_id}"
        found = [
            v for v in mlf.search_model_versions(f"name = '{model_name}'") if v.source == source
        ]
        created = not found
        if found:
            version = str(found[0].version)
        else:
            tags = {result.metric: str(picked.score), **record, **_dataset_tags(first)}
            made = mlf.create_model_version(
                model_name, source, run_id=first.info.run_id, model_id=model_id, tags=tags
            )
            version = str(made.version)
        moved = _point_alias(mlf, model_name, ALIASES[0], version)
        result.versions[ALIASES[0]] = version
        result.run_ids[ALIASES[0]] = record["fold_runs"]
        result.changed[ALIASES[0]] = created or moved
        _write_folder(study, first, model_id, result, extra=record)
    return result


def _ensemble_model(
    study: Study, picked: CrossValidated, first: Any, record: dict[str, str]
) -> str:
    """The id of the logged ensemble model of ``picked``'s folds: the one already logged
    (same fold runs), else a new one, logged beside the first fold's run."""
    mlf = tracking.client(study.tracking_uri)
    held = mlf.search_logged_models(
        [first.info.experiment_id],
        filter_string=f"source_run_id = '{first.info.run_id}' AND name = '{ENSEMBLE_MODEL}'",
    )
    for model in held:
        if (
            model.status == LoggedModelStatus.READY
            and model.tags.get("fold_runs") == record["fold_runs"]
        ):
            return model.model_id
    with tempfile.TemporaryDirectory() as tmp:
        folders = {
            f: _checkpoint(study, run, Path(tmp) / f"fold{f}") for f, run in picked.folds.items()
        }
        model = mlf.create_logged_model(
            first.info.experiment_id,
            name=ENSEMBLE_MODEL,
            source_run_id=first.info.run_id,
            params={"row": picked.row, "folds": record["folds"]},
            tags={tracking.TAG_ROW: picked.row, **record, **_dataset_tags(first)},
            model_type=MODEL_TYPE,
        )
        arguments = pyfunc_arguments(folders[min(folders)], folds=folders)
        mlflow.pyfunc.log_model(name=ENSEMBLE_MODEL, model_id=model.model_id, **arguments)
    return model.model_id


def _dataset_tags(run: Any) -> dict[str, str]:
    """The dataset a trial trained on, as tags for the model registered from it."""
    keys = (tracking.TAG_DATASET, tracking.TAG_DATASET_SHA256)
    return {key: run.data.tags[key] for key in keys if run.data.tags.get(key)}


def _check_model_dataset(mlf: Any, model_name: str, dataset: ExportDataset) -> None:
    """Refuse to register trials of one dataset under a model name that holds another's."""
    found = mlf.search_registered_models(filter_string=f"name = '{model_name}'")
    held = found[0].tags.get(tracking.TAG_DATASET_SHA256) if found else None
    if held and dataset.sha256 and held != dataset.sha256:
        name = found[0].tags.get(tracking.TAG_DATASET, "?")
        raise UserError(
            f"registered model '{model_name}' holds models trained on dataset '{name}' "
            f"(sha {held[:8]}), not '{dataset.label}' (sha {dataset.sha256[:8]}); nothing was "
            "registered: pass another --model-name"
        )


def _description(study: Study, metric: str) -> str:
    return (
        f"Best trial of '{study.name}' (MLflow experiment '{study.experiment}') by {metric}, "
        "exported by `ablate export`: a low-dose (or sinogram) slice stack in, a "
        "reconstruction out (pyfunc; see the model's serving.json)."
    )


def _logged_model(study: Study, run: Any) -> str:
    """The id of ``run``'s pyfunc model: the one it holds, else a new one logged to it."""
    mlf = tracking.client(study.tracking_uri)
    run_id = run.info.run_id
    held = mlf.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{LOGGED_MODEL}'",
    )
    ready = [m for m in held if m.status == LoggedModelStatus.READY]
    if ready:
        return ready[0].model_id
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _checkpoint(study, run, Path(tmp))
        spec = ServingSpec.read(checkpoint)
        model = mlf.create_logged_model(
            run.info.experiment_id,
            name=LOGGED_MODEL,
            source_run_id=run_id,
            params={"row": spec.row, "input": spec.input, "ams_samples": str(spec.samples)},
            tags={tracking.TAG_ROW: spec.row, **_dataset_tags(run)},
            model_type=MODEL_TYPE,
        )
        mlflow.pyfunc.log_model(
            name=LOGGED_MODEL, model_id=model.model_id, **pyfunc_arguments(checkpoint)
        )
    mlf.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return model.model_id


def _checkpoint(study: Study, run: Any, into: Path) -> Path:
    """The run's checkpoint folder, with ``serving.json`` made from its dataset when the
    trial ran before trials recorded it."""
    local = Path(
        download_artifacts(
            run_id=run.info.run_id,
            artifact_path=CHECKPOINT_ARTIFACT,
            dst_path=str(into),
            tracking_uri=study.tracking_uri,
        )
    )
    if not (local / SPEC_FILE).is_file():
        _write_missing_spec(study, run, local)
    return local


def _write_missing_spec(study: Study, run: Any, checkpoint: Path) -> None:
    dataset = _dataset(study, run)
    if dataset is None or not Path(dataset).is_dir():
        raise UserError(
            f"run {run.info.run_id} predates serving.json and its dataset ({dataset}) is gone: "
            "run the trial again to export it"
        )
    trial = TrialConfig.model_validate(yaml.safe_load((checkpoint / "config.yaml").read_text()))
    size = SliceDataset(Path(dataset), "test", keys=["spet"]).image_size
    write_spec(checkpoint, trial, build_method(trial, size), Path(dataset))


def _version(mlf: Any, model_name: str, model_id: str, run: Any, metric: str) -> tuple[str, bool]:
    """The version of ``model_name`` registering ``model_id``: existing, else new."""
    source = f"models:/{model_id}"
    for version in mlf.search_model_versions(f"name = '{model_name}'"):
        if version.source == source:
            return str(version.version), False
    version = mlf.create_model_version(
        model_name,
        source,
        run_id=run.info.run_id,
        model_id=model_id,
        tags={
            metric: str(run.data.metrics[metric]),
            "row": run.data.tags.get(tracking.TAG_ROW, ""),
            **_dataset_tags(run),
        },
    )
    return str(version.version), True


def _point_alias(mlf: Any, model_name: str, alias: str, version: str) -> bool:
    """Point ``alias`` at ``version``; True when it moved (or was new)."""
    try:
        if str(mlf.get_model_version_by_alias(model_name, alias).version) == version:
            return False
    except MlflowException:
        pass  # no such alias yet
    mlf.set_registered_model_alias(model_name, alias, version)
    return True


def _write_folder(
    study: Study,
    best: Any,
    model_id: str,
    result: ExportResult,
    extra: dict[str, str] | None = None,
) -> None:
    """Write the standalone folder next to ``out`` and rename it into place; ``extra``
    joins the export record (an ensemble's folds)."""
    out = result.folder
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=str(tmp))
        checkpoint = tmp / "artifacts" / CHECKPOINT_ARTIFACT
        for name in _TOP_FILES if checkpoint.is_dir() else ():  # an ensemble has k of them
            _link_or_copy(checkpoint / name, tmp / name)
        (tmp / "metrics.json").write_text(json.dumps(best.data.metrics, indent=2, sort_keys=True))
        dataset = _dataset(study, best)
        provenance = Path(dataset) / "provenance.json" if dataset else None
        if provenance is not None and provenance.is_file():
            shutil.copy(provenance, tmp / "provenance.json")
        record = {
            "model_name": result.model_name,
            "version": result.versions["champion"],
            "model_uri": f"models:/{result.model_name}@champion",
            "logged_model": f"models:/{model_id}",
            "run_id": best.info.run_id,
            "study": study.name,
            "experiment": study.experiment,
            "tracking_uri": study.tracking_uri,
            "metric": result.metric,
            "value": result.value,
            "dataset": best.data.tags.get(tracking.TAG_DATASET, ""),
            "dataset_sha256": best.data.tags.get(tracking.TAG_DATASET_SHA256, ""),
            **(extra or {}),
        }
        record["files"] = _files(tmp) + [EXPORT_FILE]
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2))
        _replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the filesystem allows (no second copy of the weights), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _replace(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; a previous export there (checked by :func:`check_out`) is
    renamed aside first and removed once ``out`` is the new one."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(new, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old)


def _dataset(study: Study, run: Any) -> str | None:
    parent = run.data.tags.get(tracking.TAG_PARENT)
    if not parent:
        return None
    return tracking.client(study.tracking_uri).get_run(parent).data.params.get("dataset")
