"""The one place that touches Ray internals: a trial's checkpoint bookkeeping on the driver.

Ray 2.60 (pinned) keeps the checkpoints it knows of a trial in
``trial.run_metadata.checkpoint_manager``, a ``ray.train._internal`` ``_CheckpointManager``.
Its public surface only adds checkpoints (``register_checkpoint``) and reads them
(``Trial.checkpoint``); nothing public forgets one. :class:`ablate.callbacks.CheckpointGuard`
has to forget checkpoints the driver deleted before it was killed, so it writes the manager's
private lists here and nowhere else. ``tests/test_ray_internals.py`` runs this against the
installed Ray and fails loudly when an upgrade moves or renames what it relies on.
"""

from __future__ import annotations

from collections.abc import Callable

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
