"""Files that trials build once and share: on one node through a file lock, across nodes
through the storage.

A PMDM trial needs its frozen stage-1 estimator, and every trial of the same data, seed and
estimator settings needs the same one. Training it once per node (or once per cluster, when
the cache lives in object storage) is infrastructure, not part of the method: the method says
what the file is called and how to build it, and this cache decides whether it must be built.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from ablate import storage


class SharedCache:
    """A cache at ``location``: a local folder, or a storage URI (``s3://.../cache``).

    With a URI, each node keeps its copy under :func:`ablate.storage.node_dir`, fetches a file
    another node built, and uploads the files it builds. The lock is per node: two nodes may
    both build the same (deterministic) file at the same time, and the later upload wins."""

    def __init__(self, location: Path | str) -> None:
        self.remote = str(location) if storage.is_uri(location) else None
        self.folder = storage.node_dir() / "cache" if self.remote else Path(location)

    def fetch_or_build(self, name: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """The local path of the file ``name``, and whether this call built it: fetched from
        the storage if another node built it, else made by ``build(path)``, which must write
        the whole file at ``path``. Concurrent callers on a node wait for the first."""
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        remote = storage.join(self.remote, name) if self.remote else None
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one caller builds, the others wait and read
            if remote and not path.exists() and storage.exists(remote):
                tmp = path.with_name(f".{path.name}.{os.getpid()}.fetch")
                storage.download(remote, tmp)
                os.replace(tmp, path)
            built = not path.exists()
            if built:
                build(path)
                if remote:
                    storage.upload(path, remote)
        return path, built
