"""The work directory's layout, owned here and nowhere else.

A work directory (``--workdir``, default ``runs``) holds everything a launch keeps on the
driver's machine: the MLflow store, the launches' Ray results and launch records (unless
``--storage`` puts them in object storage), the Optuna study database, the datasets, the
caches, the exported models and the dashboards. Every command and module asks a
:class:`Workspace` for these paths, so a folder's name is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ablate import storage as storage_mod
from ablate.errors import UserError
from ablate.sqlite_urls import sqlite_url

MLFLOW_DB = "mlflow.db"
RAY_RESULTS = "ray_results"
OPTUNA_DB = "optuna.db"


def default_tracking_uri(workdir: str | Path) -> str:
    """The embedded MLflow store of a work directory: a sqlite file in it."""
    return sqlite_url(Path(workdir) / MLFLOW_DB)


def tracking_uri_of(workdir: str | Path, tracking_uri: str | None = None) -> str:
    """``--tracking-uri`` when given, else the work directory's embedded store."""
    return tracking_uri or default_tracking_uri(workdir)


def storage_of(workdir: str | Path, storage: str | None = None) -> str:
    """``--storage`` normalised, else the work directory's ``ray_results`` folder."""
    return storage_mod.normalize(storage or Path(workdir) / RAY_RESULTS)


@dataclass(frozen=True)
class Workspace:
    """Where launches keep their things: the MLflow store (``tracking_uri``), the Ray
    results and launch records (``storage``: a folder or an ``s3://`` URI), and the folders
    below ``workdir``."""

    workdir: Path
    tracking_uri: str
    storage: str

    @classmethod
    def at(
        cls, workdir: str | Path, tracking_uri: str | None = None, storage: str | None = None
    ) -> Workspace:
        """The workspace as named, creating nothing."""
        workdir = Path(workdir).resolve()
        return cls(workdir, tracking_uri_of(workdir, tracking_uri), storage_of(workdir, storage))

    @classmethod
    def create(
        cls, workdir: str | Path, tracking_uri: str | None = None, storage: str | None = None
    ) -> Workspace:
        """The workspace a launch writes to; its folder is made if missing."""
        ws = cls.at(workdir, tracking_uri, storage)
        ws.workdir.mkdir(parents=True, exist_ok=True)
        return ws

    @classmethod
    def existing(
        cls, workdir: str | Path, tracking_uri: str | None = None, storage: str | None = None
    ) -> Workspace:
        """The workspace of earlier launches, read as it is: a mistyped ``--workdir`` is a
        one-line error and creates nothing (opening a sqlite store would create it empty)."""
        from ablate.tracking import require_store  # MLflow loads only where a store is read

        ws = cls.at(workdir, tracking_uri, storage)
        require_store(ws.tracking_uri)
        return ws

    @classmethod
    def of_launches(cls, workdir: str | Path, storage: str | None = None) -> Workspace:
        """The workspace of ``status``/``resume``: its launch records must exist (each names
        its own MLflow store), and nothing is created when they do not."""
        ws = cls.at(workdir, None, storage)
        if not storage_mod.exists(ws.storage):
            raise UserError(
                f"no launches under {ws.storage}: run `ablate run` first, or fix "
                "--workdir/--storage"
            )
        return ws

    @property
    def default_storage(self) -> bool:
        """Launch records in the work directory itself (no ``--storage`` to repeat)."""
        return self.storage == storage_of(self.workdir)

    @property
    def shared_nothing(self) -> bool:
        """Object-store storage: nodes share no disk with the driver (see
        :mod:`ablate.data.staging`)."""
        return storage_mod.is_uri(self.storage)

    @property
    def artifacts(self) -> Path:
        """The embedded store's artifact folder (what ``ablate ui`` serves)."""
        return self.workdir / "mlartifacts"

    @property
    def artifact_root(self) -> str | None:
        """Where a new experiment keeps its artifacts: :attr:`artifacts` beside an embedded
        store; with a tracking server, ``None``: the server's default (its artifact proxy,
        ``mlflow-artifacts:/`` under ``mlflow server --artifacts-destination``), so a worker
        on another machine never writes to a path of the driver's disk."""
        from ablate.tracking import is_server

        return None if is_server(self.tracking_uri) else self.artifacts.as_uri()

    @property
    def datasets(self) -> Path:
        return self.workdir / "datasets"

    @property
    def cache(self) -> Path:
        """The trials' shared cache (:class:`ablate.shared_cache.SharedCache`): in the
        storage when nodes share nothing, else in the work directory."""
        return self.workdir / "cache"

    @property
    def cache_location(self) -> str:
        return storage_mod.join(self.storage, "cache") if self.shared_nothing else str(self.cache)

    @property
    def study_storage(self) -> str:
        """The default Optuna study database of searches (``--study-storage`` overrides)."""
        return sqlite_url(self.workdir / OPTUNA_DB)

    def launch_results(self, name: str) -> str:
        """Where Ray Tune keeps launch ``name``'s trials and its launch record."""
        return storage_mod.join(self.storage, name)

    def export_folder(self, name: str) -> Path:
        return self.workdir / "exports" / name

    def dashboard_folder(self, experiment: str) -> Path:
        return self.workdir / "dashboards" / experiment
