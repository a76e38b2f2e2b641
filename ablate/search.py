"""Optuna through Ray Tune, with early-stopped trials recorded honestly.

Ray's ``OptunaSearch`` tells the study COMPLETE for every trial that reported the metric,
including those ASHA stopped early, which poisons TPE (a half-trained score looks like a
final one) and importance plots. Our trainable marks its last report ``final=1``; a trial
that ends without it was stopped early and is told to the study as PRUNED.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from ablate.config import SearchParam


class PruningAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that records scheduler-stopped trials as PRUNED, not COMPLETE."""

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if error or not result or result.get("final") == 1 or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def optuna_distribution(param: SearchParam) -> Any:
    """A Ray Tune search-space entry for one declared knob (OptunaSearch converts it)."""
    if param.type == "loguniform":
        return tune.loguniform(param.low, param.high)
    if param.type == "uniform":
        return tune.uniform(param.low, param.high)
    if param.type == "int":
        return tune.randint(int(param.low), int(param.high) + 1)
    return tune.choice(list(param.values or []))
