"""Launch records, and what a name typed after a command refers to.

``ablate run SPACE --name foo`` writes ``<storage>/foo/ablate_launch.json`` (the record that
``ablate resume`` restores from) and logs into the MLflow experiment named in the config.
So a user knows two names for the same results: the launch name and the experiment name.
``export``, ``table``, ``dashboard``, ``status`` and ``resume`` accept either:

- an **experiment** name means the whole study (every launch of it); ``status`` and
  ``resume`` take its latest launch;
- a **launch** name means that launch's trials only (its MLflow parent run).

When a name is both (the default launch name is the experiment's), ``export``, ``table``
and ``dashboard`` take the experiment, ``status`` and ``resume`` the launch.
An unknown name is a one-line error listing the names that exist. Nothing here creates a
store or a folder: reading a mistyped ``--workdir`` leaves no trace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate import storage as storage_mod
from ablate import tracking
from ablate.errors import UserError

LAUNCH_RECORD = "ablate_launch.json"


def read_launch_record(storage: str | Path, name: str) -> dict[str, Any]:
    """The launch record of launch ``name`` (``storage``: a path or an object-store URI)."""
    try:
        return json.loads(storage_mod.read_text(_record(storage, name)))
    except FileNotFoundError:
        raise UserError(
            f"no launch named '{name}' under {storage}: check the name and --workdir/--storage"
        ) from None


def _record(storage: str | Path, name: str) -> str:
    return storage_mod.join(str(storage), name, LAUNCH_RECORD)


def is_launch(storage: str | Path, name: str) -> bool:
    return storage_mod.exists(_record(storage, name))


def launch_names(storage: str | Path) -> list[str]:
    """Names of the launches recorded under ``storage``."""
    return sorted(
        name for name in storage_mod.list_folders(str(storage)) if is_launch(storage, name)
    )


def experiment_names(tracking_uri: str) -> list[str]:
    """Names of the experiments in an existing store (none when it does not exist)."""
    try:
        tracking.require_store(tracking_uri)
    except UserError:
        return []
    experiments = tracking.client(tracking_uri).search_experiments()
    return sorted(e.name for e in experiments if e.name != "Default")


@dataclass(frozen=True)
class Study:
    """Results a name refers to: an MLflow experiment, or one launch (parent run) of it."""

    name: str
    experiment: str
    tracking_uri: str
    parent_run_id: str | None = None


def _unknown(name: str, storage: str | Path, tracking_uri: str) -> UserError:
    launches = ", ".join(launch_names(storage)) or "none"
    experiments = ", ".join(experiment_names(tracking_uri)) or "none"
    return UserError(
        f"no launch or experiment named '{name}' (launches: {launches}; "
        f"experiments: {experiments}); check the name and --workdir/--tracking-uri"
    )


def resolve_study(name: str, storage: str | Path, tracking_uri: str) -> Study:
    """The study ``name`` refers to (see the module docstring)."""
    launch = is_launch(storage, name)
    if not launch or name in experiment_names(tracking_uri):
        tracking.require_store(tracking_uri)
        exp = tracking.client(tracking_uri).get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage != "deleted":
            return Study(name, name, tracking_uri)
    if launch:
        record = read_launch_record(storage, name)
        context = record["context"]
        return Study(
            name,
            record["experiment"]["name"],
            context["tracking_uri"],
            parent_run_id=context["parent_run_id"],
        )
    raise _unknown(name, storage, tracking_uri)


def resolve_launch(name: str, storage: str | Path, tracking_uri: str) -> str:
    """The launch ``name`` refers to: itself, or an experiment's latest launch."""
    if is_launch(storage, name):
        return name
    latest: tuple[int, str] | None = None
    for launch in launch_names(storage):
        record = read_launch_record(storage, launch)
        if record["experiment"]["name"] != name:
            continue
        uri = record["context"]["tracking_uri"]
        tracking.require_store(uri)
        started = tracking.client(uri).get_run(record["context"]["parent_run_id"])
        candidate = (started.info.start_time or 0, launch)
        latest = candidate if latest is None or candidate > latest else latest
    if latest is None:
        raise _unknown(name, storage, tracking_uri)
    return latest[1]


# --- datasets: a study's trials may have trained on several -----------------------------------

#: What a trial run made before trials recorded their dataset is listed as.
UNRECORDED_DATASET = "unrecorded"


def dataset_labels(found: list[tuple[str, str]]) -> dict[str, str]:
    """``(content hash, name)`` of each trial, oldest first -> ``{hash: label}``, oldest
    dataset first. The label is the dataset's name, with the hash's first 8 characters
    added where two datasets share a name; trials without a recorded dataset (made before
    trials recorded one) are one dataset labelled :data:`UNRECORDED_DATASET`."""
    names: dict[str, str] = {}
    for sha, name in found:
        names.setdefault(sha, (name or UNRECORDED_DATASET) if sha else UNRECORDED_DATASET)
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {
        sha: f"{name}-{sha[:8]}" if counts[name] > 1 and sha else name
        for sha, name in names.items()
    }


def describe_datasets(labels: dict[str, str]) -> str:
    """``name (sha 1a2b3c4d), other (sha 5e6f7a8b)``: the datasets of a study, for messages."""
    return ", ".join(f"{label} (sha {sha[:8]})" if sha else label for sha, label in labels.items())


def pick_dataset(labels: dict[str, str], data: str | None, study: str) -> str:
    """The content hash of the dataset ``--data`` names (its label, its name or the start of
    its hash); without ``--data``, the study's only dataset, else a one-line error that
    lists them (a result of one dataset is never taken for another's)."""
    if data is None:
        if len(labels) == 1:
            return next(iter(labels))
        raise UserError(
            f"'{study}' holds trials on {len(labels)} datasets: {describe_datasets(labels)}; "
            f"pass --data NAME to say which, e.g. --data {next(iter(labels.values()))}"
        )
    for sha, label in labels.items():
        if data == label:
            return sha
    matches = [
        sha
        for sha, label in labels.items()
        if label == f"{data}-{sha[:8]}" or (len(data) >= 6 and sha.startswith(data))
    ]
    if len(matches) == 1:
        return matches[0]
    why = "names several datasets" if matches else "is not a dataset of this study"
    raise UserError(
        f"--data '{data}' {why} ('{study}' holds: {describe_datasets(labels)}); pass one of "
        "those names"
    )
