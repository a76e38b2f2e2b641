"""Datasets on nodes that share no disk with the driver.

With a local ``--storage`` every node is assumed to see the driver's work directory (one
machine, or NFS), and trials read the dataset the driver built. With an object-store
``--storage`` (``s3://...``) no path of the driver's disk is used on a worker:

- a simulated dataset is rebuilt on the node from its preset + seed (into
  :func:`ablate.storage.node_dir`) and its content hash is checked against the one the
  driver recorded in the launch, so every node trains on the same data;
- an imported dataset (``data.path``) is staged to ``<storage>/datasets/<hash>/`` once by the
  driver and fetched by each node that lacks it.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import socket
import uuid
from pathlib import Path

import pandas as pd

from ablate import storage
from ablate.config import DataConfig
from ablate.data.format import read_manifest
from ablate.data.store import build_dataset
from ablate.errors import UserError

#: Sidecar holding a dataset's content hash (datasets are immutable once written).
HASH_FILE = ".content-sha256"
#: Written last into a staged dataset: a folder without it is incomplete.
COMPLETE = ".complete"


def content_hash(root: Path, remember: bool = False) -> str:
    """SHA-256 of a dataset's content: its manifest table and every array file (paths and
    bytes), not its provenance (which may name machines and times). ``remember`` stores it
    in the dataset's sidecar file, which later calls read instead of rehashing."""
    root = Path(root)
    sidecar = root / HASH_FILE
    if sidecar.is_file():
        return sidecar.read_text().strip()
    digest = hashlib.sha256()
    manifest = read_manifest(root)
    digest.update(",".join(map(str, manifest.columns)).encode())
    digest.update(pd.util.hash_pandas_object(manifest, index=True).to_numpy().tobytes())
    for path in sorted(p for p in (root / "subjects").rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                digest.update(chunk)
    value = digest.hexdigest()
    if remember:
        tmp = root / f".{HASH_FILE}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(value)
        tmp.replace(sidecar)
    return value


def stage_dataset(root: Path, sha: str, storage_root: str) -> str:
    """Upload an imported dataset to ``<storage>/datasets/<hash>`` unless it is already
    there; return that location."""
    dest = storage.join(storage_root, "datasets", f"imported-{sha[:16]}")
    if not storage.exists(storage.join(dest, COMPLETE)):
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            if path.name == HASH_FILE:
                continue
            storage.upload(path, storage.join(dest, str(path.relative_to(root))))
        storage.write_text(storage.join(dest, COMPLETE), sha)
    return dest


def _locked(folder: Path, name: str):
    folder.mkdir(parents=True, exist_ok=True)
    return open(folder / f".{name}.lock", "w")


def _fetch(staged: str, sha: str, folder: Path) -> Path:
    dest = folder / f"imported-{sha[:16]}"
    with _locked(folder, dest.name) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / HASH_FILE).is_file():
            tmp = folder / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
            storage.download(staged, tmp)
            (tmp / COMPLETE).unlink(missing_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
            content_hash(dest, remember=True)
    return dest


def node_dataset(
    data: DataConfig, dataset_root: str, storage_root: str, sha: str, staged: str
) -> Path:
    """The dataset folder a trial reads on this node (see the module docstring)."""
    if not storage.is_uri(storage_root):
        return Path(dataset_root)  # local storage: the driver's disk is shared
    folder = storage.node_dir() / "datasets"
    if staged:
        root = _fetch(staged, sha, folder)
    else:
        root = build_dataset(data, folder)
    have = content_hash(root, remember=True)
    if sha and have != sha:
        raise UserError(
            f"the dataset on node {socket.gethostname()} ({root}) has content hash {have[:12]} "
            f"but the launch recorded {sha[:12]}: install the same ablate/numpy/torch versions "
            f"on every node, or delete {root} to rebuild it"
        )
    return root
