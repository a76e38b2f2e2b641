"""The embedded Ray of a laptop run: reachable from this machine only, its token private.

``ray.init()`` starts a local cluster whose servers (GCS, raylet, workers) listen on every
interface, and (Ray 2.60, token auth on by default) writes its token to ``~/.ray/auth_token``
readable by every user (mode 0644). For the embedded instance ablate starts:

- its servers bind 127.0.0.1 only. Ray binds loopback when the node's IP is ``127.0.0.1``,
  which ``ray.init`` only keeps when Ray was imported with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
  (Ray's switch for "no multi-node cluster from this machine", read when Ray is imported).
  :func:`prepare_driver` sets it; the CLI calls it before anything imports Ray, for
  launches without ``--address`` only (a driver joining a cluster must not have it);
- the token file is created before Ray would create it, atomically and with mode 0600 (the
  same 256-bit hex token ``ray get-auth-token --generate`` makes), and an existing token
  file of this user readable by others is made private.

And in every launch's driver, Ray's C++ crash handler is left out (documented switch
``RAY_DISABLE_FAILURE_SIGNAL_HANDLER``, for the driver only): it would take SIGTERM from
:mod:`ablate.launch.interrupts` and abort the driver with a stack dump, leaving runs RUNNING.

This module does not import Ray at import time.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Read by Ray at import time: "this machine runs single-node clusters" -> loopback IP.
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"


#: Read by Ray at import time: no C++ crash handler in this process. Ray's handler takes
#: SIGTERM from Python and aborts the driver; ablate's stops the launch cleanly instead.
NO_CRASH_HANDLER_ENV = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"
_DRIVER_ONLY: list[str] = []  # set here for the driver's own import of Ray, not its children


def prepare_driver(embedded: bool) -> bool:
    """Before Ray is imported by a launch's driver: let SIGTERM reach ablate's handler and,
    for an embedded cluster (``embedded``), make it bind 127.0.0.1. Returns whether the
    embedded cluster will bind 127.0.0.1 (False when Ray was imported before)."""
    if "ray" not in sys.modules:
        if NO_CRASH_HANDLER_ENV not in os.environ:
            os.environ[NO_CRASH_HANDLER_ENV] = "1"
            _DRIVER_ONLY.append(NO_CRASH_HANDLER_ENV)
        if embedded:
            os.environ.setdefault(SINGLE_NODE_ENV, "0")
    return os.environ.get(SINGLE_NODE_ENV) == "0"


def driver_env_read() -> None:
    """Once Ray is imported: the processes it starts (raylet, workers) keep their defaults."""
    while _DRIVER_ONLY:
        os.environ.pop(_DRIVER_ONLY.pop(), None)


def localhost_only() -> dict[str, Any]:
    """``ray.init`` arguments of an embedded cluster that listens on 127.0.0.1 only."""
    return {"_node_ip_address": LOOPBACK}


def check_bound(node_ip: str) -> None:
    """Warn when the embedded cluster ended up on a non-loopback address."""
    if node_ip != LOOPBACK:
        log.warning(
            "the embedded Ray listens on %s, not 127.0.0.1: set %s=0 before importing ray "
            "(the ablate CLI does) to keep it local",
            node_ip,
            SINGLE_NODE_ENV,
        )


def token_path() -> Path | None:
    """The token file Ray reads (``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``); None when
    the token comes from ``RAY_AUTH_TOKEN`` or token auth is turned off."""
    mode = os.environ.get("RAY_AUTH_MODE", "token").lower()
    if mode != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    custom = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(custom).expanduser() if custom else Path.home() / ".ray" / "auth_token"


def private_token(path: Path | None = None) -> Path | None:
    """Make sure the token file exists with mode 0600 (created atomically: concurrent first
    launches agree on one token); return its path, or None when no file is used."""
    path = path or token_path()
    if path is None:
        return None
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
            try:
                os.link(tmp, path)  # atomic: exactly one first launch creates the token
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        os.chmod(path, 0o600)
        log.info("made the Ray token file %s private (mode 0600)", path)
    return path
