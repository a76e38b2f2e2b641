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

from ablate import tracking
from ablate.errors import UserError

LAUNCH_RECORD = "ablate_launch.json"


def read_launch_record(storage: str | Path, name: str) -> dict[str, Any]:
    """The launch record of launch ``name``."""
    path = Path(storage) / name / LAUNCH_RECORD
    if not path.is_file():
        raise UserError(
            f"no launch named '{name}' under {storage}: check the name and --workdir/--storage"
        )
    return json.loads(path.read_text())


def launch_names(storage: str | Path) -> list[str]:
    """Names of the launches recorded under ``storage``."""
    root = Path(storage)
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob(f"*/{LAUNCH_RECORD}"))


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
    is_launch = (Path(storage) / name / LAUNCH_RECORD).is_file()
    if not is_launch or name in experiment_names(tracking_uri):
        tracking.require_store(tracking_uri)
        exp = tracking.client(tracking_uri).get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage != "deleted":
            return Study(name, name, tracking_uri)
    if is_launch:
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
    if (Path(storage) / name / LAUNCH_RECORD).is_file():
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
