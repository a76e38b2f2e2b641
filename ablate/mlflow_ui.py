"""What makes MLflow's own UI show a study: source tags, dataset inputs, images, reports.

MLflow fills the runs table's Source and Dataset columns, the image grids of a run and its
description from conventions of its fluent API, which ablate (explicit run ids, runs made in
Ray workers) does not use. This module follows the same conventions with public MLflow calls:

- the tags MLflow sets on its own runs (``mlflow.user``, ``mlflow.source.*``, with the git
  commit of the code that ran), set on the parent run by the driver and copied to each child;
- the training dataset as an MLflow dataset input (name, digest, source: the simulator preset
  and seed, or the imported folder), on the parent and on every child;
- test images (input, reference, sample, error, SD) logged with ``log_image``.

At the end of a launch, the ablation table and the study dashboard are attached to the parent
run by :mod:`dashboards.mlflow_report` (a report, handed to the driver by the CLI).

The experiment itself is tagged as a model-training one (:data:`ablate.tracking.EXPERIMENT_TAGS`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Dataset

from ablate import tracking
from ablate.config import DataConfig
from ablate.mlflow_internals import (
    SOURCE_TAGS,
)
from ablate.sqlite_urls import sqlite_file
from ablate.ui_links import VIEW_KEY, runs_page_url

log = logging.getLogger(__name__)

#: Run tags a child copies from its parent: who ran the launch, from which code.
INHERITED_TAGS = SOURCE_TAGS


def inherited_tags(tracking_uri: str, parent_run_id: str) -> dict[str, str]:
    """The parent run's :data:`INHERITED_TAGS`, for a child run made in a Ray worker (whose
    own main script is Ray's worker entry point)."""
    run = tracking.retry(lambda: tracking.client(tracking_uri).get_run(parent_run_id))
    return {k: v for k, v in run.data.tags.items() if k in INHERITED_TAGS}


# --- datasets --------------------------------------------------------------------------------


def _digest(*files: Path) -> str:
    sha = hashlib.sha256()
    for path in files:
        sha.update(path.read_bytes())
    return sha.hexdigest()[:16]


def dataset_name(data: DataConfig) -> str:
    """What tables, exports and MLflow call a launch's dataset: an imported one by its
    folder's name, a simulated one by its preset and seed (``tiny-seed0``). Two datasets may
    share a name; their content hashes tell them apart."""
    if data.path is not None:
        return Path(data.path).resolve().name
    return f"{data.preset}-seed{data.seed}"


def dataset_entity(data: DataConfig, root: Path) -> Dataset:
    """The dataset a launch trains on as an MLflow dataset: a simulated one is named after
    its preset, with the preset, seed and overrides as source; an existing folder (an
    imported dataset) is named after the folder, with its path as source. The digest is the
    hash of the manifest and provenance; the profile counts slices, subjects and splits and
    says the units of the values (``ablate data import --units``)."""
    from ablate.data.format import read_manifest, read_provenance

    root = Path(root)
    manifest = read_manifest(root)
    profile = {
        "units": str(read_provenance(root).get("units") or "unknown"),
        "slices": len(manifest),
        "subjects": int(manifest["subject"].nunique()),
        "splits": {str(k): int(v) for k, v in manifest["split"].value_counts().items()},
        "image_size": int(manifest["height"].iloc[0]) if len(manifest) else 0,
    }
    digest = _digest(root / "manifest.parquet", root / "provenance.json")
    if data.path is not None:
        source_type = "local"
        source = {"uri": Path(data.path).resolve().as_uri()}
    else:
        source_type = "ablate-simulator"
        source = {"preset": data.preset, "seed": data.seed, "overrides": data.overrides}
    return Dataset(
        name=dataset_name(data),
        digest=digest,
        source_type=source_type,
        source=json.dumps(source, sort_keys=True, default=str),
        profile=json.dumps(profile),
    )


def log_dataset(tracking_uri: str, run_id: str, data: DataConfig, root: Path) -> None:
    """Log the training dataset as an input of a run (context ``training``)."""
    tracking.log_dataset_input(tracking_uri, run_id, dataset_entity(data, root).to_dictionary())


# --- images ----------------------------------------------------------------------------------


def _montage(slices: np.ndarray, low: float, high: float) -> np.ndarray:
    """Slices ``[N, H, W]`` side by side as 8-bit grey, scaled from ``[low, high]``, a white
    gap between them, small images enlarged (nearest) to at least 128 pixels high."""
    scale = max(1, 128 // slices.shape[-2])
    scaled = np.clip((slices - low) / max(high - low, 1e-12), 0, 1)
    tiles = [np.kron(s, np.ones((scale, scale))) for s in scaled]
    gap = np.ones((tiles[0].shape[0], 2 * scale))
    row = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
    return (row * 255).round().astype(np.uint8)


def sample_images(images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The evaluation's images (``ablate.training.evaluation.Evaluation.images``) as 8-bit montages
    keyed ``test/input``, ``test/reference``, ``test/sample``, ``test/error`` and
    ``test/sd``. Input (the LPET slice), reference and sample share the reference's range;
    the error |sample - reference| and the SD map are scaled to their own maximum."""
    ref = images["reference"]
    high = float(ref.max()) if ref.size else 1.0
    out = {}
    if "input" in images:
        out["test/input"] = _montage(images["input"], 0.0, high)
    elif "sinogram" in images:
        out["test/input"] = _montage(images["sinogram"], 0.0, float(images["sinogram"].max()))
    out["test/reference"] = _montage(ref, 0.0, high)
    out["test/sample"] = _montage(images["output"], 0.0, high)
    error = np.abs(images["output"] - ref)
    out["test/error"] = _montage(error, 0.0, float(error.max()))
    if "sd_map" in images:
        out["test/sd"] = _montage(images["sd_map"], 0.0, float(images["sd_map"].max()))
    return out


# --- the runs page ---------------------------------------------------------------------------

#: The MLflow UI's shared views: an experiment tag ``mlflow.sharedViewState.<key>`` holding a
#: runs-table state, opened by ``...?viewStateShareKey=<key>`` (its "Share" button makes them).
SHARED_VIEW_TAG = "mlflow.sharedViewState."
#: What the study view shows: trials best first (which also lists them beside their parent
#: run rather than folded under it), with the row, seed and the table's metrics as columns.
STUDY_METRICS = ("psnr", "ssim", "nmse", "ams_psnr", "sd", "params_m", "gmacs", "train_s")
STUDY_PARAMS = ("row", "seed")


def study_view_state() -> dict[str, Any]:
    columns = ["attributes.`Source`", "attributes.`Dataset`"]
    columns += [f"params.`{key}`" for key in STUDY_PARAMS]
    columns += [f"metrics.`{key}`" for key in STUDY_METRICS]
    return {
        "orderByKey": "metrics.`psnr`",
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": ["attributes.`Run Name`", *columns],
    }


def publish_study_view(tracking_uri: str, experiment_id: str) -> None:
    """Store the study view (:func:`study_view_state`) as a shared view of the experiment."""
    value = json.dumps(study_view_state())
    mlf = tracking.client(tracking_uri)
    exp = tracking.retry(lambda: mlf.get_experiment(experiment_id))
    if exp.tags.get(SHARED_VIEW_TAG + VIEW_KEY) != value:
        tracking.retry(
            lambda: mlf.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + VIEW_KEY, value)
        )


def study_links(tracking_uri: str, base_url: str) -> list[tuple[str, str]]:
    """(experiment name, study-view URL) of each study in a store; none when the store does
    not exist yet or cannot be read (the UI server creates or reports it)."""
    db = sqlite_file(tracking_uri)
    if db is not None and not db.is_file():
        return []
    try:
        experiments = tracking.client(tracking_uri).search_experiments(max_results=50)
    except Exception:  # noqa: BLE001 - links are a convenience; the server reports problems
        return []
    return [
        (exp.name, runs_page_url(base_url, exp.experiment_id))
        for exp in experiments
        if SHARED_VIEW_TAG + VIEW_KEY in exp.tags
    ]


# --- the UI server ---------------------------------------------------------------------------


def serve(cmd: list[str], grace_s: float = 15.0) -> int:
    """Run the MLflow UI server ``cmd`` until it exits or this process gets SIGINT/SIGTERM;
    then stop the server and every process it started (uvicorn, job runners, huey workers:
    one process group) and return. Returns the server's exit code, 0 when stopped by a signal.

    The server runs in a session of its own, so a signal to this process (or Ctrl-C in its
    terminal) reaches it only through here, and is passed on to the whole group: SIGTERM,
    then SIGKILL for whatever is still there after ``grace_s`` seconds."""
    import signal
    import subprocess
    import time

    server = subprocess.Popen(cmd, start_new_session=True)
    stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while server.poll() is None and not stop:
            time.sleep(0.2)
        return server.returncode if not stop else 0
    finally:
        _stop_group(server, grace_s)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_group(server: Any, grace_s: float) -> None:
    """SIGTERM the server's process group, wait for all of it, SIGKILL what is left."""
    import os
    import signal
    import time

    def alive() -> bool:
        return bool(group_members(server.pid))

    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        server.poll()  # reap the leader, so that only live members keep the group alive
        if not alive():
            return
        time.sleep(0.1)
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait()


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid`` (from /proc; elsewhere, whether
    the group can still be signalled)."""
    import os

    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except ProcessLookupError:
            return []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members
