"""The one place that touches Ray internals: a trial's checkpoint bookkeeping on the driver,
and the token probe a driver runs before ``ray.init`` joins a cluster.

Ray 2.60 (pinned) keeps the checkpoints it knows of a trial in
``trial.run_metadata.checkpoint_manager``, a ``ray.train._internal`` ``_CheckpointManager``.
Its public surface only adds checkpoints (``register_checkpoint``) and reads them
(``Trial.checkpoint``); nothing public forgets one. :class:`ablate.launch.callbacks.CheckpointGuard`
has to forget checkpoints the driver deleted before it was killed, so it writes the manager's
private lists here and nowhere else. ``tests/unit/launch/test_ray_internals.py`` runs this
against the installed Ray and fails loudly when an upgrade moves or renames what it relies on.

A driver whose token the cluster rejects waits in ``ray.init`` for 20 connection attempts a
second apart (``ray._private.node.Node._init_gcs_client``) before a generic "Failed to
connect". :func:`gcs_token_error` makes the same first call, once: it resolves the address,
loads the token and asks the GCS for its cluster ID the way ``ray.init`` does, through
``ray._private`` and ``ray._raylet`` (no public API does either without connecting).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

from ray.train import Checkpoint
from ray.tune.experiment import Trial


def keep_checkpoints(trial: Trial, keep: Callable[[Checkpoint], bool]) -> Checkpoint | None:
    """Forget the trial's checkpoints that ``keep`` rejects; the newest one left becomes the
    one a restore starts from. Returns it, or ``None`` when none is left (restart at step 0)."""
    metadata = trial.run_metadata
    manager = metadata.checkpoint_manager
    manager._checkpoint_results = [r for r in manager._checkpoint_results if keep(r.checkpoint)]
    # checkpoint_000NNN directory names sort in the order they were written
    survivors = sorted(manager._checkpoint_results, key=lambda r: r.checkpoint.path)
    manager._latest_checkpoint_result = survivors[-1] if survivors else None
    metadata.invalidate_cache()  # the driver saves this metadata as a cached JSON
    return survivors[-1].checkpoint if survivors else None


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Ray's C++ client writes each failed GCS call to file descriptor 2 itself; the
    caller reports the outcome of the probe in one line instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def gcs_token_error(address: str, timeout_s: float) -> Exception | None:
    """The token error ``ray.init(address=address)`` would end in, found with one call.

    ``address`` is ``auto`` or ``HOST:PORT``. Returns Ray's ``AuthenticationError`` when
    this process has no token (token auth on) or the GCS rejects it; ``None`` when the GCS
    accepted it or the call failed for another reason (no cluster found, no answer within
    ``timeout_s``), which ``ray.init`` then reports with its own retries."""
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
        maybe_enable_token_auth_if_token_available,
    )
    from ray._private.services import canonicalize_bootstrap_address
    from ray._raylet import InnerGcsClient
    from ray.exceptions import AuthenticationError

    try:
        gcs_address = canonicalize_bootstrap_address(address)
        if gcs_address is None:
            return None
        if address == "auto":  # as ray.init: a token found turns token auth on
            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        # before any gRPC call: Ray's C++ token loader aborts the process on a missing file
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
        with _native_stderr_silenced():
            InnerGcsClient.standalone(gcs_address, None, int(timeout_s * 1000))
    except AuthenticationError as exc:
        return exc
    except Exception:  # noqa: BLE001 - not a token problem: ray.init reports it
        return None
    return None
