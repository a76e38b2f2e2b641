"""Checks run before a launch creates anything: each failure is one line naming the fix,
within seconds, and no MLflow parent run or launch record is left behind.

- the tracking server answers (``--tracking-uri http://...``);
- the storage is writable (and, when local, not writable by other users);
- every alive Ray node can import the project (a tiny task pinned to each node).

The Ray token is checked by connecting (:func:`ablate.experiment.start_ray`), which turns
an authentication failure into one line too.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from ablate import storage, tracking
from ablate.errors import UserError

TOKEN_FIX = (
    "give this machine the cluster's token: RAY_AUTH_TOKEN_PATH=<token file> (mode 0600) "
    "or RAY_AUTH_TOKEN, the same on every node and driver"
)


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


def check_tracking(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """An ``http(s)://`` tracking URI must answer ``GET /health``."""
    if not tracking.is_server(tracking_uri):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", exc)) or type(exc).__name__
    raise UserError(
        f"cannot reach the MLflow tracking server at {tracking_uri} ({reason}): start it "
        "(mlflow server --backend-store-uri ... --host 127.0.0.1) or fix --tracking-uri"
    )


def check_storage(location: str) -> None:
    storage.check_writable(location)


def check_nodes(timeout_s: float = 60.0, module: str = "trainables.ablation") -> None:
    """Run a task on every alive node that imports ``module`` (the trainable, and with it
    the project); name the nodes that fail."""
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
