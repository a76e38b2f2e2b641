"""Checks a launch passes before it starts: every trial's networks can be built.

Keys and types are checked when the trials are resolved (:mod:`ablate.trials`); what only
the networks know (guide levels against the UNet multipliers, an image size the UNet cannot
halve often enough, a sampler asking for more steps than the schedule has, a PMDM schedule
that never reaches noise) is checked here by building each distinct trial's method on
PyTorch's ``meta`` device: shapes and constructor checks, no weights, no data, milliseconds
per row. It runs on the driver before the dataset is built, Ray starts or any MLflow run
exists, and a problem is one :class:`UserError` line naming the row.

And what a launch needs around it, checked before any dataset, record or MLflow run exists,
each failure one line naming the fix, in seconds:

- the tracking server answers (``--tracking-uri http://...``);
- the storage is writable (and, when local, not writable by other users);
- every alive Ray node can import the project (a tiny task pinned to each node);
- the Ray token: a driver joining a cluster with a wrong or missing token is told so in
  one line within seconds (:func:`check_ray_token`), before Ray's own ~20 s of retries; any
  other failed connection is turned into one line too (:func:`ray_connect_error`).
- a search's Optuna study storage is a database URL without a password, and it answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import torch

from ablate import storage
from ablate.config import DataConfig, TrialConfig
from ablate.errors import UserError
from ablate.sqlite_urls import sqlite_file


def image_size(data: DataConfig) -> int:
    """The slice size a dataset config yields, without building the dataset: the simulator
    preset's (with its overrides), or the size recorded in an existing dataset's manifest."""
    if data.path is not None:
        from ablate.data.format import read_manifest

        manifest = read_manifest(data.path)
        if manifest.empty:
            raise UserError(f"dataset {data.path} has no slices: rebuild or re-import it")
        return int(manifest["height"].iloc[0])
    from ablate.data.simulate import resolve_config

    return resolve_config(data.preset, data.overrides).image_size


def _network_key(trial: TrialConfig) -> str:
    """What a trial's networks depend on: everything but its seed (and the names)."""
    dumped = trial.model_dump(mode="json", exclude={"seed", "row_name", "experiment"})
    dumped["row"].pop("label", None)
    return json.dumps(dumped, sort_keys=True, default=str)


def check_networks(trials: Iterable[TrialConfig]) -> int:
    """Build the method of every distinct trial on the meta device; return how many were
    built. Raises a one-line :class:`UserError` naming the row of the first that fails."""
    from ablate.methods.registry import build_method

    sizes: dict[str, int] = {}
    seen: set[str] = set()
    for trial in trials:
        key = _network_key(trial)
        if key in seen:
            continue
        seen.add(key)
        data_key = trial.data.model_dump_json()
        if data_key not in sizes:
            sizes[data_key] = image_size(trial.data)
        try:
            with torch.device("meta"):
                build_method(trial, sizes[data_key])
        except UserError as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            prefix = f"row '{trial.row_name}'"
            raise UserError(
                message if message.startswith(prefix) else f"{prefix}: {message}"
            ) from None
        except (ValueError, RuntimeError, NotImplementedError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(
                f"row '{trial.row_name}' cannot be built with these settings: {reason}"
            ) from None
    return len(seen)


TOKEN_FIX = (
    "give this machine the cluster's token: RAY_AUTH_MODE=token and "
    "RAY_AUTH_TOKEN_PATH=<token file> (mode 0600) or RAY_AUTH_TOKEN, the same on every node "
    "and driver"
)


def check_ray_token(address: str, timeout_s: float = 5.0) -> None:
    """Before ``ray.init`` joins the cluster at ``address``: one GCS call with this
    process's token, so that a wrong or missing token is one line in seconds.

    ``ray.init`` retries a rejected connection 20 times a second apart and then reports only
    "Failed to connect". Ray 2.60's switches that shorten those retries
    (``RAY_gcs_server_port_wait_time_s``, ``RAY_NUM_REDIS_GET_RETRIES``) shorten them for
    every failure, a head that is still starting or recovering included; this call stops
    early only when the GCS answers that the token is wrong. Ray Client (``ray://``)
    addresses are left to ``ray.init``."""
    if address.startswith("ray://"):
        return
    from ablate.launch.ray_internals import gcs_token_error

    error = gcs_token_error(address, timeout_s)
    if error is not None:
        raise ray_connect_error(address, error)


def ray_connect_error(address: str | None, exc: BaseException) -> UserError:
    """One line for a failed ``ray.init``: what failed and, for a token problem, the fix."""
    from ray.exceptions import AuthenticationError

    where = f"address={address or 'embedded'}"
    if isinstance(exc, AuthenticationError):
        reason = exc.message if hasattr(exc, "message") else str(exc)
        return UserError(
            f"Ray token rejected or missing ({where}): {reason.split('. ')[0]}: {TOKEN_FIX}"
        )
    text = str(exc).strip().splitlines()
    reason = text[0] if text else type(exc).__name__
    if address and "token" not in reason.lower():
        return UserError(
            f"cannot connect Ray ({where}): {reason} (is the cluster up, and does this "
            f"machine hold its token? {TOKEN_FIX})"
        )
    return UserError(f"cannot start/connect Ray ({where}): {reason}")


def check_storage(location: str) -> None:
    storage.check_writable(location)


STUDY_STORAGE_FIX = (
    "pass --study-storage as a database URL every driver reaches, e.g. "
    "postgresql+psycopg2://USER@HOST:PORT/DB (password in PGPASSWORD or ~/.pgpass), or "
    "sqlite:////abs/path/optuna.db"
)


def check_study_url(url: str) -> None:
    """Syntax only (nothing is created): an SQLAlchemy URL, and no password in it, because
    the URL is kept in the launch record and as a tag of the MLflow parent run."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(
            f"--study-storage {url!r} is not a database URL: {STUDY_STORAGE_FIX}"
        ) from None
    if parsed.password:
        shown = parsed.render_as_string(hide_password=True)
        raise UserError(
            f"--study-storage {shown} holds a password, which would be recorded in the launch "
            "record and MLflow: drop it from the URL and set PGPASSWORD (or ~/.pgpass) instead"
        )


def open_study_storage(url: str, study: str | None = None) -> Any:
    """The study database, opened (an ``optuna.storages.RDBStorage``), once it answers and,
    with ``study``, holds that study: one line, not Optuna's traceback, when a server is
    down or a sqlite file is on another machine."""
    import optuna

    path = sqlite_file(url)
    if study is not None and path is not None:
        if not path.is_file():  # opening it would create an empty study database
            raise UserError(
                f"the Optuna study '{study}' is kept in {path}, which is not on this machine: "
                f"resume the search where it was launched, or launch it with {STUDY_STORAGE_FIX}"
            )
    try:
        opened = optuna.storages.RDBStorage(url)
        if study is not None:
            optuna.load_study(study_name=study, storage=opened)
    except KeyError:
        raise UserError(f"no Optuna study '{study}' in {url}: {STUDY_STORAGE_FIX}") from None
    except Exception as exc:  # noqa: BLE001 - drivers and SQLAlchemy raise many kinds
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot open the Optuna study storage {url} ({reason}): "
                        f"{STUDY_STORAGE_FIX}") from None  # fmt: skip
    return opened


def check_nodes(module: str, timeout_s: float = 60.0) -> None:
    """Run a task on every alive node that imports ``module`` (the trainable, and with it
    the project: :attr:`ablate.launch.job.Job.module`); name the nodes that fail."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def probe() -> str:  # nested: pickled by value, so a node without ablate can run it
        import importlib
        import socket

        importlib.import_module(module)
        return socket.gethostname()

    remote = ray.remote(num_cpus=0, max_retries=0)(probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs: dict[Any, str] = {}
    for node in nodes:
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        refs[remote.options(scheduling_strategy=strategy).remote()] = node["NodeManagerAddress"]
    failed = []
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in ready:
        try:
            ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - any failure to import is the node's fault
            cause = getattr(exc, "cause", None) or exc
            text = str(cause).strip().splitlines()
            failed.append(f"{refs[ref]} ({text[-1] if text else type(cause).__name__})")
    for ref in pending:
        ray.cancel(ref, force=True)
        failed.append(f"{refs[ref]} (no answer in {timeout_s:.0f} s)")
    if failed:
        raise UserError(
            f"Ray node(s) {', '.join(failed)} cannot import the project: install it on every "
            "node (pip install ablate, the driver's version) before launching"
        )
